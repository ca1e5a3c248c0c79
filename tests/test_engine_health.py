"""A model file changed under a running server (truncated by a botched deploy, a full disk, a copy in progress)
must not crash its workers or leave analyze failing while health says ok: the models are read into memory at
start-up, and health reflects the engine (a self-test invoke at start, a flag set when the engine fails)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from moodlens.engine.classify import ExpressionClassifier, shipped_model_path
from moodlens.engine.errors import ModelError
from web_helpers import astronaut, jpeg

pytest.importorskip("skimage")


def mosaic(n: int = 2) -> bytes:
    """`n` x `n` astronauts: several faces, so the classifier runs a batch size other than the start-up one."""
    side = astronaut()[::2, ::2]
    return jpeg(np.concatenate([np.concatenate([side] * n, axis=1)] * n, axis=0))


def copied_model(folder: Path) -> Path:
    """The shipped 4-class model and its card, copied into `folder`."""
    src = shipped_model_path("4")
    folder.mkdir(parents=True, exist_ok=True)
    for path in (src, src.with_suffix(".json")):
        shutil.copy(path, folder / path.name)
    return folder / src.name


def truncate(path: Path, keep: float = 0.3) -> None:
    """Cut `path` short in place (same inode: what a mapping of it sees), as a failed overwrite does."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def worker_pids(master: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    except OSError:
        return []


def test_classifier_keeps_working_after_its_file_is_truncated(tmp_path):
    path = copied_model(tmp_path / "models")
    clf = ExpressionClassifier(path)
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.float32)
    before = clf.predict(faces)
    truncate(path)
    with ThreadPoolExecutor(3) as pool:  # concurrent calls build more interpreters, after the truncation
        outs = list(pool.map(lambda n: clf.predict(faces[:n]), [1, 2, 3, 3, 2, 1]))
    assert np.allclose(outs[2], before, atol=1e-5)
    assert all(np.allclose(o, before[: len(o)], atol=1e-5) for o in outs)


def test_classifier_self_test_runs_at_start(tmp_path):
    clf = ExpressionClassifier(copied_model(tmp_path / "models"))
    clf.self_test()  # a tiny invoke: raises ModelError when the engine gives no usable output
    assert clf.healthy


@pytest.mark.slow
def test_live_server_survives_its_model_file_being_truncated(tmp_path):
    from live_server import serve

    path = copied_model(tmp_path / "models")
    photo = mosaic()
    with serve("--workers", "2", "--threads", "2", "--rate-limit", "0", "--model", str(path),
               log_dir=tmp_path) as server:
        status, _, body = server.request("POST", "/api/v1/analyze", photo, "image/jpeg")
        assert status == 200 and len(json.loads(body)["faces"]) >= 3
        truncate(path)
        # a fresh worker (forked from the master after the truncation) must work too
        os.kill(worker_pids(server.proc.pid)[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(worker_pids(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: server.request("POST", "/api/v1/analyze", photo, "image/jpeg"),
                                    range(12)))
        assert [a[0] for a in answers] == [200] * 12, [a[2][:200] for a in answers if a[0] != 200]
        assert all(len(json.loads(a[2])["faces"]) >= 3 for a in answers)
        status, _, body = server.request("GET", "/api/v1/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert server.proc.poll() is None
    log = server.log.read_text()
    assert "SIGBUS" not in log and "Traceback" not in log, log[-3000:]


def test_a_truncated_model_is_refused_at_start(tmp_path):
    path = copied_model(tmp_path / "models")
    truncate(path)
    with pytest.raises(ModelError, match=path.name) as info:
        ExpressionClassifier(path)
    assert "\n" not in str(info.value)
