"""Face-crop shards: what `moodlens spark-prepare` writes and `moodlens train --shards` reads.

A shard is a Parquet file of aligned 48x48 grayscale faces with columns path, face_index, label,
pixels (2304 bytes, row-major), width, height. `load_shards` turns a folder or S3 prefix of them into train
and validation `FaceDataset`s, split by a hash of the photo's path so faces of one photo stay together.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from moodlens.jobs import storage
from moodlens.training.data import FACE_SIZE, FaceDataset
from moodlens.training.labels import ClassSet

log = logging.getLogger(__name__)
SHARD_COLUMNS = ("path", "face_index", "label", "pixels", "width", "height")


def shard_schema():
    """The pyarrow schema of a face-crop shard."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("face_index", pa.int32()), ("label", pa.string()),
                      ("pixels", pa.binary()), ("width", pa.int32()), ("height", pa.int32())])


def face_crops(data: bytes) -> list[np.ndarray]:
    """Aligned (48, 48) uint8 crops of every face in an encoded image (moodlens.engine.faces.face_crops after decoding;
    unlike face_crops_from_file it raises on a bad image, so the caller can name its path)."""
    from moodlens.engine.decode import decode_image
    from moodlens.engine.faces import face_crops as crops_of

    return crops_of(decode_image(data))


def face_crop_rows(path: str, label: str, data: bytes | None = None, endpoint: str | None = None) -> list[dict]:
    """Shard rows for one labelled photo; an unreadable photo gives none (logged), so one bad file never
    stops a run. An unreachable object store still raises."""
    try:
        crops = face_crops(storage.read_bytes(path, endpoint) if data is None else data)
    except storage.StorageUnavailableError:
        raise
    except Exception as exc:  # a bad photo is skipped, like moodlens.training.data.load_image_folder does
        log.warning("skipping %s: %s: %s", path, type(exc).__name__, exc)
        return []
    return [{"path": path, "face_index": i, "label": label, "pixels": crop.tobytes(), "width": FACE_SIZE,
             "height": FACE_SIZE} for i, crop in enumerate(crops)]


def shard_files(path_or_url: str, endpoint: str | None = None) -> list[str]:
    """The Parquet files of a shard folder/prefix (Spark's `_SUCCESS`, `.crc` and hidden files left out)."""
    if path_or_url.endswith(".parquet") and not storage.is_url(path_or_url) and os.path.isfile(path_or_url):
        return [path_or_url]
    files = [f for f in storage.list_files(path_or_url, {".parquet"}, endpoint)
             if not f.rsplit("/", 1)[-1].startswith(("_", "."))]
    if not files and path_or_url.endswith(".parquet") and storage.exists(path_or_url, endpoint):
        return [path_or_url]
    return files


def read_shards(path_or_url: str, endpoint: str | None = None):
    """Every shard under `path_or_url` as one pyarrow Table, sorted by (path, face_index)."""
    import pyarrow as pa

    from moodlens.jobs.batch import read_parquet

    files = shard_files(path_or_url, endpoint)
    if not files:
        raise FileNotFoundError(f"{path_or_url}: no Parquet shards found (make them with `moodlens spark-prepare`)")
    tables = []
    for f in files:
        t = read_parquet(f, endpoint)
        missing = set(SHARD_COLUMNS) - set(t.column_names)
        if missing:
            raise ValueError(f"{f}: not a face-crop shard, missing columns {sorted(missing)}")
        tables.append(t.select(list(SHARD_COLUMNS)).cast(shard_schema()))
    # sorted, so the datasets do not depend on how many shards Spark happened to write
    return pa.concat_tables(tables).sort_by([("path", "ascending"), ("face_index", "ascending")])


def path_hash(path: str, seed: int) -> float:
    """A stable hash of (seed, path) in [0, 1) (not Python's hash(), which changes between processes)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{path}".encode()).digest()[:8], "big") / 2.0**64


def in_validation(path: str, seed: int, val_fraction: float) -> bool:
    """Whether a photo belongs to the validation split (before `split_photos`' guard against an empty side)."""
    return path_hash(path, seed) < val_fraction


def split_photos(paths: list[str], seed: int, val_fraction: float) -> set[str]:
    """The validation photos: those whose hash is under `val_fraction`, so a photo keeps its side when others
    are added. With two or more photos neither side is left empty: the lowest-hash photo goes to validation,
    or the highest-hash one to training."""
    unique = sorted(set(paths), key=lambda p: path_hash(p, seed))
    val = {p for p in unique if in_validation(p, seed, val_fraction)}
    if len(unique) >= 2 and val_fraction > 0:
        if not val:
            val = {unique[0]}
        elif len(val) == len(unique):
            val.discard(unique[-1])
    return val


def load_shards(path_or_url: str, class_set: ClassSet, seed: int = 1234, val_fraction: float = 0.1,
                endpoint: str | None = None) -> tuple[FaceDataset, FaceDataset]:
    """(train, validation) FaceDatasets from face-crop shards, keeping labels in `class_set`.

    Photos go wholly to one side by a hash of their path, so faces of one photo never straddle the split.
    `source_rows` index the sorted shard table.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    table = read_shards(path_or_url, endpoint)
    labels = np.array(table.column("label").to_pylist(), dtype=object)
    keep = np.flatnonzero(np.isin(labels, list(class_set.classes)))
    if len(keep) == 0:
        found = sorted(set(labels.tolist()))
        raise ValueError(f"{path_or_url}: no faces labelled in {list(class_set.classes)} (labels found: {found})")
    skipped = sorted(set(labels.tolist()) - set(class_set.classes))
    if skipped:
        log.warning("%s: labels not in class set %s skipped: %s", path_or_url, class_set.name, skipped)
    width, height = table.column("width").to_numpy(), table.column("height").to_numpy()
    if not (np.all(width[keep] == FACE_SIZE) and np.all(height[keep] == FACE_SIZE)):
        raise ValueError(f"{path_or_url}: faces must be {FACE_SIZE}x{FACE_SIZE}")
    pixels = table.column("pixels").to_pylist()
    if any(len(pixels[i]) != FACE_SIZE * FACE_SIZE for i in keep):
        raise ValueError(f"{path_or_url}: every face must hold {FACE_SIZE * FACE_SIZE} pixel bytes")
    images = np.frombuffer(b"".join(pixels[i] for i in keep), np.uint8).reshape(-1, FACE_SIZE, FACE_SIZE)
    y = np.array([class_set.index(label) for label in labels[keep]], np.int64)
    paths = table.column("path").to_pylist()
    val_photos = split_photos([paths[i] for i in keep], seed, val_fraction)
    val = np.array([paths[i] in val_photos for i in keep], bool)
    onehot = np.eye(len(class_set), dtype=np.float32)

    def subset(mask: np.ndarray) -> FaceDataset:
        return FaceDataset(images[mask].copy(), y[mask], onehot[y[mask]], class_set, keep[mask].astype(np.int64))

    return subset(~val), subset(val)
