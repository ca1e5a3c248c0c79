"""classify stage: 48x48 grayscale faces -> calibrated expression probabilities, in LiteRT.

The shipped models live in `moodlens/models/` as `expression-<classes>.tflite` with a model card
`expression-<classes>.json` beside each (classes, input, temperature, metrics).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from moodlens.engine.align import FACE_SIZE
from moodlens.engine.errors import ModelError
from moodlens.engine.runtime import InterpreterPool, litert_interpreter, read_model

# Class names of the shipped models, by class set. "7" is FER2013's emotion-code order (the training data's);
# "4" the four expressions the default model reads.
CLASSES: dict[str, tuple[str, ...]] = {
    "4": ("angry", "happy", "neutral", "sad"),
    "7": ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
}


def shipped_model_path(classes: str | int = "4") -> Path:
    """Path of the shipped `classes`-class model file."""
    return Path(str(resources.files("moodlens") / "models" / f"expression-{classes}.tflite"))


class ExpressionClassifier:
    """A LiteRT expression model: `predict(faces)` -> (N, C) probabilities, rows summing to 1.

    Loaded once; `predict` is thread-safe (interpreters are lent one caller at a time, see engine.runtime).
    Faces are (N, 48, 48) uint8 or float grayscale 0..255, already aligned and cropped like the training data.
    """

    def __init__(self, model_path: str | Path | None = None, classes: str | int = "4", num_threads: int = 1):
        if model_path is None and str(classes) not in CLASSES:
            raise ValueError(f"classes must be one of {sorted(CLASSES)} (the shipped models), not {classes!r}")
        self.path = Path(model_path) if model_path else shipped_model_path(classes)
        self.card = self._read_card()
        self.num_threads = num_threads
        self._content: bytes | None = None  # the model file's bytes, read once by the first _load
        self._pool = InterpreterPool(self._load)  # fails at start-up, not on the first request
        interpreter = self._pool.peek().interpreter
        inp, out = interpreter.get_input_details(), interpreter.get_output_details()
        in_shape, out_shape = [int(s) for s in inp[0]["shape"]], [int(s) for s in out[0]["shape"]]
        if len(inp) != 1 or in_shape[1:] != [FACE_SIZE, FACE_SIZE, 1] or inp[0]["dtype"] != np.float32 \
                or len(out_shape) != 2:
            # a valid LiteRT file that is some other network would otherwise load and fail on every face
            raise ModelError(f"{self.path}: not an expression model (input {in_shape} {np.dtype(inp[0]['dtype'])}, "
                             f"output {out_shape}; expected (N, {FACE_SIZE}, {FACE_SIZE}, 1) float32 in, (N, C) out)")
        n_out = out_shape[-1]
        self.classes: tuple[str, ...] = tuple(self.card.get("classes") or self._default_classes(n_out))
        if len(self.classes) != n_out:
            raise ModelError(f"{self.path}: model has {n_out} outputs but its card lists {len(self.classes)} classes")
        self.failure: str | None = None  # why the last self-test failed (None: the engine answers)
        self.self_test()  # one tiny invoke now: a model that loads but cannot run fails at start-up

    @property
    def healthy(self) -> bool:
        """False once a self-test failed (until one passes): what a health check reports."""
        return self.failure is None

    def self_test(self) -> None:
        """Run one blank face through the model; ModelError (and `failure` set) unless it gives C probabilities."""
        try:
            out = self._run(np.full((1, FACE_SIZE, FACE_SIZE, 1), 128, np.float32))
            ok = out.shape == (1, len(self.classes)) and bool(np.isfinite(out).all()) \
                and abs(float(out.sum()) - 1) < 1e-3
            why = None if ok else f"gave {out.shape} {out.ravel()[:8]} for a blank face, not {len(self.classes)} " \
                "probabilities"
        except (RuntimeError, ValueError, ModelError) as exc:
            why = f"failed to run ({exc})"
        self.failure = None if why is None else f"{self.path}: the model {why}"
        if why is not None:
            raise ModelError(self.failure)

    @staticmethod
    def _default_classes(n: int) -> tuple[str, ...]:
        return CLASSES.get(str(n)) or tuple(f"class{i}" for i in range(n))

    def _read_card(self) -> dict:
        card = self.path.with_suffix(".json")
        if not card.exists():
            return {}
        try:
            content = json.loads(card.read_text())
        except ValueError as exc:
            raise ModelError(f"{card}: model card is not valid JSON ({exc})") from exc
        except OSError as exc:  # a folder, no permission: one line, like any other broken card
            raise ModelError(f"{card}: cannot read the model card ({exc.strerror or exc})") from exc
        return _checked_card(content, card)

    def _load(self) -> _Slot:
        # every interpreter, the ones built later for busy moments included, comes from the bytes read at start
        # (engine.runtime.read_model): never from the file, which may have changed since
        if self._content is None:
            self._content = read_model(self.path)
        try:
            it = litert_interpreter(self._content, self.num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: not a loadable LiteRT model ({exc})") from exc
        return _Slot(it, it.get_input_details()[0]["index"], it.get_output_details()[0]["index"])

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for faces (N, 48, 48) or (N, 48, 48, 1)."""
        x = np.asarray(faces, np.float32).reshape(-1, FACE_SIZE, FACE_SIZE, 1)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        try:
            return self._run(x)
        except (RuntimeError, ValueError) as exc:
            # this input's fault, or the engine's? The self-test says, and sets `failure` for health checks
            with contextlib.suppress(ModelError):
                self.self_test()
            raise ModelError(f"{self.path}: the model failed on {len(x)} faces ({exc})") from exc

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._pool.borrow() as slot:
            if slot.batch != len(x):
                slot.interpreter.resize_tensor_input(slot.input, x.shape, strict=False)
                slot.interpreter.allocate_tensors()
                slot.batch = len(x)
            slot.interpreter.set_tensor(slot.input, x)
            slot.interpreter.invoke()
            return slot.interpreter.get_tensor(slot.output).copy()


def _checked_card(card: object, path: Path) -> dict:
    """The card if the fields the engine reads have the right shape; otherwise a ModelError naming the card (they
    would fail later with a traceback, or a string "abcd" would silently become four classes a, b, c, d)."""
    if not isinstance(card, dict):
        raise ModelError(f"{path}: model card is not a JSON object")
    classes = card.get("classes")
    if classes is not None and (not isinstance(classes, list) or not classes
                                or not all(isinstance(c, str) and c for c in classes)
                                or len(set(classes)) != len(classes)):
        raise ModelError(f"{path}: model card's \"classes\" must be a list of distinct, non-empty names")
    below = card.get("uncertain_below")
    if below is not None and not (isinstance(below, int | float) and not isinstance(below, bool) and 0 <= below <= 1):
        raise ModelError(f"{path}: model card's \"uncertain_below\" must be a number from 0 to 1")
    return card


@dataclass
class _Slot:
    """One interpreter and the batch size its tensors are allocated for."""

    interpreter: object
    input: int
    output: int
    batch: int = 1


def ms_per_face(classifier: ExpressionClassifier, batch: int, repeats: int = 50) -> float:
    """Median milliseconds per face for batches of `batch` random faces (after one warm-up call)."""
    import time

    faces = np.random.default_rng(0).integers(0, 256, (batch, FACE_SIZE, FACE_SIZE)).astype(np.float32)
    classifier.predict(faces)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        classifier.predict(faces)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000 / batch)
