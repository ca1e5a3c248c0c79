"""Pytest helpers for the scale-out tests: a local S3 server (Ceph RGW via scripts/s3-server.sh) and photo sets.

Load with `pytest_plugins = ["s3_server"]` so the session-scoped fixtures exist once for the whole run.
Tests that need the server skip when the Ceph binaries are absent (scripts/install-system-deps.sh installs them).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "s3-server.sh"
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")


def ceph_available() -> bool:
    """Whether the Ceph daemons the S3 server script needs are installed."""
    return all(shutil.which(b) for b in CEPH_BINARIES)


@dataclass
class S3Server:
    """A running local S3 server: endpoint and the fixed test credentials."""

    dir: Path
    endpoint: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """Environment variables that point boto/s3fs and moodlens at this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "MOODLENS_S3_ENDPOINT": self.endpoint}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key=self.access_key, secret=self.secret_key,
                                 skip_instance_cache=True)

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name


def start_server(directory: Path) -> S3Server:
    """Start scripts/s3-server.sh in `directory` and read back its endpoint and keys."""
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(directory)], capture_output=True, text=True,
                          timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"s3-server.sh start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in (directory / "env").read_text().split("\n")
               if line.startswith("export "))
    return S3Server(directory, env["MOODLENS_S3_ENDPOINT"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])


def stop_server(directory: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """One Ceph S3 server for the whole test session, stopped at the end."""
    if not ceph_available():
        pytest.skip("Ceph (ceph-mon, ceph-osd, radosgw) not installed: run scripts/install-system-deps.sh")
    directory = tmp_path_factory.mktemp("ceph")
    try:
        server = start_server(directory)
    except Exception:
        stop_server(directory)
        raise
    try:
        yield server
    finally:
        stop_server(directory)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch) -> S3Server:
    """The S3 server, with the AWS_* and MOODLENS_S3_ENDPOINT variables set for this test."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MOODLENS_S3_BACKOFF", "0.05")
    return s3_server


# ------------------------------------------------------------------------------------------- photo sets


def _encode(rgb: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def face_photo(i: int) -> tuple[bytes, str]:
    """The i-th variation of skimage's astronaut photo (one face): flip, scale, crop, brightness, format."""
    from skimage import data

    rgb = data.astronaut()
    rng = np.random.default_rng(i)
    # crops that keep the face (it sits around x 170-260, y 40-160 in the 512x512 original)
    x0, y0 = int(rng.integers(0, 120)), int(rng.integers(0, 30))
    x1, y1 = int(rng.integers(330, 513)), int(rng.integers(300, 513))
    rgb = rgb[y0:y1, x0:x1]
    if i % 2:
        rgb = rgb[:, ::-1]
    scale = float(rng.uniform(0.6, 1.3))
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img = img.resize((max(64, int(img.width * scale)), max(64, int(img.height * scale))), Image.BILINEAR)
    rgb = np.clip(np.asarray(img, np.float32) * rng.uniform(0.8, 1.15), 0, 255).astype(np.uint8)
    fmt, ext = ("PNG", ".png") if i % 7 == 3 else ("JPEG", ".jpg")
    return _encode(rgb, fmt, quality=int(rng.integers(75, 96))), ext


def no_face_photo(i: int) -> bytes:
    """A photo without a person: skimage's coffee cup, rocket or Hubble deep field, flipped and brightened.

    (Not cropped: some tight crops of the coffee cup get a ~0.55 face score from the detector.)
    """
    from skimage import data

    rgb = (data.coffee, data.rocket, data.hubble_deep_field)[i % 3]()
    rng = np.random.default_rng(1000 + i)
    if i % 2:
        rgb = rgb[:, ::-1]
    rgb = np.clip(rgb.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
    return _encode(np.ascontiguousarray(rgb), "JPEG", quality=int(rng.integers(75, 96)))


def corrupt_files() -> dict[str, bytes]:
    """Files with image names that are not usable images."""
    good, _ = face_photo(0)
    return {"broken/truncated.jpg": good[: len(good) // 3], "broken/not-an-image.jpg": b"hello, world\n" * 20,
            "broken/empty.png": b""}


def write_photo_set(root: Path, n_faces: int, n_no_face: int = 0, with_corrupt: bool = True) -> list[str]:
    """A photo tree under `root` (face photos in subfolders, no-face photos, corrupt files, one non-image).

    Returns the relative keys of the image files written.
    """
    files: dict[str, bytes] = {}
    for i in range(n_faces):
        data, ext = face_photo(i)
        files[f"people/{i % 4}/astronaut-{i:04d}{ext}"] = data
    for i in range(n_no_face):
        files[f"objects/object-{i:03d}.jpg"] = no_face_photo(i)
    if with_corrupt:
        files.update(corrupt_files())
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "README.txt").write_text("not an image: must not be listed\n")
    return sorted(files)


def upload_tree(server: S3Server, root: Path, bucket: str, prefix: str) -> str:
    """Copy a local tree to s3://bucket/prefix/ and return that URL."""
    fs = server.filesystem()
    fs.pipe({f"{bucket}/{prefix}/{p.relative_to(root).as_posix()}": p.read_bytes()
             for p in sorted(root.rglob("*")) if p.is_file()})
    return f"s3://{bucket}/{prefix}"


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory) -> Path:
    """A few hundred photos on disk: 216 astronaut variations, 24 photos without faces, 3 corrupt files."""
    root = tmp_path_factory.mktemp("photos")
    write_photo_set(root, n_faces=int(os.environ.get("MOODLENS_TEST_PHOTOS", "216")), n_no_face=24)
    return root


# ------------------------------------------------------------------------------------------- comparisons


def sorted_frame(table, strip_prefix: str | None = None):
    """A batch/spark output table as pandas, sorted by (path, face_index), paths made relative if asked."""
    frame = table.to_pandas()
    if strip_prefix is not None:
        assert frame["path"].str.startswith(strip_prefix).all()
        frame["path"] = frame["path"].str.slice(len(strip_prefix))
    return frame.sort_values(["path", "face_index"], na_position="first").reset_index(drop=True)


def assert_same_rows(a, b, strip_a: str | None = None, strip_b: str | None = None) -> None:
    """Two output tables hold the same rows (floats within 1e-5), whatever their order."""
    import pandas as pd

    fa, fb = sorted_frame(a, strip_a), sorted_frame(b, strip_b)
    assert list(fa.columns) == list(fb.columns)
    pd.testing.assert_frame_equal(fa, fb, check_dtype=False, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="session")
def photo_set_batch(photo_set, tmp_path_factory):
    """`moodlens batch` output for the whole photo set (2 workers), as a pyarrow Table."""
    import pyarrow.parquet as pq

    from moodlens.jobs.batch import run_batch

    dest = tmp_path_factory.mktemp("batch") / "photos.parquet"
    run_batch(str(photo_set), str(dest), workers=2, progress=False)
    return pq.read_table(dest)
