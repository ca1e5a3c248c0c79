"""detect stage: RGB image -> faces (box, score, six keypoints) with MediaPipe's BlazeFace models in LiteRT.

Two vendored models (see models/face_detection.md): short range, 128x128 input, for faces that fill a good part
of the frame (selfies, portraits, webcam); full range, 192x192, for smaller faces further away. Both are SSD
detectors: every anchor predicts a score, a box and 6 keypoints relative to its centre; decoding and the anchor
layout follow MediaPipe's `SsdAnchorsCalculator` and `TensorsToDetectionsCalculator` settings for each model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from moodlens.engine.errors import ModelError
from moodlens.engine.runtime import InterpreterPool

DETECTORS = ("auto", "short", "full")


@dataclass(frozen=True)
class ModelSpec:
    """One BlazeFace model: file, square input size and MediaPipe's anchor options for it."""

    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 1 aspect ratio (1.0) + 1 when interpolated_scale_aspect_ratio > 0


# mediapipe/modules/face_detection/face_detection_short_range.pbtxt and face_detection_full_range.pbtxt
SPECS = {
    "short": ModelSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    "full": ModelSpec("face_detection_full_range.tflite", 192, (4,), 1),
}
RAW_SCORE_CLIP = 100.0  # MediaPipe's score_clipping_thresh
NUM_KEYPOINTS = 6


@dataclass(frozen=True)
class Detection:
    """A face: box (x, y, w, h) in image pixels (may reach past the image edge), detector score 0..1, and
    BlazeFace's six keypoints (x, y) in image pixels: right eye, left eye, nose tip, mouth, right ear, left ear
    (right/left of the person)."""

    box: tuple[float, float, float, float]
    score: float
    keypoints: tuple[tuple[float, float], ...]

    def scaled(self, factor: float) -> Detection:
        """The same face in an image `factor` times as large."""
        if factor == 1:
            return self
        return Detection(tuple(v * factor for v in self.box), self.score,
                         tuple((x * factor, y * factor) for x, y in self.keypoints))


@cache
def ssd_anchors(size: int, strides: tuple[int, ...], anchors_per_layer: int) -> np.ndarray:
    """Anchor centres (A, 2) as x, y in 0..1, in MediaPipe's order.

    With `fixed_anchor_size` every anchor is 1x1, so only centres matter. Consecutive layers with the same
    stride share one feature map: each cell gets `anchors_per_layer` anchors per such layer, row by row.
    """
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        cells = int(np.ceil(size / strides[i]))
        per_cell = anchors_per_layer * (j - i)
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(centres, per_cell, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def model_path(name: str) -> Path:
    """Path of a vendored BlazeFace model ("short" or "full")."""
    return Path(str(resources.files("moodlens") / "models" / SPECS[name].file))


class _Model:
    """One BlazeFace model: interpreters lent one caller at a time (engine.runtime), shared anchors."""

    def __init__(self, name: str, num_threads: int):
        self.spec = SPECS[name]
        self.path = model_path(name)
        self.num_threads = num_threads
        self.anchors = ssd_anchors(self.spec.size, self.spec.strides, self.spec.anchors_per_layer)
        self._pool = InterpreterPool(self._load)  # load now: a broken model fails at start-up
        it, _, boxes_idx, _ = self._pool.peek()
        n = int(next(d for d in it.get_output_details() if d["index"] == boxes_idx)["shape"][1])
        if n != len(self.anchors):
            raise ModelError(f"{self.path}: {n} outputs but {len(self.anchors)} anchors; wrong model file?")

    def _load(self):
        from ai_edge_litert.interpreter import Interpreter

        try:
            it = Interpreter(model_path=str(self.path), num_threads=self.num_threads)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: not a loadable face-detection model ({exc})") from exc
        outs = it.get_output_details()
        # regressors have 16 values per anchor, classificators 1; pick by shape, not by (model-specific) name
        boxes = next(d["index"] for d in outs if d["shape"][-1] == 4 + 2 * NUM_KEYPOINTS)
        scores = next(d["index"] for d in outs if d["shape"][-1] == 1)
        return it, it.get_input_details()[0]["index"], boxes, scores

    def candidates(self, rgb: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (K, 4) x, y, w, h, scores (K,) and keypoints (K, 6, 2), in image pixels, for every anchor
        scoring at least `min_score` (before non-maximum suppression)."""
        size = self.spec.size
        tensor, scale, pad = letterbox(rgb, size)
        with self._pool.borrow() as (it, inp, boxes_idx, scores_idx):
            it.set_tensor(inp, tensor)
            it.invoke()
            raw_scores = it.get_tensor(scores_idx)[0, :, 0].copy()
            raw_boxes = it.get_tensor(boxes_idx)[0].copy()
        # compare logits, not probabilities: cheaper, and no overflow in exp for large negative logits
        logit = np.log(min_score / (1 - min_score)) if 0 < min_score < 1 else (-np.inf if min_score <= 0 else np.inf)
        keep = np.flatnonzero(raw_scores >= logit)
        if len(keep) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32)
        raw = raw_boxes[keep].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores[keep].astype(np.float64), -RAW_SCORE_CLIP, RAW_SCORE_CLIP)))
        anchors = self.anchors[keep].astype(np.float64)
        # offsets are in input pixels relative to the anchor centre (anchor size 1, scale = input size)
        centre = raw[:, 0:2] / size + anchors
        wh = raw[:, 2:4] / size
        kps = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / size + anchors[:, None, :]
        # normalised square -> padded input pixels -> original image pixels
        centre = (centre * size - pad) / scale
        wh = wh * size / scale
        kps = (kps * size - pad) / scale
        boxes = np.concatenate([centre - wh / 2, wh], axis=1)
        return boxes.astype(np.float32), scores.astype(np.float32), kps.astype(np.float32)


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image scaled to fit `size` x `size` keeping its aspect, centred on black, as the model's input
    (1, size, size, 3) float32 in -1..1; with the scale (x, y) and the padding (x, y) that map input pixels
    back to image pixels: image = (input - pad) / scale."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    # INTER_AREA averages when shrinking (no aliasing from large photos); LINEAR for the rare upscale
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (nw, nh), interpolation=interp)
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = small
    tensor = (canvas.astype(np.float32) * (2.0 / 255.0) - 1.0)[None]
    # per-axis scale: the rounded size differs from the exact aspect by up to half a pixel
    return tensor, np.array([nw / w, nh / h]), np.array([pad_x, pad_y], np.float64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray,
                 iou_threshold: float) -> list[Detection]:
    """Non-maximum suppression, MediaPipe's WEIGHTED flavour.

    cv2.dnn.NMSBoxes picks the faces; each one's box and keypoints are then the score-weighted mean of every
    candidate overlapping it by more than `iou_threshold`. BlazeFace fires on many neighbouring anchors per
    face; averaging them (as MediaPipe does) gives steadier boxes and keypoints than keeping the single best
    anchor, which matters for the eye line the aligner rotates by and for jitter between video frames.
    """
    if len(boxes) == 0:
        return []
    picked = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.0, iou_threshold)
    picked = np.asarray(picked, dtype=np.int64).reshape(-1)
    ious = iou(boxes[picked], boxes)
    out = []
    for row, i in zip(ious, picked, strict=True):
        members = row > iou_threshold
        members[i] = True
        weights = scores[members].astype(np.float64)
        weights /= weights.sum()
        box = (boxes[members] * weights[:, None]).sum(axis=0)
        kps = (keypoints[members] * weights[:, None, None]).sum(axis=0)
        out.append(Detection(
            box=tuple(float(v) for v in box),
            score=float(scores[i]),
            keypoints=tuple((float(x), float(y)) for x, y in kps),
        ))
    return sorted(out, key=lambda d: -d.score)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (M, 4) with every box in `b` (N, 4), boxes as x, y, w, h."""
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


class FaceDetector:
    """BlazeFace face detector.

    `model`: "short" (faces of more than ~1/5 of the picture's longer side: portraits, selfies, webcams),
    "full" (smaller faces, further away) or "auto": short range first, then full range as well when short range
    finds nothing, finds only faces smaller than `small_face` of the longer side (where there are small faces
    there may be smaller ones it cannot see), or the picture's longer side is at least `full_range_from` pixels.
    Short-range faces are kept as they are; full range adds the faces that overlap none of them (the two models
    draw boxes slightly differently, so a face keeps one model's geometry rather than an average of both).
    Models load once; `detect` is thread-safe (one interpreter per model per thread).
    """

    def __init__(self, model: str = "auto", min_score: float = 0.5, iou_threshold: float = 0.3,
                 num_threads: int = 1, full_range_from: int = 1280, small_face: float = 0.2):
        if model not in DETECTORS:
            raise ValueError(f"unknown detector {model!r}; choose one of {DETECTORS}")
        self.model = model
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.full_range_from = full_range_from
        self.small_face = small_face
        names = ("short", "full") if model == "auto" else (model,)
        self._models = {name: _Model(name, num_threads) for name in names}

    def _run(self, name: str, rgb: np.ndarray) -> list[Detection]:
        return weighted_nms(*self._models[name].candidates(rgb, self.min_score), self.iou_threshold)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image (H, W, 3), best score first."""
        if self.model != "auto":
            return self._run(self.model, rgb)
        longer = max(rgb.shape[:2])
        short = self._run("short", rgb)
        if short and longer < self.full_range_from and \
                min(max(d.box[2], d.box[3]) for d in short) >= self.small_face * longer:
            return short
        full = self._run("full", rgb)
        if short and full:
            overlap = iou(np.array([d.box for d in full]), np.array([d.box for d in short])).max(axis=1)
            full = [d for d, o in zip(full, overlap, strict=True) if o <= self.iou_threshold]
        return sorted(short + full, key=lambda d: -d.score)
