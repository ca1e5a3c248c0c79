"""decode_image: every format, EXIF orientation, colour modes, and each kind of bad input with its typed error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import encode
from moodlens.engine.decode import decode_image
from moodlens.engine.errors import (
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    TruncatedImageError,
)

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def small(astronaut_rgb) -> np.ndarray:
    return np.ascontiguousarray(astronaut_rgb[::4, ::4])  # 128x128: keeps the format round trips fast


@pytest.mark.parametrize(("fmt", "params", "tolerance"), [
    ("JPEG", {}, 6), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0), ("WEBP", {"quality": 90}, 8),
    ("BMP", {}, 0), ("GIF", {}, 20), ("HEIF", {"quality": 90}, 10), ("TIFF", {}, 0),
    ("TIFF", {"compression": "tiff_lzw"}, 0), ("AVIF", {"quality": 90}, 10),
])
def test_round_trip(small, fmt, params, tolerance):
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")  # the fixture's encoder
    out = decode_image(encode(small, fmt, **params))
    assert out.shape == small.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - small).mean() <= tolerance


def test_path_str_and_bytes_agree(tmp_path, small):
    data = encode(small, "PNG")
    (tmp_path / "a.png").write_bytes(data)
    a, b, c = decode_image(data), decode_image(tmp_path / "a.png"), decode_image(str(tmp_path / "a.png"))
    assert np.array_equal(a, small) and np.array_equal(a, b) and np.array_equal(a, c)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation(orientation):
    # a 64x32 picture, left half black, right half white, stored sideways with the tag saying how to turn it
    upright = np.zeros((32, 64, 3), np.uint8)
    upright[:, 32:] = 255
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = Image.fromarray(upright).transpose(turn[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(buf.getvalue())
    assert out.shape == (32, 64, 3)
    assert out[:, :24].mean() < 30 and out[:, 40:].mean() > 225


def test_cmyk_jpeg(small):
    buf = io.BytesIO()
    Image.fromarray(small).convert("CMYK").save(buf, "JPEG", quality=95)
    out = decode_image(buf.getvalue())
    assert out.shape == small.shape
    assert np.abs(out.astype(int) - small).mean() < 8


def test_16_bit_grey_png_is_scaled_not_clipped():
    grey = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    out = decode_image(buf.getvalue())
    assert out.shape == (32, 64, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 120 <= out[0, 32, 0] <= 135
    assert np.array_equal(out[..., 0], out[..., 2])


def test_alpha_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red | fully transparent black
    out = decode_image(encode(rgba, "PNG"))
    assert (out[:, :10] == (255, 0, 0)).all() and (out[:, 10:] == 255).all()


def test_palette_with_transparency_and_grey():
    p = Image.new("P", (20, 20), 0)
    p.putpalette([0, 0, 0, 0, 255, 0])
    p.paste(1, (0, 0, 10, 20))
    buf = io.BytesIO()
    p.save(buf, "PNG", transparency=0)
    out = decode_image(buf.getvalue())
    assert (out[:, :10] == (0, 255, 0)).all() and (out[:, 10:] == 255).all()
    grey = decode_image(encode(np.full((20, 20), 77, np.uint8), "PNG"))
    assert grey.shape == (20, 20, 3) and (grey == 77).all()


def test_gif_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = decode_image(buf.getvalue())
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_multi_page_tiff_gives_its_first_page():
    pages = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    out = decode_image(buf.getvalue())
    assert out.shape == (30, 40, 3) and out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_tiff_declaring_too_many_pixels_is_refused_before_decoding():
    header = Image.new("L", (16, 16))
    buf = io.BytesIO()
    header.save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    # patch the ImageWidth and ImageLength tags (LONG or SHORT) to 60000 x 60000
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        tag, kind = struct.unpack_from("<HH", data, ifd + 2 + 12 * i)
        if tag in (256, 257):
            struct.pack_into("<HHII", data, ifd + 2 + 12 * i, tag, 4, 1, 60_000)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bytes(data))
    assert info.value.status == 413


def test_arrays():
    assert decode_image(np.full((20, 30), 9, np.uint8)).shape == (20, 30, 3)
    rgba = np.zeros((20, 20, 4), np.uint8)
    assert (decode_image(rgba) == 255).all()  # transparent -> white
    assert decode_image(np.full((20, 20, 3), 65535, np.uint16)).max() == 255
    assert decode_image(np.full((20, 20, 3), 0.5, np.float32))[0, 0, 0] == 128
    with pytest.raises(NotAnImageError):
        decode_image(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ImageTooSmallError):
        decode_image(np.zeros((8, 100, 3), np.uint8))


def test_truncated(astronaut_jpeg_bytes, small):
    with pytest.raises(TruncatedImageError):
        decode_image(astronaut_jpeg_bytes[: len(astronaut_jpeg_bytes) // 2])
    png = encode(small, "PNG")
    with pytest.raises(TruncatedImageError):
        decode_image(png[: len(png) // 2])


@pytest.mark.parametrize("data", [
    b"hello, world\n" * 20, b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.4 " + bytes(300), b"",
    bytes(range(256)) * 4,
])
def test_not_an_image(data):
    with pytest.raises(NotAnImageError) as info:
        decode_image(data)
    assert str(info.value) and info.value.status == 415


def test_corrupt_files_say_so_in_words_and_keep_the_decoders_text_as_the_cause(astronaut_jpeg_bytes):
    """One sentence for every cut-short or corrupt file; what Pillow said is the exception's __cause__ (for the
    server log), never its message."""
    from moodlens.engine.decode import CORRUPT

    with pytest.raises(TruncatedImageError) as info:
        decode_image(astronaut_jpeg_bytes[: len(astronaut_jpeg_bytes) // 2])
    assert str(info.value) == CORRUPT and "(" not in str(info.value)
    assert "truncated" in str(info.value.__cause__)  # Pillow's "image file is truncated (...)"


@pytest.mark.parametrize("width, height", [(-32, 32), (-32, -32), (0, 32), (32, 0)])
def test_bmp_with_a_non_positive_size_is_corrupt_not_too_large(small, width, height):
    data = bytearray(encode(small[:32, :32], "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    with pytest.raises(TruncatedImageError):
        decode_image(bytes(data))


def test_bmp_stored_top_down_decodes(small):
    """A negative height is valid: rows stored top-down."""
    data = bytearray(encode(small[:32, :32], "BMP"))
    data[22:26] = struct.pack("<i", -32)
    assert decode_image(bytes(data)).shape == (32, 32, 3)


def test_png_with_a_big_icc_profile_or_text_decodes(small):
    """PIL refuses to inflate an ICC profile or text chunk past 1 MB (it raised ValueError: a 415); the pixels do
    not need them, so they are dropped and the image decodes the same."""
    from PIL import Image, PngImagePlugin

    plain = decode_image(encode(small, "PNG"))
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, "PNG", icc_profile=np.random.default_rng(0).bytes(1_100_000))
    assert np.array_equal(decode_image(buf.getvalue()), plain)
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 2_000_000, zip=True)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, "PNG", pnginfo=info)
    assert np.array_equal(decode_image(buf.getvalue()), plain)


def test_too_small():
    decode_image(np.zeros((16, 16, 3), np.uint8))  # the smallest size allowed
    with pytest.raises(ImageTooSmallError, match="16x16"):
        decode_image(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    with pytest.raises(ImageTooSmallError):
        decode_image(encode(np.zeros((15, 200, 3), np.uint8), "PNG"))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (the pixel data is a few bytes: a bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(10_000, 5_000), (100_000, 100_000)])  # over our limit; over Pillow's too
def test_decompression_bomb_is_refused_from_the_header(size):
    data = _png_declaring(*size)
    assert len(data) < 2000
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data)
    assert info.value.status == 413


def test_limits(tmp_path, astronaut_jpeg_bytes):
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(astronaut_jpeg_bytes, max_bytes=1000)
    (tmp_path / "a.jpg").write_bytes(astronaut_jpeg_bytes)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(tmp_path / "a.jpg", max_bytes=1000)
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(astronaut_jpeg_bytes, max_pixels=512 * 511)
    assert decode_image(astronaut_jpeg_bytes, max_pixels=512 * 512).shape == (512, 512, 3)


def test_every_error_is_an_image_error():
    for cls in (NotAnImageError, TruncatedImageError, ImageTooLargeError, ImageTooSmallError):
        assert issubclass(cls, ImageError)


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpeg_decodes_reduced_for_analysis_with_its_full_size(orientation):
    from moodlens.engine.decode import decode_picture

    upright = np.zeros((960, 1280, 3), np.uint8)
    upright[:, 640:] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90) if orientation == 6 else \
        Image.fromarray(upright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    picture = decode_picture(buf.getvalue(), work_side=320)
    assert (picture.width, picture.height) == (1280, 960)
    assert picture.rgb.shape == (240, 320, 3) and picture.scale == 0.25  # libjpeg's 1/4 DCT scaling
    assert picture.rgb[:, :150].mean() < 30 and picture.rgb[:, 170:].mean() > 225
    assert picture.full().shape == (960, 1280, 3)
    # below twice the work side, and for other formats, nothing is reduced
    assert decode_picture(buf.getvalue(), work_side=700).scale == 1
    png = encode(upright, "PNG")
    assert decode_picture(png, work_side=320).scale == 1


def test_ordinary_progressive_jpeg_and_chunked_png_are_not_mistaken_for_bombs(small):
    prog = encode(small, "JPEG", quality=90, progressive=True)
    assert 5 <= prog.count(b"\xff\xda") <= 20
    assert decode_image(prog).shape == small.shape
    big = np.tile(small, (8, 8, 1))  # 1024x1024: zlib writes many full-size IDAT chunks
    png = encode(big, "PNG")
    assert png.count(b"IDAT") > 1
    assert decode_image(png).shape == big.shape


def test_cpu_bombs_are_refused_from_their_markers():
    from bad_inputs import jpeg_scan_bomb, png_chunk_bomb
    from moodlens.engine.errors import ImageTooComplexError

    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    with pytest.raises(ImageTooComplexError, match="scans"):
        decode_image(jpeg_scan_bomb(rgb, 200))
    with pytest.raises(ImageTooComplexError, match="chunks"):
        decode_image(png_chunk_bomb(encode(rgb, "PNG"), 1200))
    assert decode_image(png_chunk_bomb(encode(rgb, "PNG"), 50)).shape == (64, 64, 3)  # a few are fine
