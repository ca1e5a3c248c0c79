"""Small FER2013/FER+-format files the tests write themselves (no real dataset rows)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from moodlens.training.labels import FERPLUS_COLUMNS


def synthetic_faces(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """48x48 uint8 images whose brightest square's position depends on the label (so a net can learn it)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (len(labels), 48, 48)).astype(np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 3)
        images[i, 4 + r * 14: 16 + r * 14, 4 + c * 14: 16 + c * 14] = 230
    return images


def write_fer_csv(path: Path, emotions: list[int], usages: list[str], seed: int = 0) -> Path:
    """A FER2013-format CSV (gzip when the name ends in .gz)."""
    images = synthetic_faces(np.array(emotions), seed)
    lines = ["emotion,pixels,Usage"]
    for e, img, u in zip(emotions, images, usages, strict=True):
        lines.append(f"{e},{' '.join(map(str, img.ravel()))},{u}")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_ferplus_csv(path: Path, votes: list[list[int]], usages: list[str]) -> Path:
    """A FER+ vote file: Usage, Image name, then the 10 vote columns."""
    lines = ["Usage,Image name," + ",".join(FERPLUS_COLUMNS)]
    for i, (v, u) in enumerate(zip(votes, usages, strict=True)):
        lines.append(f"{u},fer{i:07d}.png," + ",".join(map(str, v)))
    path.write_text("\n".join(lines) + "\n")
    return path


def make_fer_pair(tmp: Path, n_train: int = 280, n_val: int = 70, split: str = "PublicTest") -> tuple[Path, Path]:
    """A learnable 7-class FER2013 file and matching FER+ votes (FER+ agrees with FER2013, 8 of 10 votes)."""
    rng = np.random.default_rng(1)
    emotions = list(rng.integers(0, 7, n_train + n_val))
    usages = ["Training"] * n_train + [split] * n_val
    fer_to_plus = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: "neutral"}
    votes = []
    for e in emotions:
        v = [0] * 10
        v[FERPLUS_COLUMNS.index(fer_to_plus[e])] = 8
        v[FERPLUS_COLUMNS.index("neutral" if e != 6 else "happiness")] += 2
        votes.append(v)
    fer = write_fer_csv(tmp / "fer.csv.gz", emotions, usages)
    plus = write_ferplus_csv(tmp / "ferplus.csv", votes, usages)
    return fer, plus
