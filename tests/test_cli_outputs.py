"""`moodlens analyze` and `moodlens batch` read only what they were given and write only where they were told:
no write through a planted link, no hang on a FIFO or device, atomic outputs, CSV cells that spreadsheets and
terminals take as text, `-q`, exit statuses; and `moodlens serve`'s start-up checks. Real files everywhere; a
real subprocess where a hang, a file-size limit or the terminal (file descriptor 2) is what is tested."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import encode
from moodlens.cli import main
from moodlens.engine.classify import shipped_model_path

pytest.importorskip("skimage")

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def photo(astronaut_rgb) -> bytes:
    return encode(astronaut_rgb)


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory, astronaut_rgb) -> bytes:
    """A 6-frame mp4 of the astronaut."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    frame = cv2.cvtColor(cv2.resize(astronaut_rgb, (256, 256)), cv2.COLOR_RGB2BGR)
    for i in range(6):
        writer.write(np.roll(frame, i * 3, axis=1))
    writer.release()
    return path.read_bytes()


def analyze(*args: str):
    return CliRunner().invoke(main, ["analyze", "--workers", "1", *args], catch_exceptions=False)


def moodlens(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moodlens", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def records(stdout: str) -> dict[str, dict]:
    """JSON lines by file name."""
    return {Path(r["path"]).name: r for r in map(json.loads, stdout.splitlines())}


def files_under(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: a file's bytes, a link's target."""
    return {p.relative_to(folder).as_posix(): str(os.readlink(p)) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


# ------------------------------------------------------------------------------ writes never follow links


@pytest.mark.parametrize("planted", ["clip.timeline.csv", "clip.timeline.png"])
def test_a_planted_timeline_link_is_refused_and_its_target_kept(tmp_path, video_bytes, planted):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(video_bytes)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (folder / planted).symlink_to(precious)
    result = analyze(str(folder / "clip.mp4"), "-q", "--every", "3")
    assert result.exit_code == 1
    error = records(result.stdout)["clip.mp4"]["error"]
    assert error.startswith("UnsafeOutputError") and "symlink" in error and "\n" not in error
    assert precious.read_text() == "keep me" and (folder / planted).is_symlink()
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_timelines_go_beside_their_video_and_reruns_replace_them(tmp_path, video_bytes):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "clip.mp4").write_bytes(video_bytes)
    for _ in range(2):
        result = analyze(str(tmp_path), "-q", "--every", "3")
        assert result.exit_code == 0, result.output
    assert sorted(files_under(tmp_path)) == ["sub/clip.mp4", "sub/clip.timeline.csv", "sub/clip.timeline.png"]


def test_annotate_never_writes_through_links_in_its_folder(tmp_path, photo):
    src, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    (src / "nested").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "nested/c.jpg"):
        (src / name).write_bytes(photo)
    outside.mkdir()
    (outside / "precious.jpg").write_bytes(b"keep me")
    out.mkdir()
    (out / "a.jpg").symlink_to(outside / "precious.jpg")  # a planted file link
    (out / "nested").symlink_to(outside)  # a planted folder link
    mine = tmp_path / "mine.jpg"
    mine.write_bytes(b"the user's own file")
    os.link(mine, out / "b.jpg")  # an earlier output hard-linked to a user's file: replaced, never written into
    before = files_under(outside)
    result = analyze("--annotate", str(out), str(src), "-q")
    assert result.exit_code == 1
    got = records(result.stdout)
    assert got["a.jpg"]["error"].startswith("UnsafeOutputError") and "is a symlink" in got["a.jpg"]["error"]
    assert got["c.jpg"]["error"].startswith("UnsafeOutputError") and "'nested'" in got["c.jpg"]["error"]
    assert got["b.jpg"]["error"] is None
    assert files_under(outside) == before and mine.read_bytes() == b"the user's own file"
    assert (out / "b.jpg").read_bytes()[:2] == b"\xff\xd8" and (out / "a.jpg").is_symlink()
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_write_that_fails_midway_leaves_no_truncated_image(tmp_path, photo):
    """A full disk, for real: the subprocess may write files of at most 20 kB (RLIMIT_FSIZE; Python ignores
    SIGXFSZ, so the write fails with EFBIG as it would with ENOSPC), and the annotated copy is bigger."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes(photo)
    out = tmp_path / "out"
    out.mkdir()
    (out / "face.jpg").write_bytes(b"an earlier run's copy")
    limit = 20_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = moodlens("analyze", "-q", "--workers", "1", "--annotate", str(out), str(tmp_path / "in"),
                    preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert "File too large" in records(proc.stdout)["face.jpg"]["error"]
    assert files_under(out) == {"face.jpg": b"an earlier run's copy"}  # untouched, and no temporary file left


# ------------------------------------------------------------------------------ reads: regular files only


def test_fifos_and_devices_are_refused_at_once(tmp_path, photo):
    """Each was a hang (a FIFO waits for a writer) or a read until memory ran out (/dev/zero, /dev/urandom)."""
    for fifo in ("pipe.jpg", "pipe.mp4"):
        os.mkfifo(tmp_path / fifo)
    (tmp_path / "random.jpg").symlink_to("/dev/urandom")
    (tmp_path / "face.jpg").write_bytes(photo)
    names = ["pipe.jpg", "pipe.mp4", "random.jpg", "face.jpg"]
    proc = moodlens("analyze", "-q", "--workers", "1", "/dev/zero", *(str(tmp_path / n) for n in names), timeout=60)
    assert proc.returncode == 1, proc.stderr
    got = records(proc.stdout)
    for name in ("zero", "pipe.jpg", "pipe.mp4", "random.jpg"):
        assert got[name]["error"].startswith("OSError") and "not a regular file" in got[name]["error"], got[name]
    assert got["face.jpg"]["error"] is None and len(got["face.jpg"]["faces"]) == 1


def test_analyze_and_batch_list_a_folder_alike(tmp_path, photo):
    """Links inside the folder are followed, links out of it skipped, special files reported: by both commands."""
    pytest.importorskip("pyarrow")
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "ok.jpg").write_bytes(photo)
    (tmp_path / "secret.jpg").write_bytes(photo)
    (root / "link-out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "dir-out").symlink_to(tmp_path)
    (root / "zero.jpg").symlink_to("/dev/zero")
    (root / "sub" / "link-in.jpg").symlink_to(root / "ok.jpg")
    os.mkfifo(root / "pipe.jpg")
    expected = {"ok.jpg", "pipe.jpg", "sub/link-in.jpg"}

    seen = moodlens("analyze", "-q", "--workers", "1", str(root), timeout=60)
    dest = tmp_path / "rows.jsonl"
    batch = moodlens("batch", "-q", "--workers", "1", str(root), str(dest), timeout=60)
    assert seen.returncode == batch.returncode == 1, seen.stderr + batch.stderr  # the FIFO failed
    by_analyze = {os.path.relpath(r["path"], root): r["error"] for r in map(json.loads, seen.stdout.splitlines())}
    by_batch = {os.path.relpath(r["path"], root): r["error"] for r in map(json.loads, dest.read_text().splitlines())}
    assert set(by_analyze) == set(by_batch) == expected
    for errors in (by_analyze, by_batch):
        assert errors["ok.jpg"] is None and errors["sub/link-in.jpg"] is None
        assert "not a regular file" in errors["pipe.jpg"]
    assert "link-out.jpg: it links outside" in seen.stderr and "link-out.jpg: it links outside" in batch.stderr


def test_list_entries_cannot_leave_through_a_linked_folder(tmp_path, photo):
    pytest.importorskip("pyarrow")
    folder = tmp_path / "list"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(photo)
    (folder / "dirlink").symlink_to("/etc")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    listing = folder / "photos.txt"
    listing.write_text("ok.jpg\ndirlink/passwd\nzero.jpg\n")
    dest = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(listing), str(dest), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "line 2: 'dirlink/passwd': leads outside the list's folder through a symlink" in result.output
    assert "line 3: 'zero.jpg'" in result.output and "line 1" not in result.output
    assert not dest.exists() and not Path(str(dest) + ".parts").exists()


def test_batch_refuses_a_linked_destination_before_any_work(tmp_path, photo):
    pytest.importorskip("pyarrow")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.jpg").write_bytes(photo)
    precious = tmp_path / "precious.csv"
    precious.write_text("keep me")
    for link in ("out.csv", "out.csv.parts"):
        (tmp_path / link).symlink_to(precious if link == "out.csv" else tmp_path / "in")
        result = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), str(tmp_path / "out.csv"), "-q"])
        assert result.exit_code == 2 and "is a symlink" in result.output, result.output
        (tmp_path / link).unlink()
    assert precious.read_text() == "keep me" and sorted(os.listdir(tmp_path / "in")) == ["ok.jpg"]


# ------------------------------------------------------------------------------ CSV and terminal text


@pytest.fixture(scope="module")
def formula_model(tmp_path_factory) -> Path:
    """The shipped 4-class model under class names a spreadsheet would run as formulas."""
    path = tmp_path_factory.mktemp("model") / "m.tflite"
    shutil.copy(shipped_model_path("4"), path)
    path.with_suffix(".json").write_text(json.dumps({"classes": ['=HYPERLINK("http://x.test","y")', "+SUM(1)",
                                                                 "-2+3", "@A1"]}))
    return path


def test_csv_cells_are_text_for_spreadsheets_and_terminals(tmp_path, photo, video_bytes, formula_model,
                                                          monkeypatch):
    pytest.importorskip("pyarrow")
    names = ["=1+1.jpg", "\x1b[31mred\x07.jpg", "clip\x1b]0;title\x07.mp4"]
    for name in names:
        (tmp_path / name).write_bytes(video_bytes if name.endswith(".mp4") else photo)
    monkeypatch.chdir(tmp_path)  # relative names: the path cell starts with the name itself
    dest = tmp_path / "out" / "rows.csv"
    batch = CliRunner().invoke(main, ["batch", ".", str(dest), "--model", str(formula_model), "--workers", "1", "-q"])
    assert batch.exit_code == 0, batch.output
    text = dest.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert "\x1b" not in text and {r["expression"] for r in rows} == {"'+SUM(1)"}
    assert sorted(Path(r["path"]).name for r in rows) == ["=1+1.jpg", "\\x1b[31mred\\x07.jpg"]
    assert not any(cell.startswith(FORMULA_START) for r in rows for k, cell in r.items() if k in ("path", "error"))

    result = analyze("--csv", "--model", str(formula_model), "--every", "3", *names)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert [r["path"] for r in rows] == ["'=1+1.jpg", "\\x1b[31mred\\x07.jpg"]
    assert {r["expression"] for r in rows} == {"'+SUM(1)"}  # the astronaut is happy, the second class
    assert "p_=HYPERLINK" in result.stdout.splitlines()[0]  # a header cell starting with p_ is no formula
    note = next(line for line in result.stderr.splitlines() if "frames ->" in line)
    assert note.startswith("clip\\x1b]0;title\\x07.mp4: ") and "\x1b" not in result.stderr.replace("\x1b[A", "")

    timeline = list(csv.reader(open(tmp_path / "clip\x1b]0;title\x07.timeline.csv", newline="")))
    assert timeline[0][:5] == ["frame", "time_s", "face_id", "face_index", "box_x"]
    expression = timeline[0].index("expression")
    assert {row[expression] for row in timeline[1:]} == {"'+SUM(1)"}


# ------------------------------------------------------------------------------ -q and exit statuses


def test_quiet_leaves_only_the_results(tmp_path, photo, coffee_jpeg_bytes, video_bytes):
    """Not even the native libraries' lines (LiteRT's XNNPACK notice, OpenCV's warning when YuNet is built on
    the photo without a face) reach file descriptor 2."""
    pytest.importorskip("pyarrow")
    src = tmp_path / "in"
    src.mkdir()
    (src / "face.jpg").write_bytes(photo)
    (src / "cup.jpg").write_bytes(coffee_jpeg_bytes)
    (src / "clip.mp4").write_bytes(video_bytes)
    seen = moodlens("analyze", "-q", "--every", "3", "--out", str(tmp_path / "timelines"), str(src))
    assert (seen.returncode, seen.stderr) == (0, "")
    assert sorted(records(seen.stdout)) == ["clip.mp4", "cup.jpg", "face.jpg"]
    (src / "broken.jpg").write_bytes(photo[:3000])
    dest = tmp_path / "rows.jsonl"
    batch = moodlens("batch", "-q", "--workers", "2", str(src), str(dest))  # a spawned worker builds its models
    assert (batch.returncode, batch.stdout, batch.stderr) == (1, "", "")  # broken.jpg failed: exit 1, like analyze
    assert len(dest.read_text().splitlines()) == 3


def test_batch_exit_status_says_whether_every_image_was_read(tmp_path, photo):
    pytest.importorskip("pyarrow")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes(photo)
    ok = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), str(tmp_path / "a.csv"), "--workers", "1"])
    assert ok.exit_code == 0 and "1 images, 1 faces, 0 errors" in ok.stderr, ok.output
    (tmp_path / "in" / "broken.jpg").write_bytes(photo[:3000])
    bad = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), str(tmp_path / "b.csv"), "--workers", "1"])
    assert bad.exit_code == 1 and "2 images, 1 faces, 1 errors" in bad.stderr, bad.output


def test_batch_names_the_files_it_leaves_out_and_quiet_hides_them(tmp_path, photo):
    pytest.importorskip("pyarrow")
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "face.jpg").write_bytes(photo)
    (tmp_path / "in" / "notes.txt").write_text("not a photo")
    (tmp_path / "in" / "sub" / "clip.mp4").write_bytes(b"\0" * 16)
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "a.csv"), "--workers", "1", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert note.startswith("skipped 2 files whose extension is not an image moodlens batch reads (.")
    assert note.endswith(": notes.txt, sub/clip.mp4")
    quiet = CliRunner().invoke(main, [*args[:2], str(tmp_path / "b.csv"), *args[3:], "-q"])
    assert quiet.exit_code == 0 and "skipped" not in quiet.stderr


@pytest.mark.parametrize("dest, fmt", [("out.parquet", "csv"), ("out.csv", "jsonl"), ("notes.jpg", "csv"),
                                       ("clip.mp4", "parquet"), ("out.exe", None)])
def test_batch_refuses_an_output_name_that_says_another_format(tmp_path, photo, dest, fmt):
    pytest.importorskip("pyarrow")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes(photo)
    extra = ["--format", fmt] if fmt else []
    result = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), str(tmp_path / dest), "--no-progress", *extra])
    assert result.exit_code == 2 and "Invalid value for DEST" in result.output, result.output
    assert not (tmp_path / dest).exists()


# ------------------------------------------------------------------------------ moodlens serve


def listening_socket(host: str) -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    return s


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_serve_fails_fast_on_a_taken_port_and_warns_off_loopback(host):
    with listening_socket(host) as taken:
        port = taken.getsockname()[1]
        proc = moodlens("serve", "--host", host, "--port", str(port), timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert [line for line in lines if line.startswith("Error")] == \
        [f"Error: cannot listen on {host} port {port}: the port is in use (another server? choose another --port)"]
    assert "gunicorn" not in proc.stderr  # stopped before gunicorn, which would retry for 5 s, logging each try
    warnings = [line for line in lines if "reachable from the network" in line]
    assert len(warnings) == (host == "0.0.0.0")
