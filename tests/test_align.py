"""align_face: 48x48 grey upright crops, robust to rotation and to the face's size in the photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from moodlens.engine.align import align_face, crop_transform, eye_angle
from moodlens.engine.detect import Detection, FaceDetector

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector("auto")


@pytest.fixture(scope="module")
def upright_crop(detector, astronaut_rgb) -> np.ndarray:
    return align_face(astronaut_rgb, detector.detect(astronaut_rgb)[0])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two crops at 12x12: the layout of the face, not a 1-pixel shift of an edge."""
    a, b = (cv2.resize(x, (12, 12), interpolation=cv2.INTER_AREA).astype(np.float64).ravel() for x in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


def fake(box, right_eye, left_eye) -> Detection:
    return Detection(box=box, score=0.9, keypoints=(right_eye, left_eye, (0, 0), (0, 0), (0, 0), (0, 0)))


def test_shape_and_type(upright_crop):
    assert upright_crop.shape == (48, 48) and upright_crop.dtype == np.uint8
    assert upright_crop.std() > 20  # a face, not a flat patch


def test_eye_angle_sign():
    assert eye_angle(fake((0, 0, 10, 10), (0, 0), (10, 0))) == pytest.approx(0)
    assert eye_angle(fake((0, 0, 10, 10), (0, 0), (10, 10))) == pytest.approx(45)  # left eye lower: clockwise tilt


def test_transform_levels_the_eyes_and_centres_the_box():
    d = fake((100, 100, 50, 50), (110, 110), (140, 130))
    m = crop_transform(d, 48, scale=1.2, shift_y=0.0)
    (rx, ry), (lx, ly), (cx, cy) = (m @ np.array([x, y, 1.0]) for x, y in ((110, 110), (140, 130), (125, 125)))
    assert ry == pytest.approx(ly) and rx < lx
    assert (cx, cy) == pytest.approx((24, 24))
    assert np.hypot(lx - rx, ly - ry) == pytest.approx(np.hypot(30, 20) * 48 / 60)  # 48 px per 1.2 box sides


@pytest.mark.parametrize("angle", [20, -20])
def test_rotated_face_comes_out_upright(detector, astronaut_rgb, upright_crop, angle):
    m = cv2.getRotationMatrix2D((256, 256), angle, 1.0)
    rotated = cv2.warpAffine(astronaut_rgb, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    d = detector.detect(rotated)[0]
    crop = align_face(rotated, d)
    unrotated = align_face(rotated, Detection(d.box, d.score, ((0, 0), (1, 0), *d.keypoints[2:])))
    assert similarity(crop, upright_crop) > 0.75
    assert similarity(crop, upright_crop) > similarity(unrotated, upright_crop) + 0.1


@pytest.mark.parametrize("zoom", [0.5, 3.0])
def test_same_crop_at_any_resolution(detector, astronaut_rgb, upright_crop, zoom):
    resized = cv2.resize(astronaut_rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA if zoom < 1 else
                         cv2.INTER_CUBIC)
    crop = align_face(resized, detector.detect(resized)[0])
    assert similarity(crop, upright_crop) > 0.95  # a 280-pixel face is averaged down, not aliased


def test_face_cut_by_the_edge(astronaut_rgb):
    crop = align_face(astronaut_rgb, fake((-30, 400, 120, 140), (0, 440), (40, 440)))
    assert crop.shape == (48, 48)
