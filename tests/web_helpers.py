"""Test images, a fake-camera video file and Chromium settings for the web tests."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """`rgb` (H, W, 3) uint8 encoded as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def astronaut() -> np.ndarray:
    """A photo with one face (Eileen Collins, public domain), 512x512 RGB."""
    from skimage import data

    return data.astronaut()


def coffee() -> np.ndarray:
    """A photo with no face: a cup of coffee, 400x600 RGB."""
    from skimage import data

    return data.coffee()


def write_y4m(path: Path, rgb: np.ndarray, width: int = 640, height: int = 480, frames: int = 10) -> Path:
    """A Y4M video of `rgb` letterboxed into width x height, for Chromium's fake camera."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = int(w * scale) // 2 * 2, int(h * scale) // 2 * 2
    canvas = np.zeros((height, width, 3), np.uint8)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    i420 = cv2.cvtColor(canvas, cv2.COLOR_RGB2YUV_I420).tobytes()  # Y plane, then U, then V
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n")
            f.write(i420)
    return path
