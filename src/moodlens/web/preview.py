"""The API's `preview=1` option: the photo as it was analysed, as a JPEG the web page can show.

Browsers show JPEG, PNG, WebP, GIF, BMP and AVIF, but not TIFF (nor HEIC outside Safari): for those the page
asks for this preview and draws its boxes over it instead of over the file it was given.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from moodlens.engine.decode import MAX_BYTES, MAX_PIXELS, ImageInput, decode_image

#: The preview's longer side at most (boxes are drawn in percent of the picture, so any size lines up); a
#: 24 Mpx TIFF would otherwise come back as a JPEG of several megabytes.
PREVIEW_SIDE = 2048


def decode_for_preview(data: ImageInput, analyzer: Any) -> np.ndarray:
    """`data` decoded once, upright, under the analyzer's byte and pixel limits: analysed and previewed both."""
    return decode_image(data, getattr(analyzer, "max_bytes", MAX_BYTES), getattr(analyzer, "max_pixels", MAX_PIXELS))


def preview_data_url(rgb: np.ndarray, side: int = PREVIEW_SIDE, quality: int = 85) -> str:
    """`rgb` as a `data:image/jpeg;base64,...` URL, its longer side shrunk to `side` pixels when larger."""
    import cv2

    from moodlens.engine.render import encode_jpeg

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(rgb, quality)).decode("ascii")
