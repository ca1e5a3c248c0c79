"""Shared test images, all public domain (scikit-image's sample photos), built in memory once per session.

- `astronaut_rgb` / `astronaut_jpeg_bytes`: one face (Eileen Collins), 512x512; the face box is about
  x 178..272, y 81..175 (ASTRONAUT_FACE).
- `coffee_rgb` / `coffee_jpeg_bytes`: no face, 600x400.
- `group_photo`: 640x480, the astronaut's head pasted four times at different sizes; with each face's centre.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

ASTRONAUT_FACE = (178, 81, 94, 94)  # x, y, w, h of the face in skimage.data.astronaut()


class GroupPhoto(NamedTuple):
    rgb: np.ndarray
    centres: list[tuple[float, float]]  # face centres (x, y), in pasting order


def encode(rgb: np.ndarray, fmt: str = "JPEG", **params) -> bytes:
    """`rgb` encoded by Pillow in `fmt` (JPEG quality 90 unless given)."""
    from PIL import Image

    from bad_inputs import save

    if fmt == "JPEG":
        params.setdefault("quality", 90)
    return save(Image.fromarray(rgb), fmt, **params)


def compose_faces(sizes: list[int], width: int = 640, height: int = 480, cols: int = 2) -> GroupPhoto:
    """The astronaut's head (a 200x200 cut, face in the middle) pasted at `sizes` on a plain wall, in a grid."""
    import cv2
    from skimage import data

    head = data.astronaut()[30:230, 125:325]
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = (200, 190, 170)
    rows = -(-len(sizes) // cols)
    centres = []
    for i, s in enumerate(sizes):
        r, c = divmod(i, cols)
        x0, y0 = int((c + 0.5) * width / cols) - s // 2, int((r + 0.5) * height / rows) - s // 2
        canvas[y0:y0 + s, x0:x0 + s] = cv2.resize(head, (s, s), interpolation=cv2.INTER_AREA)
        centres.append((x0 + 0.5 * s, y0 + 0.49 * s))  # the face sits at the middle of the cut
    return GroupPhoto(canvas, centres)


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_jpeg_bytes(astronaut_rgb) -> bytes:
    return encode(astronaut_rgb)


@pytest.fixture(scope="session")
def coffee_rgb() -> np.ndarray:
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="session")
def coffee_jpeg_bytes(coffee_rgb) -> bytes:
    return encode(coffee_rgb)


@pytest.fixture(scope="session")
def group_photo() -> GroupPhoto:
    return compose_faces([200, 180, 190, 210])
