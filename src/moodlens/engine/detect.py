"""detect stage: RGB image -> faces (box, score, six keypoints) with MediaPipe's BlazeFace models in LiteRT.

Two vendored models (see models/face_detection.md): short range, 128x128 input, for faces that fill a good part
of the frame (selfies, portraits, webcam); full range, 192x192, for smaller faces further away. Both are SSD
detectors: every anchor predicts a score, a box and 6 keypoints relative to its centre; decoding and the anchor
layout follow MediaPipe's `SsdAnchorsCalculator` and `TensorsToDetectionsCalculator` settings for each model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from moodlens.engine.errors import ModelError
from moodlens.engine.runtime import InterpreterPool, litert_interpreter, read_model

DETECTORS = ("auto", "short", "full", "yunet")
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
MIN_REFINE_CROP = 32  # px: a crop smaller than this is not worth a BlazeFace pass


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

    def shifted(self, dx: float, dy: float) -> Detection:
        """The same face in an image whose origin is (-dx, -dy) in this one's (a crop at dx, dy, seen whole)."""
        x, y, w, h = self.box
        return Detection((x + dx, y + dy, w, h), self.score, tuple((kx + dx, ky + dy) for kx, ky in self.keypoints))

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
        self._content = read_model(self.path, "face-detection model")  # in memory: see engine.runtime.read_model
        self._pool = InterpreterPool(self._load)  # load now: a broken model fails at start-up
        it, _, boxes_idx, _ = self._pool.peek()
        n = int(next(d for d in it.get_output_details() if d["index"] == boxes_idx)["shape"][1])
        if n != len(self.anchors):
            raise ModelError(f"{self.path}: {n} outputs but {len(self.anchors)} anchors; wrong model file?")

    def _load(self):
        try:
            it = litert_interpreter(self._content, self.num_threads)
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


class _YuNet:
    """OpenCV Zoo's YuNet (cv2.FaceDetectorYN, vendored ONNX file) over an image pyramid, as BlazeFace-style boxes.

    YuNet finds faces of about 10 to 300 pixels, so it runs at up to four sizes (longer side capped at 4096,
    1920, 640 and 160 px) and one NMS merges them. The passes above 1920 px exist only for large photos, where
    faces of 20-40 px are the ones left to find; they use `fine_min_score`, since YuNet scores such faces lower
    (on 4000x3000 canvases, 24 px faces: recall 0.65 at 0.75, 0.79 at 0.5; no false face more). Its boxes
    (brow to chin) become BlazeFace-like squares: side 0.84 of YuNet's longer side, centre 0.05 of it lower (the
    medians over 663 faces both detectors found in photos-dev), so the aligner, tuned on BlazeFace boxes against
    FER2013's framing, crops them alike. Its five landmarks are the keypoints: right eye, left eye, nose tip,
    right and left mouth corners (FaceDetector refines faces of 40 px and more with BlazeFace).
    """

    SIDES = (4096, 1920, 640, 160)
    FINE_FROM = 1920  # passes at more than this many pixels use fine_min_score
    SQUARE_SIDE, SQUARE_DROP = 0.84, 0.05
    VERIFY_UNDER = 40  # px: faces of the full-size pass scored under fine_min_score are verified up to this width
    VERIFY_CONTEXT, VERIFY_FACE = 4.0, 64  # ... in a crop of 4x their size, scaled so that they are 64 px wide

    def __init__(self, min_score: float, iou_threshold: float, fine_min_score: float = 0.5,
                 verify_from: float = 0.3, verified: float = 0.6):
        self.path = Path(str(resources.files("moodlens") / "models" / YUNET_FILE))
        self.min_score, self.iou_threshold, self.fine_min_score = min_score, iou_threshold, fine_min_score
        self.verify_from, self.verified = verify_from, verified
        # read now: each process builds its own net later (fork_safe=False), from these bytes, not the file
        self._content = np.frombuffer(read_model(self.path, "YuNet model"), np.uint8)
        self._pool = InterpreterPool(self._load, fork_safe=False, eager=False)

    def _load(self):
        try:
            return cv2.FaceDetectorYN.create("onnx", self._content, np.zeros(0, np.uint8), (320, 320), self.min_score,
                                             self.iou_threshold, 5000)
        except cv2.error as exc:
            raise ModelError(f"{self.path}: not a loadable YuNet model ({exc})") from exc

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        rows = []
        with self._net(fresh=max(h, w) > self.FINE_FROM) as net:
            for side in sorted({min(max(h, w), s) for s in self.SIDES}):
                scale = side / max(h, w)
                img = bgr if scale == 1 else cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                        interpolation=cv2.INTER_AREA)
                net.setInputSize((img.shape[1], img.shape[0]))
                fine = side > self.FINE_FROM
                net.setScoreThreshold(self.verify_from if fine else self.min_score)
                _, found = net.detect(img)
                if found is not None:
                    # on an image a pixel or two wide (a 16x20000 PNG scaled down), OpenCV 4.13's YuNet now and then
                    # gives rows of NaN or of no width: no face, and their crop would divide by zero
                    found = found[np.isfinite(found).all(axis=1) & (found[:, 2] > 0) & (found[:, 3] > 0)]
                if found is not None and len(found):
                    found = found[:, :15] / np.array([scale] * 14 + [1], np.float32)
                    rows.append(self._verify(net, bgr, found) if fine else found)
        if not rows:
            return []
        faces = np.concatenate(rows)
        keep = np.asarray(cv2.dnn.NMSBoxes(faces[:, :4].tolist(), faces[:, 14].tolist(), 0.0, self.iou_threshold),
                          np.int64).reshape(-1)
        return sorted((self._square(f) for f in faces[keep]), key=lambda d: -d.score)

    @contextmanager
    def _net(self, fresh: bool):
        """A net from the pool, or with `fresh` one built for this call and dropped after it: a pass at up to
        4096 px leaves about 1.1 GB allocated inside the net for as long as it lives (its buffers fit the
        largest input it ever had), which made every server worker that searched a large photo restart over
        its memory limit. Building one from the bytes in memory costs a few ms against the seconds of that search."""
        if not fresh:
            with self._pool.borrow() as net:
                yield net
            return
        yield self._load()  # not kept anywhere: freed when the search ends

    def _verify(self, net, bgr: np.ndarray, found: np.ndarray) -> np.ndarray:
        """The full-size pass's faces: those scored `fine_min_score` or more, and the smaller ones scored from
        `verify_from` that YuNet, looking again at them enlarged, scores `verified` or more (with that score).

        On 4000x3000 canvases YuNet scores many real 20-30 px faces under 0.5 at their own size (24 px: 0.79
        found at 0.5), and as many specks of texture; enlarged to 64 px the faces score 0.6 and more, the specks
        do not (24 px: 0.92 found, no more false faces). Only the few low-scored small boxes pay for the look.
        """
        keep = found[:, 14] >= self.fine_min_score
        for i in np.flatnonzero(~keep & (np.maximum(found[:, 2], found[:, 3]) < self.VERIFY_UNDER)):
            score = self.rescore(net, bgr, found[i, :4], self.VERIFY_CONTEXT, self.VERIFY_FACE)
            if score >= self.verified:
                found[i, 14], keep[i] = score, True
        return found[keep]

    def rescore(self, net, bgr: np.ndarray, box: np.ndarray, context: float, face_px: float) -> float:
        """YuNet's best score for a face overlapping `box` (x, y, w, h; IoU >= 0.3) in a crop `context` times
        the box's size around it, scaled so the box is `face_px` wide; 0 when it finds none there. `net` is a
        borrowed detector (its input size changes)."""
        x, y, w, h = (float(v) for v in box)
        side = max(w, h)
        cx, cy, half = x + w / 2, y + h / 2, context * side / 2
        x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
        crop = bgr[y0:int(min(cy + half, bgr.shape[0])), x0:int(min(cx + half, bgr.shape[1]))]
        k = face_px / max(side, 1.0)
        if min(crop.shape[:2]) * k < 16:
            return 0.0
        img = cv2.resize(crop, (max(1, round(crop.shape[1] * k)), max(1, round(crop.shape[0] * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        net.setInputSize((img.shape[1], img.shape[0]))
        net.setScoreThreshold(0.05)
        _, found = net.detect(img)
        if found is None:
            return 0.0
        boxes = found[:, :4] / k + np.array([x0, y0, 0, 0], np.float32)
        near = iou(boxes, np.array([[x, y, w, h]]))[:, 0] >= 0.3
        return float(found[near, 14].max()) if near.any() else 0.0

    def confirm(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> float:
        """`rescore` for a face box of an RGB image: a crop twice its size, the face at 80 px. On photos-dev the
        faces `FaceDetector` rechecks score 0.82 and more (3 single faces, 26 group faces), the false ones of its
        no-face photos 0.08 (masks), 0.28 (a dog) and 0.56 (a cat)."""
        x, y, w, h = box
        side = max(w, h)
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = int(max(cx - side, 0)), int(max(cy - side, 0))
        crop = rgb[y0:int(min(cy + side, rgb.shape[0])), x0:int(min(cx + side, rgb.shape[1]))]
        if crop.size == 0:
            return 0.0
        with self._pool.borrow() as net:  # only the crop is converted to BGR, not the whole photo
            return self.rescore(net, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), np.array([x - x0, y - y0, w, h]),
                                2.0, 80)

    def _square(self, f: np.ndarray) -> Detection:
        x, y, bw, bh = (float(v) for v in f[:4])
        longer = max(bw, bh)
        side = self.SQUARE_SIDE * longer
        cx, cy = x + bw / 2, y + bh / 2 + self.SQUARE_DROP * longer
        keypoints = tuple((float(f[4 + 2 * i]), float(f[5 + 2 * i])) for i in range(5))
        return Detection((cx - side / 2, cy - side / 2, side, side), float(f[14]), keypoints)


class FaceDetector:
    """Face detection: MediaPipe BlazeFace (LiteRT) and OpenCV Zoo's YuNet (OpenCV DNN).

    `model`: "short" (BlazeFace short range: faces of more than ~1/5 of the picture's longer side: portraits,
    selfies, webcams), "full" (BlazeFace full range at 192x192: smaller faces, further away), "yunet" (YuNet
    over an image pyramid: faces from about 10 px up, groups and crowds), or "auto": short range first, and
    when it cannot vouch for the picture (no face; a face scored under `trust`; a face under `small_face` of the
    longer side, where there may be more, smaller ones; or a picture of `full_range_from` px or more) YuNet as
    well, keeping the confident short-range faces it does not overlap. Where YuNet ran, the two detectors must
    agree: a short-range face YuNet did not find, and a YuNet face BlazeFace confirmed but YuNet scored under
    `recheck_below`, stay only if YuNet, shown the face alone (`_YuNet.confirm`), scores it `recheck` or more.
    `verify_from`: the lowest score of a small face of the full-size pass (photos over 1920 px) that YuNet looks
    at again, enlarged (0.5: none; `recheck=0` turns the recheck off). Measured on photos-dev (36 group photos,
    28 without a face, 194 single faces): group counts within max(1, 10%) on 34 (BlazeFace-only `auto`: 19),
    no-face photos clean on 27 (24 without the recheck: the masks, the cat and the dog it now leaves out; the
    monkey both detectors take for a face), every single face found (194).
    `detect(rgb, large)`: `large` (optional) gives the same picture at full resolution for YuNet's small faces.
    Models load once; `detect` is thread-safe (interpreters are lent one caller at a time).
    """

    def __init__(self, model: str = "auto", min_score: float = 0.5, iou_threshold: float = 0.3,
                 num_threads: int = 1, full_range_from: int = 1280, small_face: float = 0.2,
                 trust: float = 0.75, yunet_min_score: float = 0.75, confirm_below: float = 0.9,
                 recheck: float = 0.7, recheck_below: float = 0.9, verify_from: float = 0.3):
        if model not in DETECTORS:
            raise ValueError(f"unknown detector {model!r}; choose one of {DETECTORS}")
        self.model = model
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.full_range_from = full_range_from
        self.small_face = small_face
        self.trust = trust
        self.confirm_below = confirm_below
        self.recheck, self.recheck_below = recheck, recheck_below
        names = ("short",) if model in ("auto", "yunet") else (model,)  # short range refines YuNet's faces
        self._models = {name: _Model(name, num_threads) for name in names}
        self._yunet = _YuNet(yunet_min_score, iou_threshold, verify_from=verify_from) \
            if model in ("auto", "yunet") else None

    def _run(self, name: str, rgb: np.ndarray) -> list[Detection]:
        return weighted_nms(*self._models[name].candidates(rgb, self.min_score), self.iou_threshold)

    def _run_yunet(self, rgb: np.ndarray, large: Callable[[], np.ndarray] | None) -> list[Detection]:
        full = large() if large is not None else rgb
        scale = rgb.shape[1] / full.shape[1]
        refined = (self._refined(full, d) for d in self._yunet.detect(full))
        return [d.scaled(scale) for d in refined if d is not None]

    def _refined(self, rgb: np.ndarray, d: Detection, min_side: float = 40.0) -> Detection | None:
        """A YuNet face of `min_side` px or more, re-detected by BlazeFace short range in a crop around it.

        YuNet's landmarks barely follow a tilted head (the astronaut turned by 20 degrees: its eye line moved 3,
        BlazeFace's 20), and the aligner turns the face upright by that line. In a crop twice the face's size
        the face fills what short range sees best; its box and keypoints replace YuNet's when they agree. A face
        short range does not confirm is kept only if YuNet is sure of it (`confirm_below`); smaller faces are
        YuNet's alone.
        """
        x, y, w, _ = d.box
        if w < min_side:
            return d
        cx, cy, half = x + w / 2, y + w / 2, w
        x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
        crop = rgb[y0:int(min(cy + half, rgb.shape[0])), x0:int(min(cx + half, rgb.shape[1]))]
        if min(crop.shape[:2]) < MIN_REFINE_CROP:
            return d
        local = [c.shifted(x0, y0) for c in self._run("short", crop)]
        overlap = iou(np.array([c.box for c in local]), np.array([d.box]))[:, 0] if local else np.zeros(1)
        best = int(overlap.argmax())
        if overlap[best] < 0.5:
            return d if d.score >= self.confirm_below else None
        if self.recheck and d.score < self.recheck_below and self._yunet.confirm(rgb, d.box) < self.recheck:
            return None
        return Detection(local[best].box, d.score, local[best].keypoints)

    def detect(self, rgb: np.ndarray, large: Callable[[], np.ndarray] | None = None) -> list[Detection]:
        """Faces in an RGB uint8 image (H, W, 3), in its pixels, best score first."""
        if self.model == "yunet":
            return self._run_yunet(rgb, large)
        if self.model != "auto":
            return self._run(self.model, rgb)
        longer = max(rgb.shape[:2])
        short = self._run("short", rgb)
        if short and longer < self.full_range_from and min(d.score for d in short) >= self.trust and \
                min(max(d.box[2], d.box[3]) for d in short) >= self.small_face * longer:
            return short
        found = self._run_yunet(rgb, large)
        kept = [d for d in short if d.score >= self.trust]
        if kept and found:
            overlap = iou(np.array([d.box for d in kept]), np.array([d.box for d in found])).max(axis=1)
            kept = [d for d, o in zip(kept, overlap, strict=True) if o <= self.iou_threshold]
        if self.recheck:
            kept = [d for d in kept if self._yunet.confirm(rgb, d.box) >= self.recheck]
        return sorted(found + kept, key=lambda d: -d.score)
