"""`moodlens batch`: one row per face, error rows, formats, list files, S3 in and out, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from moodlens.cli import main
from moodlens.jobs import storage
from moodlens.jobs.batch import output_columns, parts_dir, run_batch

# s3_server is a pytest plugin (session fixtures, assertion rewriting): its helpers are imported inside the
# tests, after pytest has loaded it, not at the top.
pytest_plugins = ["s3_server"]


def _by_prefix(table, prefix: str) -> list[dict]:
    return [r for r in table.to_pylist() if r["path"].startswith(prefix)]


@pytest.mark.slow
def test_batch_rows_faces_no_faces_and_errors(photo_set, photo_set_batch):
    t = photo_set_batch
    images = storage.list_images(str(photo_set))
    assert len(images) == 243
    assert t.column_names == output_columns(("angry", "happy", "neutral", "sad"))
    # every image is there; only face rows can repeat a path, with face_index 0, 1, ...
    rows = t.to_pylist()
    assert sorted({r["path"] for r in rows}) == images
    by_path: dict[str, list] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r["face_index"])
    assert all(ix == [None] or ix == list(range(len(ix))) for ix in by_path.values())

    people = _by_prefix(t, str(photo_set / "people"))
    with_face = {r["path"] for r in people if r["face_index"] is not None}
    assert len(with_face) >= 0.9 * 216, "the astronaut variations should nearly all show a face"
    for r in people:
        if r["face_index"] is not None:
            assert r["error"] is None and r["box_w"] > 0 and r["box_h"] > 0 and 0 < r["score"] <= 1
            probs = [r[f"p_{c}"] for c in ("angry", "happy", "neutral", "sad")]
            assert abs(sum(probs) - 1) < 1e-3 and r["expression"] in ("angry", "happy", "neutral", "sad")

    objects = _by_prefix(t, str(photo_set / "objects"))
    assert len(objects) == 24 and all(r["error"] is None for r in objects)
    assert sum(r["face_index"] is None for r in objects) >= 22  # a cup or a rocket is not a face

    broken = {r["path"].rsplit("/", 1)[-1]: r for r in _by_prefix(t, str(photo_set / "broken"))}
    assert sorted(broken) == ["empty.png", "not-an-image.jpg", "truncated.jpg"]
    assert all(r["error"] and r["face_index"] is None and r["expression"] is None for r in broken.values())


def test_formats_by_extension_and_flag(photo_set, tmp_path):
    runner = CliRunner()
    for name, extra in [("o.csv", []), ("o.jsonl", []), ("o.data", ["--format", "csv"])]:
        result = runner.invoke(main, ["batch", str(photo_set / "broken"), str(tmp_path / name), "--workers", "1",
                                      "--no-progress", *extra])
        assert result.exit_code == 1, result.output  # every image failed; the table has their rows
        assert "3 images, 0 faces, 3 errors" in result.output
    csv = pacsv.read_csv(tmp_path / "o.csv")
    assert csv.num_rows == 3 and csv.column_names == output_columns(("angry", "happy", "neutral", "sad"))
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["face_index"] is None and x["error"] for x in lines)
    assert (tmp_path / "o.data").read_text() == (tmp_path / "o.csv").read_text()
    assert not (tmp_path / "o.csv.parts").exists()  # parts are removed after the merge


def test_list_file_input_keeps_order_and_reports_missing(photo_set, tmp_path):
    listing = photo_set / "some.txt"
    listing.write_text("objects/object-001.jpg\n# a comment\nobjects/missing.jpg\nobjects/object-000.jpg\n")
    s = run_batch(str(listing), str(tmp_path / "o.parquet"), workers=1, progress=False, classes="7")
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["object-001.jpg", "missing.jpg", "object-000.jpg"]
    assert rows[1]["error"].startswith("FileNotFoundError") and "p_disgust" in rows[0]
    assert s.images == 3 and s.errors == 1
    listing.write_text("objects/object-001.jpg\n../../etc/passwd\n")
    result = CliRunner().invoke(main, ["batch", str(listing), str(tmp_path / "x.parquet"), "--no-progress"])
    assert result.exit_code == 1 and "line 2" in result.output and "'..'" in result.output
    listing.unlink()


@pytest.mark.slow
def test_s3_source_and_destination(photo_set, photo_set_batch, s3_env, tmp_path):
    from s3_server import assert_same_rows, upload_tree

    bucket = s3_env.new_bucket()
    src = upload_tree(s3_env, photo_set, bucket, "in/photos")
    dest = f"s3://{bucket}/out/photos.parquet"
    result = CliRunner().invoke(main, ["batch", src, dest, "--workers", "2", "--chunk-size", "50",
                                       "--no-progress", "--s3-endpoint", s3_env.endpoint])
    assert result.exit_code == 1, result.output  # the 3 broken images
    assert "243 images" in result.output and "3 errors" in result.output
    table = pq.read_table(s3_env.filesystem().open(dest.removeprefix("s3://")))
    assert_same_rows(table, photo_set_batch, strip_a=src + "/", strip_b=str(photo_set) + "/")
    assert storage.list_files(parts_dir(dest)) == []


def _run_and_kill(args: list[str], ready, timeout: float = 180) -> None:
    """Run `python -m moodlens ARGS` in its own session and SIGKILL the whole group once `ready()` is true."""
    proc = subprocess.Popen([sys.executable, "-m", "moodlens", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def _assert_first_images_once(table, expected, images: list[str], strip_a: str | None = None,
                              strip_b: str | None = None) -> None:
    """`table` has each of `images` exactly once (or its faces once each), with the rows of a clean run."""
    from s3_server import assert_same_rows

    assert sorted({r["path"] for r in table.to_pylist() if r["face_index"] in (None, 0)}) == images
    assert table.num_rows == len(set(zip(table.column("path").to_pylist(), table.column("face_index").to_pylist(),
                                         strict=True)))
    assert_same_rows(table, expected, strip_a=strip_a, strip_b=strip_b)


@pytest.mark.slow
def test_resume_after_sigkill_gives_every_image_once(photo_set, photo_set_batch, tmp_path):
    dest = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    args = ["batch", str(photo_set), str(dest), "--chunk-size", "8", "--limit", "96", "--no-progress"]
    _run_and_kill([*args, "--workers", "1"],
                  lambda: parts.is_dir() and len([p for p in os.listdir(parts) if p.endswith(".parquet")]) >= 3)
    done = sorted(p for p in os.listdir(parts) if p.endswith(".parquet"))
    assert 3 <= len(done) < 12 and not dest.exists()

    result = CliRunner().invoke(main, [*args, "--workers", "2"])
    assert result.exit_code == 1, result.output  # the first 96 include the 3 broken images
    assert "3 errors" in result.output
    assert f"resuming: {len(done)} of 12 parts already done" in result.output
    first96 = storage.list_images(str(photo_set))[:96]
    expected = photo_set_batch.filter(pc.is_in(photo_set_batch.column("path"), value_set=pa.array(first96)))
    _assert_first_images_once(pq.read_table(dest), expected, first96)
    assert not parts.exists()


def _s3_parts(s3_env, parts_url: str) -> list[str]:
    """Part objects under an S3 prefix, listed by a fresh client (no listing cache of its own)."""
    return [k for k in s3_env.filesystem().find(parts_url.removeprefix("s3://")) if k.endswith(".parquet")]


@pytest.mark.slow
def test_s3_resume_after_sigkill_with_two_workers(photo_set, photo_set_batch, s3_env):
    """Issue 13 item 5: the first rerun with 2+ workers failed with FileNotFoundError for a part it had just
    written (the parent's s3fs listing cache, filled before the workers wrote); `--workers 1` and a second
    rerun worked."""
    from s3_server import upload_tree

    bucket = s3_env.new_bucket()
    src = upload_tree(s3_env, photo_set, bucket, "in/photos")
    dest = f"s3://{bucket}/out/photos.parquet"
    # 2 workers: the default on the 2-core test box, and what the bug needs. 30 parts and one polling client, so
    # the kill lands well before the last part even on a loaded machine (2 warm workers write ~8 parts a second)
    args = ["batch", src, dest, "--workers", "2", "--chunk-size", "8", "--limit", "240", "--no-progress"]
    poll = s3_env.filesystem()

    def parts_written() -> int:
        poll.invalidate_cache()
        return len([k for k in poll.find(parts_dir(dest).removeprefix("s3://")) if k.endswith(".parquet")])

    _run_and_kill(args, lambda: parts_written() >= 3)
    done = len(_s3_parts(s3_env, parts_dir(dest)))
    assert 3 <= done < 30 and not s3_env.filesystem().exists(dest.removeprefix("s3://"))

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # exit 1 for the 3 broken images, not a FileNotFoundError
    assert "240 images" in result.output and "3 errors" in result.output
    assert f"resuming: {done} of 30 parts already done" in result.output
    first = storage.list_images(src)[:240]
    local = storage.list_images(str(photo_set))[:240]
    expected = photo_set_batch.filter(pc.is_in(photo_set_batch.column("path"), value_set=pa.array(local)))
    table = pq.read_table(s3_env.filesystem().open(dest.removeprefix("s3://")))
    _assert_first_images_once(table, expected, first, strip_a=src + "/", strip_b=str(photo_set) + "/")
    assert _s3_parts(s3_env, parts_dir(dest)) == []


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces or ")"
        except (OSError, ValueError, IndexError):
            continue  # not a process, or it just ended
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table, found, todo = _process_table(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, (ppid, _) in table.items() if ppid == parent}
        found |= children
        todo += children
    return found


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running; a zombie has ended (nothing may reap orphans in a container)."""
    table = _process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_parent_ends_its_workers_and_resource_tracker(photo_set, tmp_path):
    """Issue 13 item 5: `kill -9` of the batch parent left its pool workers and multiprocessing's resource
    tracker running (21 orphans holding 3.3 GB, 40 minutes later)."""
    parts = tmp_path / "out.parquet.parts"
    proc = subprocess.Popen([sys.executable, "-m", "moodlens", "batch", str(photo_set), str(tmp_path / "out.parquet"),
                             "--workers", "2", "--chunk-size", "4", "--no-progress"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        # 2 workers and the tracker, and a part written: the workers are past their initializer
        while time.monotonic() < deadline and proc.poll() is None:
            run = _descendants(proc.pid)
            if len(run) >= 3 and parts.is_dir() and any(p.endswith(".parquet") for p in os.listdir(parts)):
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(run) >= 3, proc.stderr.read().decode() if proc.poll() else run
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its group
        proc.wait()
        deadline = time.monotonic() + 5
        while _alive(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(run) == set(), "processes of the killed run still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _alive(run):  # leave no orphans behind a failed assertion
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_parent_watchdog_ends_a_worker_whose_parent_died():
    """The portable fallback alone (no PR_SET_PDEATHSIG): a process whose parent ends exits within its interval."""
    child = ("import sys, time\n"
             "from moodlens.jobs.batch import _start_parent_watchdog\n"
             "_start_parent_watchdog(int(sys.argv[1]), 0.05)\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    middle = ("import os, subprocess, sys\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())], stdout=subprocess.PIPE)\n"
              "assert p.stdout.readline() == b'ready\\n'\n"
              "print(p.pid)\n")  # and exit, leaving the child to its watchdog
    out = subprocess.run([sys.executable, "-c", middle], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    try:
        deadline = time.monotonic() + 5
        while _alive({pid}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive({pid})
    finally:
        if _alive({pid}):
            os.kill(pid, signal.SIGKILL)


def test_rows_carry_uncertain_and_quality_and_the_table_names_its_model(astronaut_jpeg_bytes, tmp_path):
    from moodlens import __version__

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "astronaut.jpg").write_bytes(astronaut_jpeg_bytes)
    result = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), str(tmp_path / "out.parquet"), "--workers", "1",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "out.parquet")
    (row,) = table.to_pylist()
    assert row["quality"] == "ok" and row["uncertain"] is (max(row[f"p_{c}"] for c in
                                                               ("angry", "happy", "neutral", "sad")) < 0.5)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["moodlens_version"] == __version__ and meta["model"] == "moodlens expression-4"
    assert meta["classes"] == "angry,happy,neutral,sad"
