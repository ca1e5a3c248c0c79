"""decode stage: bytes, a file path or an array -> RGB uint8 (H, W, 3), upright, with every failure typed.

Formats: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF (first page), AVIF, HEIC/HEIF (pi-heif). Limits are
checked as early as possible: the byte count before anything is parsed, the pixel count from the header before
pixels are decoded. Nothing is ever written to disk.
"""

from __future__ import annotations

import io
import os
import struct
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from moodlens.engine.errors import (
    ImageTooComplexError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    TruncatedImageError,
)
from moodlens.engine.safeio import read_regular

try:  # HEIC/HEIF (iPhone photos) through pi-heif: libheif's decoder without pillow-heif's 23 MB x265 encoder.
    # Without it those files are reported as not an image.
    from pi_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pi-heif is a hard dependency, this only keeps decode importable
    pass

# Pillow frees every image's pixel block back to the OS by default, so each decode page-faults its memory in
# again (~700 faults, 40% of a 640x480 JPEG's decode time). Keeping up to two freed blocks (at most 2 x 16 MB)
# for reuse removes that. Pillow's documented knob; an explicit PILLOW_BLOCKS_MAX setting wins.
if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < 2:
    Image.core.set_blocks_max(2)

MAX_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000
# what folders are scanned for
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"}
# Decoding work a file may ask for beyond its pixels. A progressive photo has about 10 scans (a few more with an
# EXIF thumbnail); a crafted 94 kB JPEG repeating its last scan 1,000 times decoded for 24 s at 40 Mpx. PNG
# encoders write a handful of metadata chunks and image data in chunks of 8 kB or more; 1.3 M empty chunks
# took 18 s. Counted from the markers, before any pixel is decoded.
MAX_JPEG_SCANS = 100
MAX_PNG_SMALL_CHUNKS = 1000  # metadata chunks plus image-data chunks under 256 bytes
MIN_SIDE = 16  # smaller than this cannot hold a face the detector can find
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF", "HEIF")  # only these parsers ever see untrusted bytes

# bytes, a path, an RGB(A)/grey array, a PIL image, or a binary file object (anything with .read())
ImageInput = bytes | bytearray | memoryview | str | Path | np.ndarray | Image.Image | typing.BinaryIO


@dataclass
class Picture:
    """A decoded image for analysis: `rgb` holds it at `scale` of its full `width` x `height`.

    A large JPEG is decoded smaller straight from its DCT coefficients (libjpeg's 1/2, 1/4, 1/8 scaling), which
    costs a fraction of a full decode; `full()` decodes the full resolution once, when a face is too small in
    `rgb` to crop from it.
    """

    rgb: np.ndarray
    width: int
    height: int
    source: bytes | None = None
    max_pixels: int = MAX_PIXELS
    _full: np.ndarray | None = field(default=None, repr=False)

    @property
    def scale(self) -> float:
        return self.rgb.shape[1] / self.width

    def full(self) -> np.ndarray:
        if self.scale == 1 or self.source is None:
            return self.rgb
        if self._full is None:
            self._full = _from_bytes(self.source, self.max_pixels)[0]
        return self._full


def decode_picture(data: ImageInput, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                   work_side: int | None = None) -> Picture:
    """`decode_image`, but a JPEG whose longer side is at least twice `work_side` is decoded at the largest
    DCT reduction that keeps its longer side at `work_side` or more (see `Picture`)."""
    if isinstance(data, np.ndarray | Image.Image):
        rgb = decode_image(data, max_bytes, max_pixels)
        return Picture(rgb, rgb.shape[1], rgb.shape[0])
    raw = _checked_bytes(data, max_bytes)
    rgb, (width, height) = _from_bytes(raw, max_pixels, work_side)
    return Picture(rgb, width, height, raw if rgb.shape[1] != width else None, max_pixels)


def decode_image(data: ImageInput, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode `data` to an upright RGB uint8 array (H, W, 3).

    `data` is encoded image bytes, a path to an image file, a binary file object, a PIL image, or an array
    (H, W), (H, W, 1|3|4) of uint8/uint16 (arrays are taken as RGB(A), not OpenCV's BGR). URLs are refused:
    moodlens never fetches anything. Raises NotAnImageError, TruncatedImageError,
    ImageTooLargeError (over `max_bytes` or `max_pixels`) or ImageTooSmallError (a side under 16 pixels);
    a path that does not exist raises FileNotFoundError.
    """
    if isinstance(data, np.ndarray):
        return _from_array(data, max_pixels)
    if isinstance(data, Image.Image):
        _check_size(data.width, data.height, max_pixels)
        return _to_rgb(_upright(data))
    return _from_bytes(_checked_bytes(data, max_bytes), max_pixels)[0]


def _checked_bytes(data: ImageInput, max_bytes: int) -> bytes:
    if isinstance(data, str) and data.split("://", 1)[0].lower() in ("http", "https", "ftp", "s3", "gs", "file"):
        raise NotAnImageError(f"{data}: a URL; moodlens reads local files and bytes only (fetch it first, or use "
                              "`moodlens batch` for s3:// folders)")
    if isinstance(data, str | Path):
        data = _read_file(Path(data), max_bytes)
    elif hasattr(data, "read"):  # a binary file object: read one byte past the limit to know it is over
        data = data.read(max_bytes + 1)
        if isinstance(data, str):
            raise NotAnImageError("the file object is open in text mode: open it with 'rb'")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise NotAnImageError(f"cannot decode a {type(data).__name__}: pass bytes, a file path, a binary file, a "
                              "PIL image or an RGB array")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the file has {len(data):,} bytes, over the limit of {max_bytes:,}")
    if len(data) == 0:
        raise NotAnImageError("the file is empty")
    return bytes(data)


def _read_file(path: Path, max_bytes: int) -> bytes:
    size = os.stat(path).st_size  # FileNotFoundError for a missing file: not an image problem
    if size > max_bytes:  # refuse before reading a huge file into memory
        raise ImageTooLargeError(f"{path}: {size:,} bytes, over the limit of {max_bytes:,}")
    if path.is_dir():
        raise NotAnImageError(f"{path}: is a folder, not an image file")
    # a FIFO or device is refused rather than read (it could block or never end); the read stops past the limit
    # in case the file grew since the stat
    return read_regular(path, max_bytes)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(f"the image is {width}x{height} = {width * height:,} pixels, "
                                 f"over the limit of {max_pixels:,}")
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmallError(f"the image is {width}x{height} pixels; it must be at least "
                                 f"{MIN_SIDE}x{MIN_SIDE} to hold a face")


# One message per kind of failure, in plain words. What the decoder said stays on the exception's __cause__
# (the server logs it); it never reaches a user: it is the parser's wording, not advice.
NOT_AN_IMAGE = "the data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF, AVIF, HEIC)"
CORRUPT = "the image file is cut short or corrupt, so it cannot be decoded"


def _too_many_pixels(max_pixels: int) -> str:
    return f"the image declares more pixels than can be decoded (the limit is {max_pixels:,})"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """`Image.open` (the header only), every failure typed. PIL's own (process-wide) bomb guard stays as a
    backstop; we leave the global Image.MAX_IMAGE_PIXELS alone: other code in the process shares it."""
    _check_bmp_header(data)
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except ValueError as exc:
        # PIL refuses a PNG whose ICC profile or compressed text inflates past 1 MB (its guard against zlib
        # bombs in metadata); the pixels do not need them
        stripped = _png_without_metadata(data)
        if stripped is None:
            raise NotAnImageError(NOT_AN_IMAGE) from exc
        return _open(stripped, max_pixels)  # (it has none left to strip: no second retry)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_too_many_pixels(max_pixels)) from exc
    except (UnidentifiedImageError, TypeError) as exc:
        raise NotAnImageError(NOT_AN_IMAGE) from exc
    except (OSError, SyntaxError, EOFError, RuntimeError) as exc:  # a known format whose header is broken
        # (RuntimeError: libheif's errors, through pi-heif)
        raise TruncatedImageError(CORRUPT) from exc


def _from_bytes(data: bytes, max_pixels: int, work_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixels (reduced for a large JPEG when `work_side` is given) and the full upright size (width, height)."""
    # Image.open reads only the header; our per-call limit is checked on the declared size before any pixel
    # is decoded.
    im = _open(data, max_pixels)
    with im:
        _check_size(im.width, im.height, max_pixels)
        _check_work(data, im.format)
        if im.format == "HEIF":
            coded = _heif_coded_size(data)
            if coded and coded[0] * coded[1] > max_pixels:
                raise ImageTooLargeError(f"the image is coded as {coded[0]}x{coded[1]} = {coded[0] * coded[1]:,} "
                                         f"pixels (shown cropped to {im.width}x{im.height}), over the limit of "
                                         f"{max_pixels:,}")
        full_size = im.size
        if work_side and im.format == "JPEG" and max(im.size) >= 2 * work_side:
            factor = max(im.size) / work_side  # draft picks the largest 1/2^k reduction still >= this size
            im.draft(None, (max(1, int(im.width / factor)), max(1, int(im.height / factor))))
        try:
            im.seek(0)  # first frame of an animation
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(_too_many_pixels(max_pixels)) from exc
        except (OSError, SyntaxError, EOFError, ValueError, IndexError, RuntimeError) as exc:
            # pi-heif raises RuntimeError for libheif's errors, e.g. a HEIC whose coded size (before its
            # clean-aperture crop, so not in the header) is over libheif's own pixel limit
            if isinstance(exc, RuntimeError) and "Security limit exceeded" in str(exc):
                raise ImageTooLargeError(_too_many_pixels(max_pixels)) from exc
            raise TruncatedImageError(CORRUPT) from exc
        reduced_size = im.size
        im = _upright(im)
        if im.size != reduced_size:  # EXIF turned it a quarter
            full_size = full_size[::-1]
        _check_size(*full_size, max_pixels)
        return _to_rgb(im), full_size


def _check_work(data: bytes, fmt: str | None) -> None:
    """Refuse files whose structure asks for absurd decoding work (ImageTooComplexError)."""
    if fmt == "JPEG":
        # SOS markers: in entropy-coded data a 0xFF byte is always followed by 0x00 or a marker, never by 0xDA
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageTooComplexError(f"the JPEG has {scans:,} scans (a photo has about 10; over "
                                       f"{MAX_JPEG_SCANS} are refused) as too costly to decode")
    elif fmt == "PNG":
        small, pos = 0, 8
        while pos + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, pos)
            if kind == b"IEND":
                break
            if kind != b"IDAT" or length < 256:
                small += 1
                if small > MAX_PNG_SMALL_CHUNKS:
                    raise ImageTooComplexError(f"the PNG has over {MAX_PNG_SMALL_CHUNKS:,} metadata or tiny data "
                                               "chunks: refused as too costly to decode")
            pos += 12 + length


def _check_bmp_header(data: bytes) -> None:
    """A BMP whose width is not positive is corrupt (TruncatedImageError). PIL reads the signed field unsigned,
    so a width of -32 became 4,294,967,264 and a 413 "too large"; a negative height is valid (top-down rows)."""
    if data[:2] != b"BM" or len(data) < 26:
        return
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size >= 40:  # BITMAPINFOHEADER and later: signed 32-bit width and height
        width, height = struct.unpack_from("<ii", data, 18)
    elif header_size == 12:  # the OS/2 core header: unsigned 16-bit
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        return  # PIL refuses it itself
    if width <= 0 or height in (0, -2**31):
        raise TruncatedImageError(CORRUPT)


#: PNG chunks PIL inflates or keeps that the pixels never need (eXIf stays: it holds the orientation)
_PNG_METADATA = {b"iCCP", b"zTXt", b"iTXt", b"tEXt"}


def _png_without_metadata(data: bytes) -> bytes | None:
    """The PNG `data` without its ICC profile and text chunks; None if it is not a PNG or has none."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    kept, pos, dropped = [data[:8]], 8, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if kind in _PNG_METADATA:
            dropped = True
        else:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    kept.append(data[pos:])
    return b"".join(kept) if dropped else None


def _heif_coded_size(data: bytes) -> tuple[int, int] | None:
    """The largest coded size (an `ispe` property) in a HEIF file's top-level `meta` box, None if there is none.

    pi-heif reports the size after the clean-aperture (`clap`) crop, which a crafted file can make tiny while
    the coded image, which libheif allocates in full, is huge (an 11 kB HEIC shown as 48x48 but coded 7001x7001
    took 230 MB); the pixel limit must apply to the coded size too.
    """
    pos, end = 0, len(data)
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1 and pos + 16 <= end:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return None
        if kind == b"meta":
            meta, best = data[pos + header:pos + size], None
            i = meta.find(b"ispe")
            while i >= 4:
                box_size = struct.unpack_from(">I", meta, i - 4)[0]
                at = i + 8 if box_size == 20 else i + 16 if box_size == 1 else None  # (1: a 64-bit box size)
                if at is not None and at + 8 <= len(meta):
                    w, h = struct.unpack_from(">II", meta, at)
                    if best is None or w * h > best[0] * best[1]:
                        best = (w, h)
                i = meta.find(b"ispe", i + 4)
            return best
        pos += size
    return None


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store pixels sideways and say so in a tag)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF must not lose the picture
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(im)
        except Exception:  # same: a broken tag means we keep the stored orientation
            return im
    return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> RGB uint8; transparency is composited on white (what a viewer shows)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits (PIL's convert("L") would clip everything over 255 to white)
        return _from_array(np.asarray(im), max_pixels=None)
    if mode == "F":
        return _from_array(np.asarray(im), max_pixels=None)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im if mode == "RGBA" else im.convert("RGBA")
        # pasted through its alpha onto white: alpha_composite's pixels, at half its peak memory (a 40 Mpx
        # image: +381 MB, was +686 MB)
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.getchannel("A"))
        return np.asarray(white, dtype=np.uint8).copy()
    # L, 1, CMYK, YCbCr, LAB, HSV, ...: PIL knows the conversion (CMYK JPEGs from Photoshop included)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _from_array(arr: np.ndarray, max_pixels: int | None) -> np.ndarray:
    """An array image -> RGB uint8 (grey is repeated, alpha composited on white, 16-bit scaled)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise NotAnImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), not {arr.shape}")
    if max_pixels is not None:
        _check_size(arr.shape[1], arr.shape[0], max_pixels)
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit data (uint16, or PIL's int32 "I" mode holding 16-bit values): keep the top 8 bits
        top = 65535.0 if arr.max(initial=0) > 255 or arr.dtype.itemsize == 2 else 255.0
        return np.clip(arr.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr, initial=0)) <= 1.0 else 1.0  # 0..1 floats, else 0..255
        return np.clip(np.nan_to_num(arr.astype(np.float32)) * scale + 0.5, 0, 255).astype(np.uint8)
    raise NotAnImageError(f"cannot use an image array of dtype {arr.dtype}")
