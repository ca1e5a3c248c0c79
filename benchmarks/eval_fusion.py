"""Does fusing face-api.js's FaceExpressionNet with moodlens's 4-class model help on real photos?

    python benchmarks/eval_fusion.py [--photos ../shared/data/photos-dev/labels.csv]
        [--fer2013 ../shared/data/fer2013/fer2013.csv.gz] [--json results.json] [--skip-fer] [--skip-speed]

Three measures, all without training anything (docs/fusion-experiment.md holds the results):

1. photos-dev (validation only): every `single` photo labelled angry/happy/neutral/sad goes through moodlens's own
   decode + detect (the engine's `FaceDetector`, the largest face, as `moodlens evaluate --photos` does). From the
   same detection we take (a) the 48x48 grey crop the engine classifies (checked against `Analyzer.analyze`) and
   (b) a 112x112 RGB crop for face-api, warped with the aligner's own `crop_transform` at several margins
   (crop side / detector box side). A photo where no face is found counts as wrong for every configuration.
2. FER2013 PublicTest, 4 classes: moodlens on the 48x48 faces, face-api on them upscaled to 112 (bilinear) and
   replicated to RGB.
3. Speed: face-api's Keras port exported to LiteRT (float32 and int8 dynamic-range) in a temporary folder, timed at
   batch 1 on one thread (XNNPACK) against the shipped expression-4.tflite in the same run; int8 vs float32
   agreement on the inputs of 1 and 2.

Scores: moodlens's 4 probabilities; face-api's 7 restricted to angry/happy/neutral/sad and renormalised; fused with
weight w on face-api, either as a weighted mean of log-probabilities (`log`: (1-w) log p_moodlens + w log p_faceapi,
a weighted geometric mean) or of probabilities (`prob`). w = 0 is moodlens alone, w = 1 face-api alone.

Nothing derived from photos-dev (crops, per-photo scores) is written anywhere; `--json` holds aggregate figures only.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from reference import REFERENCE_MODEL, machine

from moodlens.engine.align import CROP_SCALE, FACE_SIZE, align_crop, align_face
from moodlens.engine.analyzer import WORK_SIDE, Analyzer
from moodlens.engine.classify import CLASSES, CropSpec, crops_from_fer, shipped_model_path
from moodlens.engine.decode import Picture, decode_picture
from moodlens.engine.detect import Detection

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FACEAPI_DIR = ROOT / ".cache/faceapi/node_modules/@vladmandic/face-api/model"
CLASSES4: tuple[str, ...] = CLASSES["4"]  # angry, happy, neutral, sad: moodlens's 4-class output order
# Repositories whose photos the face-api.js / Human expression nets may have been trained or tuned on
# (the same list as moodlens.training.evaluate.PRETRAINED_SOURCES).
PRETRAINED_SOURCES = ("justadudewhohacks/face-api.js", "vladmandic/face-api", "vladmandic/human")
FER_CODES = {0: "angry", 3: "happy", 4: "sad", 6: "neutral"}  # FER2013 emotion code -> 4-class name
FACEAPI_SIZE = 112
GOAL_ACCURACY, GOAL_RECALL = 0.94, 0.85
RULES = ("log", "prob")


# ---------------------------------------------------------------------------------------------- crops


def faceapi_crop(rgb: np.ndarray, d: Detection, margin: float, size: int = FACEAPI_SIZE) -> np.ndarray:
    """The face of `d` as an upright `size` x `size` RGB uint8 crop whose side is `margin` x the box side: the
    aligner's own warp + block average (align_crop), as the engine cuts its 48x48 crop."""
    return align_crop(rgb, d, size, grey=False, scale=margin)


def engine_crop(picture: Picture, d: Detection) -> np.ndarray:
    """The 48x48 grey crop `Analyzer.analyze` classifies for `d` (a detection in `picture.rgb`'s pixels): the same
    rule as Analyzer._crop, through the public align_face."""
    if max(d.box[2], d.box[3]) * CROP_SCALE >= 2 * FACE_SIZE or picture.scale == 1:
        return align_face(picture.rgb, d)
    return align_face(picture.full(), d.scaled(1 / picture.scale))


def clipped_area(d: Detection, width: int, height: int) -> float:
    """Area of the part of `d`'s box inside a `width` x `height` image (how `moodlens evaluate` picks a face)."""
    x, y, w, h = d.box
    return max(0.0, min(x + w, width) - max(x, 0.0)) * max(0.0, min(y + h, height) - max(y, 0.0))


@dataclass
class PhotoSet:
    """photos-dev's 4-class single faces, as crops (kept in memory only)."""

    y: np.ndarray  # (N,) class index in CLASSES4
    found: np.ndarray  # (N,) bool: a face was detected
    pretrained: np.ndarray  # (N,) bool: the photo comes from a face-api.js / Human repository
    crops48: np.ndarray  # (N, 48, 48) uint8 grey (zeros where no face)
    face_side: np.ndarray  # (N,) the detector box's longer side in the photo's full-resolution pixels
    # margin -> (N, S, S, 3) uint8 RGB face-api crops, S = --faceapi-size (112, face-api's own input, by default)
    crops112: dict[float, np.ndarray] = field(default_factory=dict)
    engine_max_diff: float = 0.0  # max |p(our 48 crop) - Analyzer.analyze's score| over the photos


def read_photo_rows(labels_csv: Path) -> list[dict[str, str]]:
    """photos-dev rows of single photos labelled with one of the four classes."""
    with labels_csv.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "single" and r["label"].strip() in CLASSES4]


def photo_crops(labels_csv: Path, margins: list[float], analyzer: Analyzer, size: int = FACEAPI_SIZE) -> PhotoSet:
    """Detect the largest face of each photo with the engine and cut both crops from the same detection."""
    rows = read_photo_rows(labels_csv)
    n = len(rows)
    out = PhotoSet(y=np.array([CLASSES4.index(r["label"].strip()) for r in rows]), found=np.zeros(n, bool),
                   pretrained=np.array([r["source_repo"] in PRETRAINED_SOURCES for r in rows]),
                   crops48=np.zeros((n, FACE_SIZE, FACE_SIZE), np.uint8), face_side=np.zeros(n),
                   crops112={m: np.zeros((n, size, size, 3), np.uint8) for m in margins})
    diffs = []
    for i, row in enumerate(rows):
        path = labels_csv.parent / row["file"]
        picture = decode_picture(path, max_bytes=analyzer.max_bytes, max_pixels=analyzer.max_pixels,
                                 work_side=WORK_SIDE)
        found = [d for d in analyzer.detector.detect(picture.rgb, picture.full if picture.scale < 1 else None)
                 if d.score >= analyzer.min_face_score]
        if not found:
            continue
        d = max(found, key=lambda f: clipped_area(f.scaled(1 / picture.scale), picture.width, picture.height))
        out.found[i] = True
        out.crops48[i] = engine_crop(picture, d)
        out.face_side[i] = max(d.scaled(1 / picture.scale).box[2:])
        full = picture.full()  # face-api's crop always from the full-resolution pixels, the same box scaled up
        for m in margins:
            out.crops112[m][i] = faceapi_crop(full, d.scaled(1 / picture.scale), m, size)
        # the 48 crop must be the one the engine classifies: compare with the engine end to end
        faces = analyzer.analyze(path).faces
        if not faces:  # cannot happen with a deterministic detector; counted as a full mismatch if it does
            diffs.append(1.0)
            continue
        face = max(faces, key=lambda f: f.box.w * f.box.h)
        ours = analyzer.classifier.predict(out.crops48[i][None])[0]
        diffs.append(float(np.abs(ours - np.array([face.scores[c] for c in analyzer.classes])).max()))
    out.engine_max_diff = max(diffs, default=0.0)
    return out


# --------------------------------------------------------------------------------------------- models


def to4(p: np.ndarray, classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """Probabilities over `classes` -> angry/happy/neutral/sad, renormalised to sum to 1."""
    p4 = p[:, [list(classes).index(c) for c in CLASSES4]].astype(np.float64)
    return p4 / p4.sum(axis=1, keepdims=True)


def faceapi_to4(p7: np.ndarray) -> np.ndarray:
    """face-api's 7 probabilities (its order) as 4 (to4)."""
    from moodlens.training.faceapi import FACEAPI_CLASSES

    return to4(p7, list(FACEAPI_CLASSES.values()))


class flip_averaged_classifier:
    """A classifier whose scores are averaged over each face and its mirror image (flip_averaged)."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def predict(self, faces: np.ndarray) -> np.ndarray:
        return flip_averaged(self.classifier.predict, faces)


class restricted_to4:
    """A classifier with more classes read as angry/happy/neutral/sad (to4: the 7-class file as 4)."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def predict(self, faces: np.ndarray) -> np.ndarray:
        return to4(self.classifier.predict(faces), self.classifier.classes)


def keras_runner(model) -> Callable[[np.ndarray], np.ndarray]:
    """(N, 112, 112, 3) RGB 0..255 -> (N, 7) face-api probabilities, with the Keras port."""
    return lambda x: np.asarray(model.predict(x.astype(np.float32), batch_size=128, verbose=0))


def tuned_runner(path: Path, faceapi_dir: Path, alpha: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """A fine-tuned face-api checkpoint (logits over FER2013's 7 classes) as face-api-order probabilities, so it
    drops in for the original (faceapi_to4 then restricts it as before). `alpha` < 1 interpolates its weights
    with the original's, (1 - alpha) * original + alpha * tuned (WiSE-FT, Wortsman et al. 2022)."""
    import keras

    from moodlens.training.faceapi import FACEAPI_CLASSES, interpolate_with_original
    from moodlens.training.labels import FER2013_CLASSES

    model = keras.models.load_model(path, compile=False)
    if alpha != 1.0:
        model = interpolate_with_original(model, faceapi_dir, alpha)
    order = [FER2013_CLASSES.index(c) for c in FACEAPI_CLASSES.values()]

    def run(x: np.ndarray) -> np.ndarray:
        logits = np.asarray(model.predict(x.astype(np.float32), batch_size=128, verbose=0))[:, order]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return run


def litert_runner(path: Path, num_threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """(N, ...) float32 -> output, with a LiteRT interpreter (XNNPACK, the default delegate) at batch N."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=num_threads)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    batch = [0]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if batch[0] != len(x):
            it.resize_tensor_input(inp, x.shape, strict=False)
            it.allocate_tensors()
            batch[0] = len(x)
        it.set_tensor(inp, x)
        it.invoke()
        return it.get_tensor(out).copy()

    return run


def in_chunks(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, chunk: int = 256) -> np.ndarray:
    return np.concatenate([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def export_litert(model, path: Path, quantize: bool) -> Path:
    """The Keras port as a .tflite, as training/export.py writes the project's models (float32, or int8
    dynamic-range weights with `quantize`)."""
    import tensorflow as tf

    options = {"optimizations": [tf.lite.Optimize.DEFAULT]} if quantize else {}
    model.export(str(path), format="litert", verbose=False, **options)
    return path


# -------------------------------------------------------------------------------------- fusion, metrics


def fuse(p_ml: np.ndarray, p_fa: np.ndarray, w: float, rule: str) -> np.ndarray:
    """Fused 4-class scores, weight `w` on face-api: weighted mean of log-probabilities or of probabilities."""
    if rule == "log":
        eps = 1e-7
        return (1 - w) * np.log(np.clip(p_ml, eps, 1)) + w * np.log(np.clip(p_fa, eps, 1))
    return (1 - w) * p_ml + w * p_fa


def metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, per-class recall and the confusion matrix (rows true, columns predicted; a last column
    "no face" for pred == -1, which counts as wrong)."""
    k = len(CLASSES4)
    confusion = np.zeros((k, k + 1), int)
    np.add.at(confusion, (y, np.where(pred < 0, k, pred)), 1)
    support = confusion.sum(axis=1)
    recall = np.diag(confusion[:, :k]) / np.maximum(support, 1)
    accuracy = float(np.trace(confusion[:, :k]) / max(len(y), 1))
    return {"n": int(len(y)), "accuracy": accuracy, "recall": dict(zip(CLASSES4, map(float, recall), strict=True)),
            "min_recall": float(recall.min()), "confusion": confusion.tolist(),
            "goal_met": bool(accuracy >= GOAL_ACCURACY and recall.min() >= GOAL_RECALL)}


def configurations(weights: list[float]) -> list[tuple[str, float]]:
    """(rule, w) pairs; w = 0 and 1 only once (both rules give the same argmax there)."""
    out = [("log", w) for w in weights]
    return out + [("prob", w) for w in weights if 0 < w < 1]


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value: how likely a split at least this uneven of the faces on which two
    configurations disagree about being right is, if both were equally good."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)


def flip_averaged(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """`run`'s probabilities averaged over `x` and its mirror image (geometric mean, renormalised)."""
    logp = (np.log(np.clip(run(x), 1e-7, 1)) + np.log(np.clip(run(np.ascontiguousarray(x[:, :, ::-1])), 1e-7, 1))) / 2
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def score_all(y: np.ndarray, p_ml: np.ndarray, p_fa: np.ndarray, found: np.ndarray,
              weights: list[float]) -> dict[str, dict]:
    """{config name: metrics} for every fusion configuration, with the faces it gets right that moodlens alone
    gets wrong (`fixed`) and the reverse (`broken`)."""
    base_right = found & (p_ml.argmax(axis=1) == y)
    out = {}
    for rule, w in configurations(weights):
        pred = np.where(found, fuse(p_ml, p_fa, w, rule).argmax(axis=1), -1)
        right = pred == y
        fixed, broken = int((right & ~base_right).sum()), int((~right & base_right).sum())
        out[config_name(rule, w)] = {"rule": rule, "w": w, **metrics(y, pred), "fixed": fixed, "broken": broken,
                                     "mcnemar_p": mcnemar_p(fixed, broken)}
    return out


def config_name(rule: str, w: float) -> str:
    return "moodlens" if w == 0 else "face-api" if w == 1 else f"{rule} w={w:g}"


# ------------------------------------------------------------------------------------------------ speed


def time_batch1(runners: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    """Median ms per batch-1 invoke of each runner, interleaved round by round so that load from other work
    (this host is shared) falls on all of them alike."""
    for run in runners.values():
        for _ in range(20):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t) * 1000) for name, t in times.items()}


def invoker(path: Path, x: np.ndarray) -> Callable[[], object]:
    """A zero-argument batch-1 invoke of the model at `path` on the fixed input `x` (set each call)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    index = it.get_input_details()[0]["index"]

    def run() -> None:
        it.set_tensor(index, x)
        it.invoke()

    return run


# ------------------------------------------------------------------------------------------------ report


def recall_cells(m: dict) -> str:
    return " | ".join(f"{m['recall'][c]:.3f}" for c in CLASSES4)


def table(title: str, blocks: dict[str, dict[str, dict]]) -> str:
    """A markdown table: one row per configuration, accuracy and recalls for each subset in `blocks`."""
    subsets = list(blocks)
    first = blocks[subsets[0]]
    head = "| configuration | " + " | ".join(
        f"{s} acc | " + " | ".join(f"{c[:3]}" for c in CLASSES4) + " | +/- vs moodlens (p)" for s in subsets) + " |"
    lines = [f"### {title}", "", "n = " + ", ".join(f"{s}: {blocks[s][next(iter(first))]['n']}" for s in subsets),
             "", head, "|" + "---|" * (1 + 6 * len(subsets))]
    for name in first:
        cells = []
        for s in subsets:
            m = blocks[s][name]
            mark = " **goal**" if m["goal_met"] else ""
            change = f"+{m['fixed']} -{m['broken']} ({m['mcnemar_p']:.2g})" if name != "moodlens" else ""
            cells.append(f"{m['accuracy']:.3f}{mark} | {recall_cells(m)} | {change}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_text(name: str, m: dict) -> str:
    cols = [*CLASSES4, "no face"]
    lines = [f"{name} (rows true, columns predicted):", "    " + " " * 8 + "".join(f"{c:>9}" for c in cols)]
    for c, row in zip(CLASSES4, m["confusion"], strict=True):
        lines.append(f"    {c:<8}" + "".join(f"{v:>9d}" for v in row))
    return "\n".join(lines)


def best(results: dict[str, dict]) -> str:
    """The configuration with the highest accuracy, then the highest worst-class recall."""
    return max(results, key=lambda k: (round(results[k]["accuracy"], 6), results[k]["min_recall"]))


def ferplus_scores(args: argparse.Namespace, frame, moodlens, run_keras) -> dict:
    """Every fusion scored on PublicTest faces whose FER+ majority is angry/happy/neutral/sad (FER+'s labels)."""
    from moodlens.training.data import load_fer
    from moodlens.training.labels import class_set

    plus = load_fer(args.fer2013, "PublicTest", class_set("4"), ferplus=args.ferplus, targets="ferplus", frame=frame)
    assert tuple(plus.class_set.classes) == CLASSES4
    p_ml = in_chunks(moodlens.predict, plus.images).astype(np.float64)
    size = args.faceapi_size
    x112 = np.stack([cv2.cvtColor(cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR),
                                  cv2.COLOR_GRAY2RGB) for f in plus.images])
    p_fa = faceapi_to4(run_keras(x112))
    return score_all(plus.y, p_ml, p_fa, np.ones(len(plus.y), bool), args.weights)


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=SHARED / "photos-dev" / "labels.csv")
    parser.add_argument("--fer2013", type=Path, default=SHARED / "fer2013" / "fer2013.csv.gz")
    parser.add_argument("--faceapi-dir", type=Path, default=FACEAPI_DIR)
    parser.add_argument("--margins", type=float, nargs="+", default=[1.0, 1.1, 1.2, 1.3, 1.4],
                        help="face-api crop side / detector box side (moodlens's own crop stays at 1.2)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--moodlens", choices=("4", "7"), default="4",
                        help="moodlens model: the shipped 4-class file, or the 7-class file restricted to 4")
    parser.add_argument("--ferplus", type=Path, default=SHARED / "ferplus" / "fer2013new.csv")
    parser.add_argument("--faceapi-keras", type=Path,
                        help="a fine-tuned face-api checkpoint (train --arch faceapi) in place of the original")
    parser.add_argument("--wise-alpha", type=float, default=1.0,
                        help="with --faceapi-keras: weights (1-a) original + a tuned (1: the tuned net as is)")
    parser.add_argument("--grey", action="store_true",
                        help="give face-api its photo crops in grey (copied to RGB), as FER's faces are")
    parser.add_argument("--as-fer", action="store_true",
                        help="give face-api moodlens's 48x48 grey photo crop upscaled to 112, as FER2013's faces "
                             "reach it: does face-api need the resolution? (the crop margin is then moodlens's)")
    parser.add_argument("--flip", action="store_true", help="average both nets over each crop and its mirror")
    parser.add_argument("--faceapi-size", type=int, default=FACEAPI_SIZE,
                        help="face-api's input side: other than 112, its weights on a smaller face (global pool)")
    parser.add_argument("--skip-fer", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--rounds", type=int, default=30, help="timing rounds (each: every model, --per-round runs)")
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--json", type=Path, help="write the aggregate figures here")
    args = parser.parse_args()

    from moodlens.training.faceapi import load_faceapi_expression_net

    cv2.setNumThreads(1)
    print(f"machine: {machine()}")
    report: dict = {"machine": machine(), "margins": args.margins, "weights": args.weights}
    size = args.faceapi_size
    faceapi = load_faceapi_expression_net(args.faceapi_dir, size)
    run_keras = keras_runner(faceapi) if args.faceapi_keras is None else \
        tuned_runner(args.faceapi_keras, args.faceapi_dir, args.wise_alpha)
    report["faceapi"] = f"{args.faceapi_keras} (WiSE alpha {args.wise_alpha})" if args.faceapi_keras \
        else "face-api as published"
    analyzer = Analyzer(classes="4", num_threads=1)
    moodlens = analyzer.classifier if args.moodlens == "4" else restricted_to4(Analyzer(classes="7").classifier)
    report["moodlens_model"] = f"expression-{args.moodlens}.tflite"
    if args.flip:
        run_keras = functools.partial(flip_averaged, run_keras)
        moodlens = flip_averaged_classifier(moodlens)
    report.update(flip=args.flip, as_fer=args.as_fer, faceapi_size=size)

    # 1. photos-dev
    photos = photo_crops(args.photos, args.margins, analyzer, size)
    p_ml = moodlens.predict(photos.crops48).astype(np.float64)
    print(f"\nphotos-dev: {len(photos.y)} faces, {int((~photos.found).sum())} not found, "
          f"{int(photos.pretrained.sum())} from face-api.js/Human repos; our 48 crop vs Analyzer.analyze: "
          f"max |dp| = {photos.engine_max_diff:.2g}")
    sides = photos.face_side[photos.found]
    print("face sides (px, full resolution): min / 10% / median / 90% / max = " +
          " / ".join(f"{v:.0f}" for v in np.percentile(sides, [0, 10, 50, 90, 100])))
    report["photos"] = {"n": len(photos.y), "not_found": int((~photos.found).sum()),
                        "from_pretrained_repos": int(photos.pretrained.sum()),
                        "engine_check_max_abs_diff": photos.engine_max_diff, "by_margin": {}}
    for m in args.margins:
        crops = photos.crops112[m]
        if args.as_fer:
            crops = crops_from_fer(photos.crops48, CropSpec(size, grey=False)).astype(np.uint8)
        elif args.grey:  # the same crops as FER2013's faces reach face-api: grey, copied to RGB
            crops = np.repeat(np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops])[..., None], 3, axis=-1)
        p_fa = faceapi_to4(run_keras(crops))
        keep = ~photos.pretrained
        blocks = {"all": score_all(photos.y, p_ml, p_fa, photos.found, args.weights),
                  "excl. face-api/Human repos": score_all(photos.y[keep], p_ml[keep], p_fa[keep],
                                                            photos.found[keep], args.weights)}
        report["photos"]["by_margin"][f"{m:g}"] = blocks
        print("\n" + table(f"photos-dev, face-api crop margin {m:g}", blocks))
    flat = {f"margin {m} {k}": v for m, b in report["photos"]["by_margin"].items() for k, v in b["all"].items()}
    win = best(flat)
    win_margin, win_cfg = float(win.split()[1]), win.split(" ", 2)[2]
    win_rule, win_w = flat[win]["rule"], flat[win]["w"]
    report["photos"]["best"] = win
    print(f"\nbest on photos-dev (all): {win}")
    for name in ("moodlens", "face-api", win_cfg):
        print(confusion_text(f"{name}, margin {win_margin:g}",
                             report["photos"]["by_margin"][f"{win_margin:g}"]["all"][name]))

    # 2. FER2013 PublicTest, 4 classes
    fer_inputs = None
    if not args.skip_fer:
        from moodlens.training.data import read_fer2013

        frame = read_fer2013(args.fer2013)
        rows = (frame["Usage"] == "PublicTest").to_numpy() & frame["emotion"].isin(list(FER_CODES)).to_numpy()
        faces = np.stack(frame["image"].to_numpy()[rows])
        y = np.array([CLASSES4.index(FER_CODES[e]) for e in frame["emotion"].to_numpy()[rows]])
        p_ml_fer = in_chunks(moodlens.predict, faces).astype(np.float64)
        fer_inputs = np.stack([cv2.cvtColor(cv2.resize(f, (size, size),
                                                       interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
                               for f in faces])
        p_fa_fer = faceapi_to4(run_keras(fer_inputs))
        fer = score_all(y, p_ml_fer, p_fa_fer, np.ones(len(y), bool), args.weights)
        report["fer2013_publictest"] = fer
        print("\n" + table("FER2013 PublicTest, 4 classes", {"PublicTest": fer}))
        if args.ferplus.exists():
            report["ferplus_publictest"] = ferplus_scores(args, frame, moodlens, run_keras)
            print("\n" + table("FER+ majority, PublicTest, 4 classes", {"PublicTest": report["ferplus_publictest"]}))

    # 3. speed and int8 agreement
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            f32 = export_litert(faceapi, Path(tmp) / "faceapi-f32.tflite", quantize=False)
            i8 = export_litert(faceapi, Path(tmp) / "faceapi-int8.tflite", quantize=True)
            sizes = {"faceapi float32": f32.stat().st_size, "faceapi int8": i8.stat().st_size}
            rng = np.random.default_rng(0)
            x112 = rng.integers(0, 256, (1, size, size, 3)).astype(np.float32)
            x48 = rng.integers(0, 256, (1, FACE_SIZE, FACE_SIZE, 1)).astype(np.float32)
            ms = time_batch1({"expression-4.tflite (shipped)": invoker(shipped_model_path("4"), x48),
                              "reference/expression-4.tflite": invoker(REFERENCE_MODEL, x48),
                              "face-api LiteRT float32": invoker(f32, x112),
                              "face-api LiteRT int8 dynamic": invoker(i8, x112)}, args.rounds, args.per_round)
            shipped = ms["expression-4.tflite (shipped)"]
            print("\n### batch-1 invoke, LiteRT, 1 thread (XNNPACK)\n\n| model | ms | x shipped |\n|---|---|---|")
            for name, v in ms.items():
                print(f"| {name} | {v:.3f} | {v / shipped:.2f} |")
            for kind in ("float32", "int8 dynamic"):
                fused = shipped + ms[f"face-api LiteRT {kind}"]
                print(f"| moodlens + face-api {kind} (fused, sum) | {fused:.3f} | {fused / shipped:.2f} |")
            report["speed"] = {"ms_batch1": ms, "file_bytes": sizes}

            agreement = {}
            sets = {f"photos-dev margin {m:g}": photos.crops112[m][photos.found] for m in args.margins}
            if fer_inputs is not None:
                sets["FER2013 PublicTest"] = fer_inputs
            run_f32, run_i8 = litert_runner(f32), litert_runner(i8)
            print("\n### face-api LiteRT int8 vs float32 (and float32 vs the Keras port)\n")
            print("| inputs | n | top-1 agree (4 cl.) | top-1 agree (7 cl.) | max abs dp | mean abs dp | "
                  "float32 vs Keras max abs dp |\n|---|---|---|---|---|---|---|")
            for name, x in sets.items():
                p32, p8 = in_chunks(run_f32, x), in_chunks(run_i8, x)
                pk = run_keras(x)
                a4 = float((faceapi_to4(p32).argmax(1) == faceapi_to4(p8).argmax(1)).mean())
                a7 = float((p32.argmax(1) == p8.argmax(1)).mean())
                agreement[name] = {"n": len(x), "top1_4": a4, "top1_7": a7,
                                   "max_abs": float(np.abs(p32 - p8).max()),
                                   "mean_abs": float(np.abs(p32 - p8).mean()),
                                   "f32_vs_keras_max_abs": float(np.abs(p32 - pk).max())}
                g = agreement[name]
                print(f"| {name} | {g['n']} | {a4:.4f} | {a7:.4f} | {g['max_abs']:.4f} | {g['mean_abs']:.5f} | "
                      f"{g['f32_vs_keras_max_abs']:.1e} |")
                if name == f"photos-dev margin {win_margin:g}":
                    # the winning configuration again with the int8 face-api, as it would ship
                    p_fa8 = np.full((len(photos.y), 4), 0.25)
                    p_fa8[photos.found] = faceapi_to4(p8)
                    agreement["best_with_int8"] = metrics(
                        photos.y, np.where(photos.found, fuse(p_ml, p_fa8, win_w, win_rule).argmax(1), -1))
            report["speed"]["int8_agreement"] = agreement
            if "best_with_int8" in agreement:
                m8 = agreement["best_with_int8"]
                print(f"\n{win} with int8 face-api on photos-dev: accuracy {m8['accuracy']:.3f}, recall "
                      f"{recall_cells(m8)}")

    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
