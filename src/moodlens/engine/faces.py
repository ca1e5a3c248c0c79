"""Face crops from image files, for training on image folders (`moodlens.training.data.load_image_folder`).

Photos go through the same decode -> detect -> align code as the analyzer, so a model trained on folders sees
faces cropped exactly as it will at run time.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from moodlens.engine.align import FACE_SIZE, align_face
from moodlens.engine.decode import decode_image
from moodlens.engine.detect import FaceDetector
from moodlens.engine.errors import ImageError

log = logging.getLogger(__name__)

_detector: FaceDetector | None = None
_lock = threading.Lock()


def shared_detector() -> FaceDetector:
    """This process's face detector ("auto"), built on first use."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                _detector = FaceDetector("auto")
    return _detector


def face_crops(rgb: np.ndarray) -> list[np.ndarray]:
    """Aligned 48x48 uint8 grey crops of every face in a decoded RGB image: the app's detect -> align."""
    return [align_face(rgb, d) for d in shared_detector().detect(rgb)]


def face_crops_from_file(path: str | Path, detect_faces: bool = True) -> list[np.ndarray]:
    """48x48 uint8 grey crops from one image file: every detected face, or (without `detect_faces`) the
    whole image taken as a face crop and resized. An unreadable file gives [] and a logged warning."""
    try:
        rgb = decode_image(path)
    except (ImageError, OSError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return []
    if not detect_faces:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        interp = cv2.INTER_AREA if min(grey.shape) >= FACE_SIZE else cv2.INTER_LINEAR
        return [cv2.resize(grey, (FACE_SIZE, FACE_SIZE), interpolation=interp)]
    return face_crops(rgb)
