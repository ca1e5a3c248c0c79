"""The engine behind every front end: decode -> detect -> align -> classify (-> explain), one `Analyzer`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moodlens.engine.align import CROP_SCALE, FACE_SIZE, align_crop
from moodlens.engine.classify import FER_CROP, CropSpec, ExpressionClassifier
from moodlens.engine.decode import MAX_BYTES, MAX_PIXELS, ImageInput, Picture, decode_picture
from moodlens.engine.detect import Detection, FaceDetector
from moodlens.engine.errors import AnalysisTimeout
from moodlens.engine.explain import occlusion_heatmaps, predict_in_passes
from moodlens.engine.quality import face_quality
from moodlens.engine.result import AnalysisResult, Face, FaceBox

DEFAULT_UNCERTAIN_BELOW = 0.5
# Large JPEGs are decoded at a reduced size whose longer side stays at least this: more than the detectors'
# largest input (192) needs. A face too small there for a sharp 48x48 crop is cropped from the full image.
WORK_SIDE = 320
#: Faces of one image that get a heatmap, best detector score first; the others are marked "face-limit" (each
#: costs 49 classifier runs, ~30 ms of one core; a 54-face mosaic took 12.7 s and over 1 GB before the cap).
MAX_EXPLAIN_FACES = 16
# A picture with a side over this many pixels is searched for small faces at up to 4096 px (YuNet's finer passes,
# engine.detect), about 66 bytes a pixel: 1.1 GB at 4096x4096, kept by the net afterwards. One such search at a
# time in a process, so two threads of a server worker do not need twice that at once.
LARGE_SIDE = 1920
_LARGE_SEARCH = threading.Lock()


@dataclass(frozen=True)
class Expression:
    """The expression of one already-cropped face (see `Analyzer.analyze_faces`)."""

    expression: str
    scores: dict[str, float]
    uncertain: bool
    heatmap: list[list[float]] | None = None


class Analyzer:
    """Finds the faces in an image and reads each one's expression.

    Models (face detector and expression classifier) load once, here. `analyze` is thread-safe: LiteRT
    interpreters are kept per thread, and nothing else is mutated after construction.

    `classes`: "4" or "7" (the shipped model), ignored for the class names when `model_path` is given (its card
    or output size decides). `detector`: "auto", "short", "full" or "yunet" (see FaceDetector). `min_face_score`: the
    detector's confidence threshold. `uncertain_below`: a face whose top probability is below this is marked
    uncertain (default: the model card's "uncertain_below", else 0.5). `max_bytes`/`max_pixels`: input limits.
    `max_explain_faces`: with `explain`, the most faces of one image that get a heatmap (None: every face).
    `time_limit`: seconds one `analyze` may take; past it, AnalysisTimeout at the next stage boundary or explain
    pass (None: no limit). Decoding itself is bounded by the decoder's limits, not interrupted.
    """

    def __init__(
        self,
        classes: str | int = "4",
        model_path: str | Path | None = None,
        detector: str = "auto",
        min_face_score: float = 0.5,
        uncertain_below: float | None = None,
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
        num_threads: int = 1,
        max_explain_faces: int | None = MAX_EXPLAIN_FACES,
        time_limit: float | None = None,
    ):
        self.classifier = ExpressionClassifier(model_path, classes=classes, num_threads=num_threads)
        self.detector = FaceDetector(detector, min_score=min_face_score, num_threads=num_threads)
        self.min_face_score = min_face_score
        self.classes: tuple[str, ...] = tuple(self.classifier.classes)
        self.model_card: dict = dict(self.classifier.card)
        if uncertain_below is None:
            uncertain_below = float(self.model_card.get("uncertain_below", DEFAULT_UNCERTAIN_BELOW))
        self.uncertain_below = uncertain_below
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_explain_faces = max_explain_faces
        self.time_limit = time_limit

    def analyze(self, data: ImageInput, explain: bool = False, min_face_score: float | None = None,
                time_limit: float | None = None) -> AnalysisResult:
        """All faces in `data` (a path, bytes, a binary file, a PIL image or an RGB array), best detector score
        first; `min_face_score` (default: the analyzer's) leaves out faces the detector scored lower (it can
        raise the analyzer's floor, not lower it: candidates under that are never decoded). `time_limit`
        (default: the analyzer's) bounds the seconds it may take (AnalysisTimeout).

        Raises the typed errors of `moodlens.engine.decode.decode_image` for inputs that are not usable images.
        """
        floor = self.min_face_score if min_face_score is None else max(min_face_score, self.min_face_score)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        check = _deadline(t0, self.time_limit if time_limit is None else time_limit)
        picture = decode_picture(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, work_side=WORK_SIDE)
        t1 = time.perf_counter()
        check()
        found = [d for d in self._detect(picture) if d.score >= floor]
        t2 = time.perf_counter()
        check()
        crops = np.stack([self._crop(picture, d) for d in found]) if found else \
            np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
        model_input = self._model_input(picture, found, crops)
        detections = [d.scaled(1 / picture.scale) for d in found]  # in full-size image pixels
        width, height = picture.width, picture.height
        del picture  # a large image's pixels (120 MB at 40 Mpx) need not live while faces are classified
        t3 = time.perf_counter()
        probs = predict_in_passes(self.classifier.predict, model_input)  # the image's faces, a few batches at most
        t4 = time.perf_counter()
        timings.update(decode=_ms(t0, t1), detect=_ms(t1, t2), align=_ms(t2, t3), classify=_ms(t3, t4))
        heatmaps: list = []
        if explain:
            n = len(crops) if self.max_explain_faces is None else min(len(crops), self.max_explain_faces)
            heatmaps = occlusion_heatmaps(self.classifier.predict, [x[:n] for x in model_input], probs[:n],
                                          check=check)
            timings["explain"] = _ms(t4, time.perf_counter())
        faces = [
            self._face(d, p, heatmaps[i] if i < len(heatmaps) else None, width, height, crops[i],
                       skipped="face-limit" if explain and i >= len(heatmaps) else None)
            for i, (d, p) in enumerate(zip(detections, probs, strict=True))
        ]
        timings["total"] = _ms(t0, time.perf_counter())
        return AnalysisResult(width=width, height=height, faces=faces, timings_ms=timings, classes=self.classes)

    def analyze_faces(self, faces48: np.ndarray, explain: bool = False) -> list[Expression]:
        """Expressions of faces already aligned and cropped like the training data: (N, 48, 48) grey 0..255."""
        faces48 = np.asarray(faces48).reshape(-1, FACE_SIZE, FACE_SIZE)
        probs = predict_in_passes(self.classifier.predict, faces48)
        heatmaps = occlusion_heatmaps(self.classifier.predict, faces48, probs) if explain else [None] * len(probs)
        out = []
        for p, heat in zip(probs, heatmaps, strict=True):
            label, scores, uncertain = self._read(p)
            out.append(Expression(label, scores, uncertain, heat))
        return out

    def _detect(self, picture: Picture) -> list[Detection]:
        """The detector's faces; its search of a large picture at full size waits for any other (LARGE_SIDE)."""
        if max(picture.width, picture.height) <= LARGE_SIDE:
            return self.detector.detect(picture.rgb, picture.full if picture.scale < 1 else None)
        held = False

        def full() -> np.ndarray:  # the detector asks for the full-size picture only for that search
            nonlocal held
            if not held:
                _LARGE_SEARCH.acquire()
                held = True
            return picture.full()

        try:
            return self.detector.detect(picture.rgb, full)
        finally:
            if held:
                _LARGE_SEARCH.release()

    def _model_input(self, picture: Picture, found: list[Detection], crops48: np.ndarray) -> list[np.ndarray]:
        """One array of crops per input of the model (classify.CropSpec), the 48x48 grey ones already cut."""
        return [crops48 if spec == FER_CROP else
                np.stack([self._crop(picture, d, spec) for d in found]) if found else
                np.zeros((0, spec.size, spec.size, spec.channels), np.uint8) for spec in self.classifier.inputs]

    @staticmethod
    def _crop(picture: Picture, d: Detection, spec: CropSpec = FER_CROP) -> np.ndarray:
        """The face's crop from the decoded pixels, or from the full image where it is too small in them."""
        # at least twice the 48x48 crop's side in the decoded pixels: the aligner still averages k x k blocks, so
        # that crop is as sharp as one from the full image (on photos-dev one photo of 140, an uncertain face cut
        # by the edge, reads differently either way: 0.31 happy vs 0.30 sad). A larger crop (face-api's 112 RGB)
        # follows the same rule rather than twice its own side: decoding the full image again for it cost 5.9 ms
        # of a 17.5 ms one-face 640x480 photo, and face-api reads these faces no worse (photos-dev 0.943 either
        # way; re-encoded at 640 px 0.943 against 0.936, at 1024 px 0.936 against 0.929)
        if max(d.box[2], d.box[3]) * CROP_SCALE >= 2 * FACE_SIZE or picture.scale == 1:
            return align_crop(picture.rgb, d, spec.size, spec.grey)
        return align_crop(picture.full(), d.scaled(1 / picture.scale), spec.size, spec.grey)

    def _read(self, p: np.ndarray) -> tuple[str, dict[str, float], bool]:
        scores = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
        top = int(np.argmax(p))
        return self.classes[top], scores, float(p[top]) < self.uncertain_below

    def _face(self, d: Detection, p: np.ndarray, heatmap, width: int, height: int, crop: np.ndarray,
              skipped: str | None = None) -> Face:
        label, scores, uncertain = self._read(p)
        # report the part of the box inside the image; the unclipped box (faces cut by the edge) is only
        # needed for the crop, which was taken already
        x, y, w, h = d.box
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        return Face(
            box=FaceBox(x0, y0, x1 - x0, y1 - y0),
            score=d.score,
            keypoints=list(d.keypoints),
            expression=label,
            scores=scores,
            uncertain=uncertain,
            heatmap=heatmap,
            heatmap_skipped=skipped,
            quality=face_quality(max(w, h), d.keypoints, crop),
        )


def _deadline(start: float, seconds: float | None):
    """A check() that raises AnalysisTimeout once `seconds` have passed since `start` (perf_counter)."""
    def check() -> None:
        if seconds is not None and time.perf_counter() - start > seconds:
            raise AnalysisTimeout(seconds)
    return check


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0
