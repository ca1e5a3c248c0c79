"""`moodlens evaluate`: accuracy, macro-F1, per-class metrics and confusion matrix on any FER2013-format split.

Works with the shipped .tflite models (LiteRT, no TensorFlow) and with training checkpoints (.keras). For a
class subset (e.g. `--classes 4` on a 7-class file) rows of the other classes are left out and the model's
output is restricted to the subset before the argmax.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from moodlens.training.data import FaceDataset, load_fer, read_fer2013, read_ferplus
from moodlens.training.labels import ClassSet, class_set


class Predictor:
    """Probabilities over `classes` for 48x48 faces, from a .tflite or a .keras model."""

    def __init__(self, model_path: str | Path | None = None, classes: str = "4", head: str | None = None):
        path = Path(model_path) if model_path else None
        if path is not None and path.suffix == ".keras":
            from moodlens.training.export import checkpoint_heads, single_head
            from moodlens.training.model import load_network

            model = load_network(path)
            heads = checkpoint_heads(model, path)
            head = head if head in heads else next(iter(heads))  # a two-head net: FER2013's unless told
            self._keras = single_head(model, head)
            self.classes = heads[head].classes
            self.logits = True
        else:
            from moodlens.engine.classify import ExpressionClassifier

            self._tflite = ExpressionClassifier(path, classes=classes, num_threads=2)
            self.classes = self._tflite.classes
            self.logits = False

    def scores(self, faces: np.ndarray) -> np.ndarray:
        """Class scores (N, C): logits for Keras checkpoints, probabilities for .tflite."""
        if self.logits:
            from moodlens.training.export import keras_inputs

            return self._keras.predict(keras_inputs(self._keras, faces), batch_size=256, verbose=0)
        return np.concatenate([self._tflite.predict(faces[i:i + 256]) for i in range(0, len(faces), 256)])


def keras_model_classes(path: Path, n_outputs: int) -> tuple[str, ...]:
    """Class names of a training checkpoint: from its run's config.json, else by output count."""
    config = path.parent / "config.json"
    name = json.loads(config.read_text())["classes"] if config.exists() else str(n_outputs)
    return class_set(name).classes


def restrict(scores: np.ndarray, model_classes: tuple[str, ...], target: ClassSet) -> np.ndarray:
    """Columns of `scores` for the `target` classes, in target order."""
    missing = set(target.classes) - set(model_classes)
    if missing:
        raise click.UsageError(f"the model has no output for {sorted(missing)}: it predicts {list(model_classes)}")
    return scores[:, [model_classes.index(c) for c in target.classes]]


def metrics_block(y: np.ndarray, pred: np.ndarray, cs: ClassSet) -> dict:
    """n, accuracy, macro_f1, per-class precision/recall/f1/support and the confusion matrix."""
    labels = list(range(len(cs)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(cs.classes)},
        "confusion": {"labels": list(cs.classes),
                      "matrix": confusion_matrix(y, pred, labels=labels).tolist()},
    }


def training_duplicates(frame, split: str, train_split: str = "Training") -> np.ndarray:
    """Row numbers of `split` whose image is byte-identical to a `train_split` image."""
    def digest(img: np.ndarray) -> str:
        return hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest()

    usage = frame["Usage"].to_numpy()
    seen = {digest(img) for img, u in zip(frame["image"], usage, strict=True) if u == train_split}
    return np.array([i for i, (img, u) in enumerate(zip(frame["image"], usage, strict=True))
                     if u == split and digest(img) in seen], np.int64)


def evaluate(
    fer2013: str | Path,
    split: str,
    classes: str = "4",
    ferplus: str | Path | None = None,
    model: str | Path | None = None,
    exclude_training_duplicates: bool = False,
    head: str | None = None,
) -> dict:
    """Evaluate `model` (default: the shipped model for `classes`; `head` of a two-head checkpoint) on `split`;
    the JSON-ready result."""
    cs = class_set(classes)
    predictor = Predictor(model, classes=classes, head=head)
    frame = read_fer2013(fer2013)
    drop = training_duplicates(frame, split) if exclude_training_duplicates else np.zeros(0, np.int64)

    def block(ds: FaceDataset) -> dict:
        keep = ~np.isin(ds.source_rows, drop)
        pred = restrict(predictor.scores(ds.images[keep]), predictor.classes, cs).argmax(1)
        return metrics_block(ds.y[keep], pred, cs)

    out = {"model": str(model or f"shipped expression-{classes}"), "split": split, "classes": list(cs.classes),
           "excluded_training_duplicates": int(len(drop))}
    out.update(block(load_fer(fer2013, split, cs, frame=frame)))
    if ferplus:
        out["ferplus"] = block(load_fer(fer2013, split, cs, targets="ferplus", frame=frame,
                                        votes=read_ferplus(ferplus)))
    return out


def plot_confusion(block: dict, title: str, out_png: Path) -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(block["confusion"]["matrix"], float)
    labels = block["confusion"]["labels"]
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(m[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def format_table(block: dict, title: str) -> str:
    lines = [f"{title}: n={block['n']}  accuracy={block['accuracy']:.4f}  macro-F1={block['macro_f1']:.4f}",
             f"  {'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in block["per_class"].items():
        lines.append(f"  {c:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    return "\n".join(lines)


# Repositories whose photos the face-api.js / Human expression nets may have been trained or tuned on.
PRETRAINED_SOURCES = ("justadudewhohacks/face-api.js", "vladmandic/face-api", "vladmandic/human")


def labelled_photos(source: str | Path) -> list[dict]:
    """[{path, label, source_repo}] from a photos-dev style `labels.csv` (rows with a label), or from a folder:
    each image's label is its folder's name, or else the start of its file name (`sad_007.jpg`)."""
    import csv

    from moodlens.training.data import iter_image_files
    from moodlens.training.labels import FER2013_CLASSES

    source = Path(source)
    if source.is_file():
        with source.open(newline="") as f:
            return [{"path": source.parent / row["file"], "label": row["label"].strip().lower(),
                     "source_repo": row.get("source_repo", "")} for row in csv.DictReader(f)
                    if row.get("label", "").strip()]
    out = []
    for path in iter_image_files(source):
        label = path.parent.name.lower()
        if label not in FER2013_CLASSES:
            label = path.stem.split("_")[0].lower()
        if label in FER2013_CLASSES:
            out.append({"path": path, "label": label, "source_repo": ""})
    return out


def evaluate_photos(source: str | Path, classes: str = "4", model: str | Path | None = None,
                    exclude_repos: tuple[str, ...] = PRETRAINED_SOURCES) -> dict:
    """Score the whole engine on labelled real photos: decode -> detect -> align -> classify, the largest face
    of each photo; a photo where no face is found counts as wrong. Photos labelled outside `classes` are left
    out. With `exclude_repos`, the same block again without photos from those repositories."""
    from moodlens.engine.analyzer import Analyzer
    from moodlens.engine.errors import ImageError

    cs = class_set(classes)
    analyzer = Analyzer(classes=classes, model_path=model)
    model_classes = tuple(analyzer.classes)
    rows = [r for r in labelled_photos(source) if r["label"] in cs.classes]
    if not rows:
        raise ValueError(f"{source}: no photos labelled with one of {list(cs.classes)}")
    pred, missed = [], []
    for r in rows:
        try:
            faces = analyzer.analyze(r["path"]).faces
        except (ImageError, OSError):  # an unreadable photo is a miss too, not a crash
            faces = []
        if not faces:
            pred.append(-1)
            missed.append(str(r["path"]))
            continue
        face = max(faces, key=lambda f: f.box.w * f.box.h)
        scores = np.array([[face.scores[c] for c in model_classes]])
        pred.append(int(restrict(scores, model_classes, cs).argmax(1)[0]))
    y, pred = np.array([cs.index(r["label"]) for r in rows]), np.array(pred)

    def block(keep: np.ndarray) -> dict:
        # a missed face is wrong: scored as a prediction no class has (it lowers recall, not precision)
        b = metrics_block(y[keep], np.where(pred[keep] < 0, len(cs), pred[keep]), cs)
        b["faces_not_found"] = int((pred[keep] < 0).sum())
        b["confusion"]["no_face"] = [int(((y[keep] == i) & (pred[keep] < 0)).sum()) for i in range(len(cs))]
        return b

    out = {"model": str(model or f"shipped expression-{classes}"), "photos": str(source), "classes": list(cs.classes)}
    out.update(block(np.ones(len(rows), bool)))
    out["faces_not_found_in"] = missed
    if exclude_repos:
        keep = np.array([r["source_repo"] not in exclude_repos for r in rows])
        out["excluding_repos"] = {"repos": list(exclude_repos), **block(keep)}
    return out


def photo_probe(source: str | Path, rgb_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 4-class labelled faces of a real-photo set as (crops, labels), for a per-epoch accuracy probe.

    Each photo goes through the engine's decode and detector; its largest face is cut by the engine's aligner:
    the 48x48 grey crop, or with `rgb_size` an RGB crop of that side (face-api's input). Photos where no face
    is found are left out (`evaluate_photos` is the end-to-end score). The crops stay in memory: a validation
    set is never written out or trained on.
    """
    from moodlens.engine.analyzer import WORK_SIDE, Analyzer
    from moodlens.engine.classify import FER_CROP, CropSpec
    from moodlens.engine.decode import decode_picture

    cs = class_set("4")
    analyzer = Analyzer(classes="4")
    crops, labels = [], []
    for r in (r for r in labelled_photos(source) if r["label"] in cs.classes):
        picture = decode_picture(r["path"], max_bytes=analyzer.max_bytes, max_pixels=analyzer.max_pixels,
                                 work_side=WORK_SIDE)
        found = [d for d in analyzer.detector.detect(picture.rgb, picture.full if picture.scale < 1 else None)
                 if d.score >= analyzer.min_face_score]
        if not found:
            continue
        d = max(found, key=lambda f: f.box[2] * f.box[3])
        spec = CropSpec(rgb_size, grey=False) if rgb_size else FER_CROP
        crops.append(Analyzer._crop(picture, d, spec))  # the crop analyze() gives a model with that input
        labels.append(cs.index(r["label"]))
    return np.stack(crops), np.array(labels)
