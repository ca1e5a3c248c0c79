"""Hypothesis strategies for fuzzing the decoder and the API: arbitrary bytes, bytes behind a real format's magic
number, and valid small images of every supported format and colour mode with random mutations (byte flips,
insertions, deletions, truncation, duplicated runs). Shared by tests/test_fuzz.py and scripts/fuzz.py."""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from bad_inputs import animated_gif, exif_rotated_jpeg, photo, save

MAGICS = [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"\x00\x00\x00\x18ftypheic",
          b"\x00\x00\x00\x1cftypavif", b"II*\x00", b"MM\x00*", b"%PDF-", b"PK\x03\x04", b"<svg", b"\x1f\x8b"]


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, bytes]:
    """Small valid images (48x48) in every format and mode the decoder handles."""
    rgb = photo(48)
    im = Image.fromarray(rgb)
    out = {
        "jpeg": save(im, "JPEG", quality=80),
        "jpeg-progressive": save(im, "JPEG", quality=80, progressive=True),
        "jpeg-cmyk": save(im.convert("CMYK"), "JPEG", quality=80),
        "jpeg-grey": save(im.convert("L"), "JPEG", quality=80),
        "jpeg-exif": exif_rotated_jpeg(rgb),
        "png": save(im, "PNG"),
        "png-alpha": save(Image.fromarray(np.dstack([rgb, rgb[:, :, 0]]), "RGBA"), "PNG"),
        "png-16": save(Image.fromarray((rgb.mean(axis=2) * 257).astype(np.uint16)), "PNG"),
        "png-palette": save(im.quantize(16), "PNG"),
        "png-1bit": save(im.convert("1"), "PNG"),
        "gif": save(im, "GIF"),
        "gif-animated": animated_gif(rgb, frames=2),
        "webp": save(im, "WEBP", quality=70),
        "webp-lossless": save(im, "WEBP", lossless=True),
        "bmp": save(im, "BMP"),
        "bmp-palette": save(im.quantize(16), "BMP"),
    }
    try:
        import pillow_heif  # noqa: F401  (the fixtures' encoder; moodlens decodes with pi-heif)

        out["heic"] = save(im, "HEIF", quality=50)
    except ImportError:  # pragma: no cover
        pass
    return out


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with 1..16 random edits."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 16))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate", "header"]))
        i = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[i:i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del buf[i:]
        elif op == "duplicate" and buf:
            j = draw(st.integers(0, len(buf) - 1))
            buf[i:i] = buf[j:j + draw(st.integers(1, 256))]
        elif op == "header" and len(buf) > 8:  # the first 64 bytes hold sizes, depths, counts
            k = draw(st.integers(0, min(63, len(buf) - 1)))
            buf[k] = draw(st.integers(0, 255))
    return bytes(buf)


def arbitrary_bytes(max_size: int = 4096) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


def magic_bytes(max_size: int = 2048) -> st.SearchStrategy[bytes]:
    return st.builds(lambda m, rest: m + rest, st.sampled_from(MAGICS), st.binary(max_size=max_size))


def mutated_images() -> st.SearchStrategy[bytes]:
    return st.sampled_from(sorted(seeds().items())).flatmap(lambda kv: mutated(kv[1]))


def any_image_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(arbitrary_bytes(), magic_bytes(), mutated_images(), mutated_images())


CONTENT_TYPES = ["image/jpeg", "image/png", "image/*", "image/", "image/svg+xml", "IMAGE/JPEG", "multipart/form-data",
                 "multipart/form-data; boundary=", "multipart/form-data; boundary=x", "multipart/mixed; boundary=x",
                 "application/json", "application/octet-stream", "text/plain; charset=utf-8", "", "*/*",
                 "application/x-www-form-urlencoded", "image/jpeg; charset=\x00", "image/png;;;===",
                 "multipart/form-data; boundary=\"" + "b" * 70 + "\""]


def content_types() -> st.SearchStrategy[str]:
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
    return st.one_of(st.sampled_from(CONTENT_TYPES), printable)


def query_strings() -> st.SearchStrategy[str]:
    value = st.one_of(st.sampled_from(["4", "7", "0", "1", "", "true", "5", "%00", "яя", "1" * 300]),
                      st.text(max_size=20))
    pairs = st.lists(st.tuples(st.sampled_from(["classes", "explain", "x", "image", "classes[]"]), value), max_size=3)
    return pairs.map(lambda ps: "&".join(f"{k}={v}" for k, v in ps))
