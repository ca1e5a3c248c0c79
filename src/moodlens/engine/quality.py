"""Can a face be read? A verdict per face, so that one too small, blurred or turned says so.

Thresholds, measured on photos-dev's single faces (development set, the shipped detector and aligner):
- small: under 40 px (the face box in the photo's own pixels): the 48x48 crop is then upsampled, and detail
  that tells a frown from neutral is not there.
- blurred: the variance of the Laplacian of the 48x48 grey crop under 450. Sharp single faces measured 545 at
  the 1st percentile (median 1,791); the same photos blurred by a Gaussian of 1/40 of the face's width measured
  376 at the 99th percentile.
- profile: the nose tip more than half an eye-distance off the eyes' midpoint along the eye line. Mostly frontal
  single faces measured 0.38 at the 95th percentile, 0.55 at the 99th.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

QUALITIES = ("ok", "small", "blurred", "profile")
MIN_FACE_PX = 40.0
MIN_SHARPNESS = 450.0
MAX_NOSE_OFFSET = 0.5


def sharpness(crop48: np.ndarray) -> float:
    """Variance of the Laplacian of a grey face crop: low for a blurred face."""
    return float(cv2.Laplacian(crop48, cv2.CV_64F).var())


def nose_offset(keypoints: Sequence[tuple[float, float]]) -> float:
    """How far the nose tip sits off the eyes' midpoint along the eye line, in eye distances (0: frontal)."""
    right, left, nose = (np.asarray(k, np.float64) for k in keypoints[:3])
    eyes = left - right
    span = float(eyes @ eyes)
    return abs(float((nose - (right + left) / 2) @ eyes) / span) if span > 0 else 0.0


def face_quality(box_side: float, keypoints: Sequence[tuple[float, float]], crop48: np.ndarray) -> str:
    """"ok", or the first reason the face cannot be read well: "small", "blurred" or "profile"."""
    if box_side < MIN_FACE_PX:
        return "small"
    if sharpness(crop48) < MIN_SHARPNESS:
        return "blurred"
    if nose_offset(keypoints) > MAX_NOSE_OFFSET:
        return "profile"
    return "ok"
