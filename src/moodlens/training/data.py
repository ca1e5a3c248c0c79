"""Dataset loaders: the FER2013 CSV, the FER+ vote file (joined by line position) and image-folder trees.

Every loader returns a `FaceDataset`: 48x48 uint8 grayscale faces with labels in one `ClassSet`,
as hard labels (`y`, class index) and a target distribution (`target`, rows sum to 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from moodlens.engine.align import FACE_SIZE
from moodlens.engine.decode import IMAGE_SUFFIXES
from moodlens.training.labels import FER2013_CLASSES, FERPLUS_COLUMNS, FERPLUS_TO_CLASS, ClassSet

# What the model learns from: FER2013's label, FER+'s majority vote, FER+'s vote distribution,
# or an even mix of FER2013's label and FER+'s distribution.
# "heads" trains two heads on one trunk: FER2013's label (7 classes, every row) and FER+'s vote distribution.
Targets = Literal["fer2013", "ferplus", "ferplus-soft", "mixed", "heads"]
TARGETS: tuple[str, ...] = ("fer2013", "ferplus", "ferplus-soft", "mixed", "heads")


@dataclass
class FaceDataset:
    """Faces (N, 48, 48) uint8, hard labels (N,) and soft targets (N, C) over `class_set`."""

    images: np.ndarray
    y: np.ndarray
    target: np.ndarray
    class_set: ClassSet
    source_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ferplus_target: np.ndarray | None = None  # (N, 8) FER+ head targets with targets="heads"; zero rows: none

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.class_set.classes)}


def read_fer2013(path: str | Path) -> pd.DataFrame:
    """Read a FER2013 CSV (`emotion,pixels,Usage`, plain or .gz) into a frame with an `image` column."""
    frame = pd.read_csv(path, dtype={"emotion": np.int64, "pixels": str, "Usage": str})
    missing = {"emotion", "pixels", "Usage"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a FER2013 CSV, missing columns {sorted(missing)}")
    images = np.stack([np.fromstring(p, dtype=np.uint8, sep=" ") for p in frame["pixels"]]) if len(frame) else \
        np.zeros((0, FACE_SIZE * FACE_SIZE), np.uint8)
    if images.shape[1] != FACE_SIZE * FACE_SIZE:
        raise ValueError(f"{path}: pixel rows must hold {FACE_SIZE * FACE_SIZE} values, got {images.shape[1]}")
    frame = frame.drop(columns="pixels")
    frame["image"] = list(images.reshape(-1, FACE_SIZE, FACE_SIZE))
    return frame


def read_ferplus(path: str | Path) -> pd.DataFrame:
    """Read the FER+ vote file (`fer2013new.csv`); rows line up with FER2013 rows by position."""
    frame = pd.read_csv(path)
    missing = set(FERPLUS_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a FER+ vote file, missing columns {sorted(missing)}")
    frame[list(FERPLUS_COLUMNS)] = frame[list(FERPLUS_COLUMNS)].fillna(0)
    return frame


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ "majority" label per row as a column index into FERPLUS_COLUMNS, or -1 for no label.

    microsoft/FERPlus rule: drop single votes, keep the top column if it has more than half of the rest.
    """
    v = np.where(votes <= 1, 0, votes).astype(np.float64)
    total = v.sum(axis=1)
    top = v.argmax(axis=1)
    has_majority = v[np.arange(len(v)), top] > total / 2
    return np.where(has_majority & (total > 0), top, -1)


def ferplus_distribution(votes: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """Vote distribution over `class_set` (raw votes, restricted to our classes); rows with none are 0."""
    out = np.zeros((len(votes), len(class_set)), np.float32)
    for col, name in enumerate(FERPLUS_COLUMNS):
        cls = FERPLUS_TO_CLASS[name]
        if cls in class_set.classes:
            out[:, class_set.index(cls)] = votes[:, col]
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


def ferplus_head_targets(votes: np.ndarray) -> np.ndarray:
    """FER+ head targets (N, 8) over FERPLUS_HEAD from the 10 vote columns; all-zero rows have no target.

    microsoft/FERPlus `_process_data` in "crossentropy" mode: single votes dropped, then the top emotions taken
    in vote order (at most 3) until they hold 75% of the votes; a row whose kept emotions hold no more than half
    the votes, or where "unknown" or "not a face" wins, gets no target (FER+ leaves it out of training).
    """
    out = np.zeros((len(votes), 8), np.float32)
    for row, raw in enumerate(np.where(votes <= 1, 0, votes).astype(np.float64)):
        total, kept, taken, count, valid = raw.sum(), np.zeros(10), 0.0, 0, True
        while taken < 0.75 * total and count < 3 and valid:
            top = raw.max()
            for i in range(10):
                if raw[i] == top:
                    kept[i], raw[i] = top, 0
                    taken += top
                    count += 1
                    if i >= 8:  # unknown / not-a-face tie with the top: stop there
                        valid = False
                        if kept.sum() > top:
                            kept[i] = 0
                            count -= 1
                        break
        if total == 0 or kept.sum() <= 0.5 * total or count > 3 or kept.argmax() >= 8:
            continue
        out[row] = kept[:8] / kept[:8].sum()
    return out


def load_fer(
    fer2013: str | Path,
    split: str,
    class_set: ClassSet,
    ferplus: str | Path | None = None,
    targets: Targets = "fer2013",
    frame: pd.DataFrame | None = None,
    votes: pd.DataFrame | None = None,
) -> FaceDataset:
    """Rows of `split` labelled in `class_set`.

    With `targets="fer2013"` the hard label is FER2013's (rows of other classes left out). With FER+ targets
    the hard label is the FER+ majority, and rows FER+ marks not-a-face, with no majority, or with a majority
    outside `class_set` are dropped. Pass `frame`/`votes` to reuse already-read files.
    """
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}; choose one of {TARGETS}")
    frame = read_fer2013(fer2013) if frame is None else frame
    rows = np.flatnonzero(frame["Usage"].to_numpy() == split)
    if len(rows) == 0:
        raise ValueError(f"{fer2013}: no rows with Usage == {split!r} (have {sorted(frame['Usage'].unique())})")
    n_classes = len(class_set)
    fer_label = np.array([FER2013_CLASSES[e] for e in frame["emotion"].to_numpy()[rows]])
    fer_y = np.array([class_set.index(c) if c in class_set.classes else -1 for c in fer_label])

    if targets == "heads":
        if ferplus is None and votes is None:
            raise ValueError("targets='heads' needs the FER+ vote file")
        votes = read_ferplus(ferplus) if votes is None else votes
        if len(votes) != len(frame):
            raise ValueError(f"FER+ file has {len(votes)} rows, FER2013 file {len(frame)}: they must align")
        keep = fer_y >= 0
        plus = ferplus_head_targets(votes[list(FERPLUS_COLUMNS)].to_numpy(np.float64)[rows])[keep]
        images = np.stack(frame["image"].to_numpy()[rows][keep])
        return FaceDataset(images, fer_y[keep].astype(np.int64), np.eye(n_classes, dtype=np.float32)[fer_y[keep]],
                           class_set, rows[keep], plus)
    if targets == "fer2013":
        keep = fer_y >= 0
        y = fer_y
        target = np.eye(n_classes, dtype=np.float32)[np.maximum(y, 0)]
    else:
        if ferplus is None and votes is None:
            raise ValueError(f"targets={targets!r} needs the FER+ vote file")
        votes = read_ferplus(ferplus) if votes is None else votes
        if len(votes) != len(frame):
            raise ValueError(f"FER+ file has {len(votes)} rows, FER2013 file {len(frame)}: they must align")
        v = votes[list(FERPLUS_COLUMNS)].to_numpy(np.float64)[rows]
        major = ferplus_majority(v)
        major_cls = np.array([FERPLUS_TO_CLASS[FERPLUS_COLUMNS[m]] if m >= 0 else None for m in major])
        y = np.array([class_set.index(c) if c in class_set.classes else -1 for c in major_cls])
        keep = y >= 0
        soft = ferplus_distribution(v, class_set)
        if targets == "ferplus":
            target = np.eye(n_classes, dtype=np.float32)[np.maximum(y, 0)]
        elif targets == "ferplus-soft":
            target = soft
        else:  # mixed: half FER2013's label (where it is one of ours), half the FER+ votes
            fer_onehot = np.eye(n_classes, dtype=np.float32)[np.maximum(fer_y, 0)] * (fer_y >= 0)[:, None]
            mix = 0.5 * fer_onehot + 0.5 * soft
            total = mix.sum(axis=1, keepdims=True)
            target = np.divide(mix, total, out=np.zeros_like(mix), where=total > 0)
    images = np.stack(frame["image"].to_numpy()[rows][keep]) if keep.any() else \
        np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    return FaceDataset(images, y[keep].astype(np.int64), target[keep].astype(np.float32), class_set, rows[keep])


def split_names(fer2013: str | Path) -> list[str]:
    """The `Usage` values present in a FER2013 CSV."""
    return sorted(pd.read_csv(fer2013, usecols=["Usage"])["Usage"].unique())


def iter_image_files(root: str | Path) -> Iterable[Path]:
    """Image files under `root`, recursively, in a stable order."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def load_image_folder(root: str | Path, class_set: ClassSet, detect_faces: bool = True) -> FaceDataset:
    """A labelled tree `root/<label>/*.jpg|png|...` of photos or face crops, as 48x48 faces.

    With `detect_faces`, each photo goes through the app's own decode -> detect -> align path and every face
    found is a sample; otherwise each image is taken as a face crop and only resized. Folders whose name is not
    a class of `class_set` are skipped; unreadable images are skipped with a warning.
    """
    from moodlens.engine.faces import face_crops_from_file

    images, labels = [], []
    for label_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        label = label_dir.name.lower()
        if label not in class_set.classes:
            continue
        for path in iter_image_files(label_dir):
            for crop in face_crops_from_file(path, detect_faces=detect_faces):
                images.append(crop)
                labels.append(class_set.index(label))
    y = np.array(labels, np.int64)
    arr = np.stack(images) if images else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    return FaceDataset(arr, y, np.eye(len(class_set), dtype=np.float32)[y], class_set, np.arange(len(y)))
