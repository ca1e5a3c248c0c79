"""classify stage: aligned face crops -> calibrated expression probabilities, in LiteRT.

A model says what crops it reads through its inputs' shapes: (N, 48, 48, 1) is FER2013's 48x48 grey face, the
classic input; a model may take another size, RGB (N, S, S, 3), or several crops of the same face at once (a
fused model: one input per crop). `ExpressionClassifier.inputs` lists them as `CropSpec`s and the aligner cuts
one crop per spec.

The shipped models live in `moodlens/models/` as `expression-<classes>.tflite` with a model card
`expression-<classes>.json` beside each (classes, input, temperature, metrics).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
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


@dataclass(frozen=True)
class CropSpec:
    """One input of an expression model: a square, upright face crop `size` pixels wide, grey or RGB, 0..255."""

    size: int
    grey: bool

    @property
    def channels(self) -> int:
        return 1 if self.grey else 3


FER_CROP = CropSpec(FACE_SIZE, grey=True)  # FER2013's 48x48 grey face


def crops_from_fer(faces48: np.ndarray, spec: CropSpec) -> np.ndarray:
    """48x48 grey faces (N, 48, 48) as `spec`'s input (N, S, S, C) float32: bilinearly resized (cv2's INTER_LINEAR,
    the half-pixel-centred bilinear of training's tf.image.resize) and grey copied to RGB. How faces that exist
    only at FER2013's size (the datasets) reach an input made for larger crops; photos get real crops instead."""
    x = np.asarray(faces48, np.float32).reshape(-1, FACE_SIZE, FACE_SIZE)
    if spec.size != FACE_SIZE:
        x = np.stack([cv2.resize(f, (spec.size, spec.size), interpolation=cv2.INTER_LINEAR) for f in x]) \
            if len(x) else np.zeros((0, spec.size, spec.size), np.float32)
    return x[..., None] if spec.grey else np.repeat(x[..., None], 3, axis=-1)


# Shipped models besides each class set's default, by the name `--model` takes (their file name without .tflite)
ALTERNATIVES: dict[str, str] = {
    # the 4-class net fused with face-api.js's: better on real photos, worse on FER2013 (see its model card)
    "photos": "expression-4-photos",
}


def shipped_model_path(classes: str | int = "4") -> Path:
    """Path of the shipped `classes`-class model file."""
    return _shipped(f"expression-{classes}")


def _shipped(name: str) -> Path:
    return Path(str(resources.files("moodlens") / "models" / f"{name}.tflite"))


def model_file(model: str | Path) -> Path:
    """A `--model` value as a file: a shipped alternative's name (ALTERNATIVES, e.g. "photos") or
    a path. A file of that name in the working folder is still a path."""
    if isinstance(model, str) and model in ALTERNATIVES and not Path(model).exists():
        return _shipped(ALTERNATIVES[model])
    return Path(model)


class ExpressionClassifier:
    """A LiteRT expression model: `predict(faces)` -> (N, C) probabilities, rows summing to 1.

    Loaded once; `predict` is thread-safe (interpreters are lent one caller at a time, see engine.runtime).
    `inputs`: the crops the model reads (see CropSpec), in the order `predict` takes them.
    """

    def __init__(self, model_path: str | Path | None = None, classes: str | int = "4", num_threads: int = 1):
        """`model_path`: a .tflite file, or a shipped alternative's name (model_file); None: the shipped model for
        `classes`."""
        if model_path is None and str(classes) not in CLASSES:
            raise ValueError(f"classes must be one of {sorted(CLASSES)} (the shipped models), not {classes!r}")
        self.path = model_file(model_path) if model_path else shipped_model_path(classes)
        self.card = self._read_card()
        self.num_threads = num_threads
        self._content: bytes | None = None  # the model file's bytes, read once by the first _load
        self._pool = InterpreterPool(self._load)  # fails at start-up, not on the first request
        interpreter = self._pool.peek().interpreter
        self.inputs: tuple[CropSpec, ...] = _crop_specs(self.path, interpreter)
        out_shape = [int(s) for s in interpreter.get_output_details()[0]["shape"]]
        if len(out_shape) != 2:
            raise ModelError(f"{self.path}: not an expression model (output {out_shape}; expected (N, C))")
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
            out = self._run([np.full((1, s.size, s.size, s.channels), 128, np.float32) for s in self.inputs])
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
        by_shape = {tuple(int(v) for v in d["shape"][1:]): d["index"] for d in it.get_input_details()}
        order = [by_shape[(s.size, s.size, s.channels)] for s in _crop_specs(self.path, it)]
        return _Slot(it, order, it.get_output_details()[0]["index"])

    def predict(self, faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, C) for N faces: one array per `inputs` spec (the aligner's crops), or a single
        array of 48x48 grey faces (N, 48, 48) or (N, 48, 48, 1), FER2013-style, from which any other input the
        model has is made (crops_from_fer)."""
        if isinstance(faces, np.ndarray) or not isinstance(faces, Sequence):
            x = [crops_from_fer(faces, s) for s in self.inputs]
        else:
            if len(faces) != len(self.inputs):
                raise ValueError(f"the model takes {len(self.inputs)} crops per face, not {len(faces)}")
            x = [np.asarray(f, np.float32).reshape(-1, s.size, s.size, s.channels)
                 for f, s in zip(faces, self.inputs, strict=True)]
        if len(x[0]) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        try:
            return self._run(x)
        except (RuntimeError, ValueError) as exc:
            # this input's fault, or the engine's? The self-test says, and sets `failure` for health checks
            with contextlib.suppress(ModelError):
                self.self_test()
            raise ModelError(f"{self.path}: the model failed on {len(x[0])} faces ({exc})") from exc

    def _run(self, xs: list[np.ndarray]) -> np.ndarray:
        with self._pool.borrow() as slot:
            if slot.batch != len(xs[0]):
                for index, x in zip(slot.inputs, xs, strict=True):
                    slot.interpreter.resize_tensor_input(index, x.shape, strict=False)
                slot.interpreter.allocate_tensors()
                slot.batch = len(xs[0])
            for index, x in zip(slot.inputs, xs, strict=True):
                slot.interpreter.set_tensor(index, x)
            slot.interpreter.invoke()
            out = slot.interpreter.get_tensor(slot.output)
        # a full-integer (int8) file's softmax comes in steps of 1/256 whose row sums drift from 1 by a few steps
        total = out.sum(axis=1, keepdims=True)
        return out / np.where(total > 0, total, 1)


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


def _crop_specs(path: Path, interpreter) -> tuple[CropSpec, ...]:
    """The crops a model reads, from its inputs' shapes: 48x48 grey first, then by size (a fixed order,
    whatever order the converter gave the inputs); ModelError for a network that is no expression model."""
    specs = []
    for d in interpreter.get_input_details():
        shape = [int(v) for v in d["shape"]]
        if len(shape) != 4 or shape[1] != shape[2] or not 16 <= shape[1] <= 512 or shape[3] not in (1, 3) \
                or d["dtype"] != np.float32:
            # a valid LiteRT file that is some other network would otherwise load and fail on every face
            raise ModelError(f"{path}: not an expression model (input {shape} {np.dtype(d['dtype'])}; expected "
                             f"(N, {FACE_SIZE}, {FACE_SIZE}, 1) float32, or square RGB crops (N, S, S, 3))")
        specs.append(CropSpec(shape[1], grey=shape[3] == 1))
    if len(set(specs)) != len(specs):
        raise ModelError(f"{path}: two inputs take the same crop {specs}")
    return tuple(sorted(specs, key=lambda s: (s != FER_CROP, s.size, s.grey)))


@dataclass
class _Slot:
    """One interpreter and the batch size its tensors are allocated for."""

    interpreter: object
    inputs: list[int]  # tensor index per CropSpec of the classifier, in its order
    output: int
    batch: int = 1


def ms_per_face(classifier: ExpressionClassifier, batch: int, repeats: int = 50) -> float:
    """Median milliseconds per face for batches of `batch` random faces (after one warm-up call)."""
    import time

    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (batch, s.size, s.size, s.channels)).astype(np.float32) for s in classifier.inputs]
    classifier.predict(faces)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        classifier.predict(faces)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000 / batch)
