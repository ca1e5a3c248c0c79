"""A corpus of bad and odd inputs, built in memory by the tests themselves (nothing is checked in).

- `image_cases()`: files, each with the answer the API must give when it is uploaded (a precise 4xx problem
  type, or 200 for valid-but-odd images) and the error class the engine raises (None: it decodes). The same
  files go through `moodlens analyze` and `moodlens batch` (see `write_corpus`).
- `request_cases()`: whole HTTP requests (body and Content-Type): every image case as a multipart upload and
  as a raw body, and the request-level mistakes (empty body, wrong Content-Type, missing field, several files,
  odd filenames, broken multipart).

Every body is small (the decompression bomb is ~110 kB: 30000x30000 pixels of zeros, deflated).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin

BOUNDARY = "moodlens-bad-input-7d1f"


@dataclass(frozen=True)
class ImageCase:
    name: str  # also the file's stem on disk
    filename: str  # the name it is uploaded and written under
    data: bytes
    status: int  # what POST /api/v1/analyze answers
    slug: str | None  # its problem type (None for 200)
    error: str | None  # the ImageError subclass the engine raises (None: decodes fine)
    size: tuple[int, int] | None = None  # (width, height) reported for a 200, when checked

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class RequestCase:
    name: str
    body: bytes
    content_type: str | None
    status: int
    slug: str | None


# --------------------------------------------------------------------------------------------- builders


def photo(side: int = 192) -> np.ndarray:
    """The astronaut (one face, public domain), `side` x `side` RGB."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)


def save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    if fmt == "HEIF":
        # moodlens decodes HEIC with pi-heif (decode only); the test fixtures are written by pillow-heif's
        # encoder (a dev dependency), called directly so that pi-heif stays the Pillow plugin that decodes
        import pillow_heif

        pillow_heif.from_pillow(im).save(buf, **params)
    else:
        im.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int, idat: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG declaring `width` x `height` whatever its pixel data holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


@functools.lru_cache(maxsize=1)
def decompression_bomb(side: int = 30000) -> bytes:
    """A real bomb: a 1-bit `side` x `side` PNG of zeros, every row present (112 MB inflated), ~110 kB on disk."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    rows_per_step = 256
    parts = [z.compress(row * min(rows_per_step, side - i)) for i in range(0, side, rows_per_step)]
    return png_with_header(side, side, b"".join(parts) + z.flush(), bit_depth=1, colour=0)


def jpeg_declaring(width: int, height: int, base: bytes) -> bytes:
    """`base` (a baseline JPEG) with the frame header patched to say `width` x `height`: a cheap huge image."""
    at = base.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    return base[:at + 5] + struct.pack(">HH", height, width) + base[at + 9:]


def heic_with_extent(rgb: np.ndarray, width: int, height: int) -> bytes:
    """A HEIC of `rgb` whose `ispe` box (the coded size, before the clean-aperture crop) says `width` x `height`.

    A 48x48 HEIC is coded as 64x64 and cropped back by a `clap` box, so its header shows 48x48 whatever `ispe`
    says; found by scripts/fuzz.py (libheif refused the decode with a RuntimeError, which was a 500).
    """
    import moodlens.engine.decode  # noqa: F401  (registers the HEIF plugin)

    data = bytearray(save(Image.fromarray(rgb), "HEIF", quality=50))
    at = data.index(b"ispe") + 8  # box type, then version/flags (4 bytes), then width and height
    data[at:at + 8] = struct.pack(">II", width, height)
    return bytes(data)


def jpeg_scan_bomb(rgb: np.ndarray, repeats: int = 1000) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` times: tiny, but each scan is another full pass
    (at 40 Mpx, 1,000 repeats decoded for 24 s)."""
    data = save(Image.fromarray(rgb), "JPEG", quality=80, progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * repeats + b"\xff\xd9"


def png_chunk_bomb(png: bytes, chunks: int = 5000) -> bytes:
    """A valid PNG with `chunks` empty image-data chunks before its real one (1.3 M of them took 18 s)."""
    at = png.index(b"IDAT") - 4
    return png[:at] + png_chunk(b"IDAT", b"") * chunks + png[at:]


def icc_profile(size: int) -> bytes:
    """`size` bytes shaped like an ICC profile (header with its size and `acsp`), the rest noise: as big as a
    printer's profile; PIL refuses to inflate an iCCP chunk past 1 MB."""
    header = struct.pack(">I", size) + b"lcms" + b"\x04\x30\x00\x00" + b"mntrRGB XYZ " + b"\x00" * 12 + b"acsp"
    return header + np.random.default_rng(3).bytes(size - len(header))


def exif_rotated_jpeg(rgb: np.ndarray, orientation: int = 6) -> bytes:
    """`rgb` stored turned (as a phone does), with the EXIF tag saying how to turn it back upright."""
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)  # orientation 6: turn 90 cw to view
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(stored, "JPEG", quality=90, exif=exif.tobytes())


def animated_gif(rgb: np.ndarray, frames: int = 3) -> bytes:
    ims = [Image.fromarray(np.roll(rgb, 8 * i, axis=1)) for i in range(frames)]
    return save(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY,
              encoding: str = "utf-8") -> tuple[bytes, str]:
    """A multipart/form-data body from (field, filename or None for a text field, content) and its Content-Type.

    Filenames are written raw in `encoding`: UTF-8, as browsers do (not percent- or RFC 2231-encoded), or, say,
    Latin-1, as an older client in a Latin-1 locale does.
    """
    out = io.BytesIO()
    for field, filename, content in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode(encoding))
        if filename is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------------------ corpus


@functools.lru_cache(maxsize=1)
def image_cases() -> tuple[ImageCase, ...]:
    rgb = photo()
    jpg = save(Image.fromarray(rgb), "JPEG", quality=90)
    png = save(Image.fromarray(rgb), "PNG")
    small_jpg = save(Image.fromarray(rgb[::4, ::4]), "JPEG", quality=80)
    rgba = np.dstack([rgb, np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))])
    grey16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n" + b"0" * 400 + b"\n%%EOF\n"
    zip_ = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)) * 2
    html = b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=x onerror=alert(1)></body></html>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000"><rect width="9" height="9"/></svg>'
    elf = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200
    heic_junk = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256))
    ppm = save(Image.fromarray(rgb[:32, :32]), "PPM")
    bad_crc = bytearray(png)
    bad_crc[29:33] = b"\x00\x00\x00\x00"  # IHDR's CRC
    gif_huge = bytearray(save(Image.fromarray(rgb[:32, :32]), "GIF"))
    gif_huge[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    bmp_huge = bytearray(save(Image.fromarray(rgb[:32, :32]), "BMP"))
    bmp_huge[18:26] = struct.pack("<ii", 30000, 30000)
    z = zlib.compressobj(9)
    over_limit_png = png_with_header(7000, 7000, z.compress(b"\x00" * 7001 * 8) + z.flush())  # 49 Mpx, under PIL's
    webp = save(Image.fromarray(rgb), "WEBP", quality=80)
    bmp_negative = bytearray(save(Image.fromarray(rgb[:32, :32]), "BMP"))
    bmp_negative[18:22] = struct.pack("<i", -32)  # PIL reads it unsigned: 4,294,967,264 pixels wide
    big_text = PngImagePlugin.PngInfo()
    big_text.add_text("comment", "moodlens " * 250_000, zip=True)  # 2.2 MB inflated, 69 kB stored
    c = ImageCase
    return (
        # not images at all
        c("zero-bytes", "zero-bytes.jpg", b"", 400, "empty-image", "NotAnImageError"),
        c("text", "text.jpg", b"This is not a photo, just text that says it is one.\n" * 30, 415, "not-an-image",
          "NotAnImageError"),
        c("html", "html.jpg", html, 415, "not-an-image", "NotAnImageError"),
        c("pdf", "pdf.jpg", pdf, 415, "not-an-image", "NotAnImageError"),
        c("zip", "zip.jpg", zip_, 415, "not-an-image", "NotAnImageError"),
        c("svg", "svg.png", svg, 415, "not-an-image", "NotAnImageError"),
        c("elf", "elf.jpg", elf, 415, "not-an-image", "NotAnImageError"),
        c("ppm", "ppm.jpg", ppm, 415, "not-an-image", "NotAnImageError"),  # a real format we do not parse
        c("random", "random.png", np.random.default_rng(7).bytes(4096), 415, "not-an-image", "NotAnImageError"),
        c("heic-junk", "heic-junk.heic", heic_junk, 415, "not-an-image", "NotAnImageError"),
        # images cut short or corrupt
        c("jpeg-soi-only", "jpeg-soi-only.jpg", b"\xff\xd8\xff", 415, "not-an-image", "NotAnImageError"),
        c("truncated-jpeg", "truncated-jpeg.jpg", jpg[: len(jpg) // 2], 422, "truncated-image",
          "TruncatedImageError"),
        c("truncated-png", "truncated-png.png", png[: len(png) // 2], 422, "truncated-image", "TruncatedImageError"),
        c("truncated-webp", "truncated-webp.webp", webp[: len(webp) // 2], 422, "truncated-image",
          "TruncatedImageError"),
        c("heic-coded-size-mismatch", "heic-coded-size-mismatch.heic", heic_with_extent(rgb[:48, :48], 64, 100000),
          422, "truncated-image", "TruncatedImageError"),
        c("png-bad-crc", "png-bad-crc.png", bytes(bad_crc), 415, "not-an-image", "NotAnImageError"),  # PIL: no PNG
        c("bmp-negative-width", "bmp-negative-width.bmp", bytes(bmp_negative), 422, "truncated-image",
          "TruncatedImageError"),  # was 413: PIL saw 4 billion pixels
        # too large (declared) or too small
        c("bomb-30000", "bomb-30000.png", decompression_bomb(), 413, "too-large", "ImageTooLargeError"),
        c("jpeg-20000", "jpeg-20000.jpg", jpeg_declaring(20000, 20000, small_jpg), 413, "too-large",
          "ImageTooLargeError"),
        c("heic-crop-hides-size", "heic-crop-hides-size.heic", heic_with_extent(rgb[:48, :48], 8000, 8000), 413,
          "too-large", "ImageTooLargeError"),  # shows 48x48, codes 64 Mpx: the limit applies to the coded size
        c("heic-coded-huge", "heic-coded-huge.heic", heic_with_extent(rgb[:48, :48], 64, 16777280), 413, "too-large",
          "ImageTooLargeError"),  # over libheif's own 1-gigapixel limit
        c("png-7000", "png-7000.png", over_limit_png, 413, "too-large", "ImageTooLargeError"),
        c("gif-65535", "gif-65535.gif", bytes(gif_huge), 413, "too-large", "ImageTooLargeError"),
        c("bmp-30000", "bmp-30000.bmp", bytes(bmp_huge), 413, "too-large", "ImageTooLargeError"),
        # cheap to send, costly to decode (CPU bombs): refused from the markers, before decoding
        c("jpeg-scan-bomb", "jpeg-scan-bomb.jpg", jpeg_scan_bomb(rgb), 422, "too-complex", "ImageTooComplexError"),
        c("png-chunk-bomb", "png-chunk-bomb.png", png_chunk_bomb(png), 422, "too-complex", "ImageTooComplexError"),
        c("one-pixel", "one-pixel.png", save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 422, "image-too-small",
          "ImageTooSmallError"),
        c("one-row", "one-row.png", save(Image.new("L", (4000, 1)), "PNG"), 422, "image-too-small",
          "ImageTooSmallError"),
        # valid but odd: must be analyzed
        c("cmyk-jpeg", "cmyk-jpeg.jpg", save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90), 200, None,
          None, (192, 192)),
        c("png-16-bit", "png-16-bit.png", save(Image.fromarray(grey16), "PNG"), 200, None, None, (192, 192)),
        c("png-alpha", "png-alpha.png", save(Image.fromarray(rgba, "RGBA"), "PNG"), 200, None, None, (192, 192)),
        c("gif-animated", "gif-animated.gif", animated_gif(rgb), 200, None, None, (192, 192)),
        c("exif-rotated", "exif-rotated.jpg", exif_rotated_jpeg(rgb[:, 16:176]), 200, None, None, (160, 192)),
        c("palette-png", "palette-png.png", save(Image.fromarray(rgb).quantize(64), "PNG"), 200, None, None,
          (192, 192)),
        c("jpeg-trailing-junk", "jpeg-trailing-junk.jpg", jpg + b"PK\x03\x04" + b"\x00" * 300, 200, None, None,
          (192, 192)),
        c("png-named-jpg", "png-named-jpg.jpg", png, 200, None, None, (192, 192)),
        # metadata PIL refuses to inflate past 1 MB (was 415): the pixels do not need it
        c("png-icc-1mb", "png-icc-1mb.png", save(Image.fromarray(rgb), "PNG", icc_profile=icc_profile(1_100_000)),
          200, None, None, (192, 192)),
        c("png-text-2mb", "png-text-2mb.png", save(Image.fromarray(rgb), "PNG", pnginfo=big_text), 200, None, None,
          (192, 192)),
        c("tall-thin", "tall-thin.png", save(Image.new("RGB", (16, 20000), (120, 90, 60)), "PNG"), 200, None, None,
          (16, 20000)),
        c("tiny-16", "tiny-16.png", save(Image.new("RGB", (16, 16), (120, 90, 60)), "PNG"), 200, None, None,
          (16, 16)),
    )


def image_case(name: str) -> ImageCase:
    return next(c for c in image_cases() if c.name == name)


@functools.lru_cache(maxsize=1)
def request_cases() -> tuple[RequestCase, ...]:
    """Every image case as a multipart upload and as a raw body, then the request-level mistakes."""
    cases: list[RequestCase] = []
    for c in image_cases():
        body, ctype = multipart([("image", c.filename, c.data)])
        cases.append(RequestCase(f"multipart-{c.name}", body, ctype, c.status, c.slug))
        cases.append(RequestCase(f"raw-{c.name}", c.data, "image/jpeg", c.status, c.slug))
    good = image_case("png-named-jpg").data
    r = RequestCase
    cases += [
        r("raw-empty-body", b"", "image/png", 400, "empty-image"),
        r("no-body-no-type", b"", None, 415, "unsupported-media-type"),
        r("wrong-type-text", good, "text/plain", 415, "unsupported-media-type"),
        r("wrong-type-json", b'{"image": "aGVsbG8="}', "application/json", 415, "unsupported-media-type"),
        r("wrong-type-octet", good, "application/octet-stream", 415, "unsupported-media-type"),
        r("wrong-type-form", b"image=%89PNG", "application/x-www-form-urlencoded", 415, "unsupported-media-type"),
        r("no-content-type", good, None, 415, "unsupported-media-type"),
        r("raw-declared-gif-is-png", good, "image/gif", 200, None),  # the declared type is not trusted
        r("multipart-no-boundary", b"--x\r\n\r\n", "multipart/form-data", 400, "missing-image"),
        r("multipart-garbage", b"--x\r\nnot really multipart", "multipart/form-data; boundary=x", 400,
          "missing-image"),
        r("multipart-empty", b"", f"multipart/form-data; boundary={BOUNDARY}", 400, "missing-image"),
    ]
    for name, parts, status, slug in [
        ("missing-field", [("photo", "a.png", good)], 400, "missing-image"),
        ("field-is-text", [("image", None, b"hello")], 400, "missing-image"),
        ("several-files", [("image", "a.png", good), ("image", "b.png", good)], 400, "several-images"),
        ("several-files-one-empty", [("image", "a.png", good), ("image", "b.png", b"")], 400, "several-images"),
        ("unicode-filename", [("image", "фото 😀 写真 é.jpg", good)], 200, None),
        ("latin1-filename", [("image", "café déjà vu.jpg", good)], 200, None),  # sent as Latin-1, below
        ("long-filename", [("image", "x" * 20000 + ".jpg", good)], 200, None),
        ("traversal-filename", [("image", "../../../../etc/cron.d/x.jpg", good)], 200, None),
        ("nul-in-filename", [("image", "a\x00b.jpg", good)], 200, None),
        ("no-filename", [("image", "", good)], 200, None),
        ("bad-option-field", [("image", "a.png", good), ("classes", None, b"5")], 400, "bad-option"),
        ("unicode-option-field", [("image", "a.png", good), ("explain", None, "да".encode())], 400, "bad-option"),
        ("many-parts", [("image", "a.png", good)] + [(f"f{i}", None, b"x") for i in range(40)], 413, "too-large"),
    ]:
        body, ctype = multipart(parts, encoding="latin-1" if name.startswith("latin1") else "utf-8")
        cases.append(r(name, body, ctype, status, slug))
    return tuple(cases)


def write_corpus(folder) -> dict[str, ImageCase]:
    """Every image case written into `folder` under its filename; {filename: case}."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for c in image_cases():
        (folder / c.filename).write_bytes(c.data)
        out[c.filename] = c
    return out
