"""align stage: a detected face -> the 48x48 grayscale crop the expression model expects.

FER2013 faces (the training data) are upright, roughly centred, and fill the frame from the top of the forehead
to the chin. We rotate by the eye line, crop a square around the detector's box, scaled by CROP_SCALE and
shifted by CROP_SHIFT_Y, both chosen by comparing our crops with FER2013's side by side (docs/engine.md).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from moodlens.engine.detect import Detection

FACE_SIZE = 48  # side of the grey crop the expression models take (FER2013's size)

CROP_SCALE = 1.2  # crop side / detector box side: the whole face, chin included, little background
# crop centre below the box centre, in box sides: 0 because BlazeFace boxes already sit like FER2013 faces
CROP_SHIFT_Y = 0.0


def eye_angle(detection: Detection) -> float:
    """Angle (degrees, counter-clockwise in image coordinates) of the line from the right eye to the left eye.

    The person's right eye is keypoint 0 and appears on the image's left, so an upright face gives ~0.
    """
    (rx, ry), (lx, ly) = detection.keypoints[0], detection.keypoints[1]
    return math.degrees(math.atan2(ly - ry, lx - rx))


def crop_transform(detection: Detection, out_size: int, scale: float = CROP_SCALE,
                   shift_y: float = CROP_SHIFT_Y) -> np.ndarray:
    """The 2x3 affine matrix mapping image pixels to an `out_size` square crop of the face, upright."""
    x, y, w, h = detection.box
    side = max(w, h)
    angle = eye_angle(detection)
    # the crop centre: the box centre, moved along the face's own vertical axis (it may be tilted)
    rad = math.radians(angle)
    down = np.array([-math.sin(rad), math.cos(rad)])  # the face's "down" direction in the image
    centre = np.array([x + w / 2, y + h / 2]) + down * shift_y * side
    zoom = out_size / (side * scale)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, zoom)
    m[:, 2] += np.array([out_size / 2, out_size / 2]) - centre  # the centre lands in the middle of the crop
    return m


def align_face(rgb: np.ndarray, detection: Detection, scale: float = CROP_SCALE,
               shift_y: float = CROP_SHIFT_Y) -> np.ndarray:
    """The face of `detection` in the RGB image as an upright 48x48 uint8 grayscale crop (see align_crop)."""
    return align_crop(rgb, detection, FACE_SIZE, grey=True, scale=scale, shift_y=shift_y)


def align_crop(rgb: np.ndarray, detection: Detection, size: int, grey: bool, scale: float = CROP_SCALE,
               shift_y: float = CROP_SHIFT_Y) -> np.ndarray:
    """The face of `detection` as an upright `size` x `size` uint8 crop, grey (H, W) or RGB (H, W, 3).

    One interpolating resampling: a single warpAffine (rotate + crop + scale) to a square whose side is an
    integer multiple k of `size` at about the face's own resolution, then an exact k x k block average down to
    `size` (cv2.INTER_AREA with an integer factor). warpAffine cannot average (it treats INTER_AREA as
    bilinear), so warping a 300-pixel face straight to 48 would alias; the block average is the anti-aliasing.
    """
    side = max(detection.box[2], detection.box[3]) * scale
    k = max(1, min(16, int(side // size)))
    m = crop_transform(detection, size * k, scale, shift_y)
    # warp only colour pixels we keep (the output square), then go grey: cheaper than greying a 12 MP photo
    crop = cv2.warpAffine(rgb, m, (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if grey:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if k > 1:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop
