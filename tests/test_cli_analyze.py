"""`moodlens analyze` through click's CliRunner and as a real subprocess: JSON lines, CSV, errors that do not
stop the run, annotated copies, videos (timeline CSV + plot), the process pool."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import encode
from moodlens.cli import main
from moodlens.engine.decode import IMAGE_SUFFIXES
from moodlens.engine.video import VIDEO_SUFFIXES

pytest.importorskip("skimage")

CLASSES = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut_rgb, coffee_jpeg_bytes, group_photo) -> Path:
    """face.jpg, nested/group.png, nested/cup.jpg (no face), broken.jpg (truncated), notes.txt (ignored)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    face = encode(astronaut_rgb)
    (root / "face.jpg").write_bytes(face)
    (root / "nested" / "group.png").write_bytes(encode(group_photo.rgb, "PNG"))
    (root / "nested" / "cup.jpg").write_bytes(coffee_jpeg_bytes)
    (root / "broken.jpg").write_bytes(face[:2000])
    (root / "notes.txt").write_text("not an image")
    return root


def run(*args: str):
    return CliRunner().invoke(main, ["analyze", "--workers", "1", *args], catch_exceptions=False)


def json_lines(text: str) -> dict[str, dict]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {Path(r["path"]).name: r for r in records}


def test_folder_as_json_lines(photos):
    result = run(str(photos))
    assert result.exit_code == 1  # broken.jpg failed, the rest went on
    records = json_lines(result.stdout)
    assert sorted(records) == ["broken.jpg", "cup.jpg", "face.jpg", "group.png"]
    for r in records.values():
        assert set(r) == {"path", "faces", "error"}
    assert records["broken.jpg"]["error"].startswith("TruncatedImageError") and records["broken.jpg"]["faces"] == []
    assert records["cup.jpg"] == {"path": str(photos / "nested" / "cup.jpg"), "faces": [], "error": None}
    assert len(records["group.png"]["faces"]) == 4
    (face,) = records["face.jpg"]["faces"]
    assert set(face) == {"box", "score", "expression", "scores", "uncertain", "quality"}
    assert len(face["box"]) == 4 and list(face["scores"]) == CLASSES
    assert sum(face["scores"].values()) == pytest.approx(1, abs=1e-3)
    assert "images (5 faces)" in result.stderr and "1 errors" in result.stderr
    # notes.txt is not dropped silently: one line names it and says why
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    kinds = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
    assert note == f"skipped 1 file whose extension is not a photo or video moodlens reads ({kinds}): " \
        f"{photos / 'notes.txt'}"


def test_all_good_exits_zero_and_explain(photos):
    result = run(str(photos / "face.jpg"), "--explain", "--classes", "7", "-q")
    assert result.exit_code == 0 and result.stderr == ""
    (face,) = json_lines(result.stdout)["face.jpg"]["faces"]
    assert len(face["scores"]) == 7 and np.asarray(face["heatmap"]).shape == (7, 7)


def test_missing_file_is_an_error_line(photos, tmp_path):
    result = run(str(tmp_path / "nope.jpg"), str(photos / "face.jpg"), "-q")
    assert result.exit_code == 1
    records = json_lines(result.stdout)
    assert records["nope.jpg"]["error"].startswith("FileNotFoundError") and records["face.jpg"]["error"] is None


def test_csv(photos):
    result = run(str(photos), "--csv", "-q")
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "face_index", "box_x", "box_y", "box_w", "box_h", "score", "expression",
                             "uncertain", "quality", *(f"p_{c}" for c in CLASSES), "error"]
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(Path(row["path"]).name, []).append(row)
    assert [r["face_index"] for r in by_name["group.png"]] == ["0", "1", "2", "3"]
    assert by_name["cup.jpg"][0]["face_index"] == "" and by_name["cup.jpg"][0]["error"] == ""
    assert by_name["broken.jpg"][0]["error"].startswith("TruncatedImageError")
    face = by_name["face.jpg"][0]
    assert sum(float(face[f"p_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-3)


def test_annotate(photos, tmp_path):
    out = tmp_path / "drawn"
    result = run(str(photos), "--annotate", str(out), "-q")
    assert result.exit_code == 1
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["face.jpg", "nested/cup.jpg", "nested/group.png"]
    drawn = cv2.imread(str(out / "nested" / "group.png"))
    assert drawn.shape == (480, 640, 3)


@pytest.fixture(scope="module")
def video(tmp_path_factory, astronaut_rgb) -> Path:
    """A 1.2 s, 10 fps mp4 of the astronaut sliding sideways."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frame = cv2.cvtColor(cv2.resize(astronaut_rgb, (256, 256)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    assert writer.isOpened()
    for i in range(12):
        writer.write(np.roll(frame, i * 3, axis=1))
    writer.release()
    return path


def test_video_timeline_and_plot(video, tmp_path):
    result = run(str(video), "--every", "3", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["frames"] == 12 and record["frames_analyzed"] == 4 and record["error"] is None
    timeline, plot = tmp_path / "clip.timeline.csv", tmp_path / "clip.timeline.png"
    assert record["timeline_csv"] == str(timeline) and str(plot) in result.stderr
    rows = list(csv.DictReader(timeline.open()))
    assert list(rows[0]) == ["frame", "time_s", "face_id", "face_index", "box_x", "box_y", "box_w", "box_h",
                             "score", "expression", "uncertain", "quality", *(f"p_{c}" for c in CLASSES)]
    assert [r["frame"] for r in rows] == ["0", "3", "6", "9"]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0, 0.3, 0.6, 0.9])
    assert all(r["face_id"] == "1" and r["face_index"] == "0" and r["expression"] in CLASSES for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["faces_tracked"] == 1 and record["annotated"] is None and "warning" not in record
    assert "(1 face tracked)" in result.stderr
    assert "0/12 [" in result.stderr and "frame/s" in result.stderr  # the progress bar counts frames, not files
    assert "/1 [" not in result.stderr


def test_no_smooth_gives_each_frames_own_scores(video, tmp_path):
    def scores(*flags: str) -> list[list[str]]:
        result = run(str(video), "-q", "--every", "3", "--out", str(tmp_path), *flags)
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader((tmp_path / "clip.timeline.csv").open()))
        return [[r[f"p_{c}"] for c in CLASSES] for r in rows]

    smooth, raw = scores(), scores("--no-smooth")
    assert smooth[0] == raw[0] and smooth[1:] != raw[1:]  # the first frame is its own average


@pytest.mark.parametrize("where", ["folder", "file"])
def test_video_annotate_writes_every_frame_and_never_overwrites(video, tmp_path, where):
    out = tmp_path / "drawn"
    target = out / "clip.mp4" if where == "folder" else out / "clip, drawn.mp4"
    first = run(str(video), "--every", "3", "--annotate", str(out if where == "folder" else target))
    assert first.exit_code == 0, first.output
    record = json.loads(first.stdout)
    assert record["annotated"] == str(target) and str(target) in first.stderr
    assert record["timeline_csv"] == str(out / "clip.timeline.csv")  # beside the annotated copy
    cap = cv2.VideoCapture(str(target))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert sum(cap.read()[0] for _ in range(13)) == 12
    cap.release()
    drawn = target.read_bytes()
    again = run(str(video), "-q", "--every", "3", "--annotate", str(out if where == "folder" else target))
    assert again.exit_code == 1
    error = json.loads(again.stdout)["error"]
    assert error.startswith("FileExistsError") and "never overwritten" in error
    assert target.read_bytes() == drawn and not [n for n in os.listdir(out) if ".tmp" in n]


def test_annotate_file_takes_one_video(video, photos, tmp_path):
    many = run(str(video), str(photos / "face.jpg"), "--annotate", str(tmp_path / "x.mp4"))
    assert many.exit_code == 2 and "one video" in many.output
    webm = run(str(video), "--annotate", str(tmp_path / "x.webm"))
    assert webm.exit_code == 2 and ".mp4" in webm.output
    (tmp_path / "a-file").write_text("")
    not_a_folder = run(str(photos / "face.jpg"), "--annotate", str(tmp_path / "a-file"))
    assert not_a_folder.exit_code == 2 and "not a folder" in not_a_folder.output


def test_a_video_without_a_face_says_so(tmp_path, coffee_rgb):
    path = tmp_path / "cup.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(4):
        writer.write(cv2.cvtColor(cv2.resize(coffee_rgb, (320, 240)), cv2.COLOR_RGB2BGR))
    writer.release()
    result = run(str(path), "--every", "2")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["faces_tracked"] == 0 and record["warning"] == "no face found in 2 analyzed frames"
    assert [line for line in result.stderr.splitlines() if "no face found" in line] == [
        f"{path}: 2 of 4 frames -> {tmp_path / 'cup.timeline.csv'}, {tmp_path / 'cup.timeline.png'} (no face found)"]


def test_broken_video(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    result = run(str(tmp_path / "bad.mp4"), "-q")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]


def test_subprocess_with_a_process_pool(photos):
    proc = subprocess.run(
        [sys.executable, "-m", "moodlens", "analyze", str(photos), "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["broken.jpg", "face.jpg", "cup.jpg", "group.png"]  # input order
    assert sum(len(r["faces"]) for r in records) == 5
    assert json_lines(proc.stdout) == json_lines(run(str(photos), "-q").stdout)  # same answers as in-process


def test_no_inputs(tmp_path):
    result = CliRunner().invoke(main, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and "no images" in result.output


def test_annotate_into_the_input_folder_is_refused_and_loses_nothing(tmp_path, astronaut_rgb):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(astronaut_rgb))
    before = photo.read_bytes()
    out = run(str(tmp_path), "--annotate", str(tmp_path), "-q")
    assert out.exit_code == 2 and "would overwrite an input" in out.output
    assert photo.read_bytes() == before and list(tmp_path.iterdir()) == [photo]


def test_an_output_folder_inside_the_input_is_never_rescanned(tmp_path, astronaut_rgb):
    (tmp_path / "photo.jpg").write_bytes(encode(astronaut_rgb))
    drawn = tmp_path / "drawn"
    for _ in range(2):  # the rerun must not analyse its own annotated copies, nor nest drawn/drawn/
        out = run(str(tmp_path), "--annotate", str(drawn), "-q")
        assert out.exit_code == 0, out.output
        assert [json.loads(line)["path"] for line in out.output.splitlines()] == [str(tmp_path / "photo.jpg")]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["drawn/photo.jpg", "photo.jpg"]


def test_batch_refuses_an_image_as_its_output(tmp_path, astronaut_rgb):
    pytest.importorskip("pyarrow")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(astronaut_rgb))
    before = photo.read_bytes()
    for dest, extra in ((photo, ()), (photo, ("--format", "csv"))):
        out = CliRunner().invoke(main, ["batch", str(tmp_path), str(dest), "--no-progress", "--workers", "1", *extra])
        assert out.exit_code == 2, out.output
    assert photo.read_bytes() == before


def test_min_face_score_leaves_out_weaker_faces(photos):
    group = str(photos / "nested" / "group.png")
    every = json_lines(run(group, "-q").stdout)["group.png"]["faces"]
    scores = sorted(f["score"] for f in every)
    assert scores[1] < scores[2]
    floor = (scores[1] + scores[2]) / 2  # between the second and third weakest (the JSON rounds scores)
    fewer = json_lines(run(group, "-q", "--min-face-score", str(floor)).stdout)["group.png"]
    assert len(fewer["faces"]) == len(every) - 2 and all(f["score"] >= floor for f in fewer["faces"])


def test_files_left_out_of_a_folder_are_named_once_and_quiet_hides_them(tmp_path, video):
    (tmp_path / "clip.mp4").write_bytes(video.read_bytes())
    for i in range(7):
        (tmp_path / f"notes-{i}.txt").write_text("not an image")
    first = run(str(tmp_path), "--every", "6")  # writes clip.timeline.csv and .png beside the video
    assert first.exit_code == 0, first.output
    again = run(str(tmp_path), "--every", "6")
    assert again.exit_code == 0, again.output
    for result in (first, again):  # the rerun's own outputs are neither read nor listed as skipped
        notes = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
        assert len(notes) == 1 and notes[0].startswith("skipped 7 files whose extension"), notes
        assert notes[0].endswith(", ".join(str(tmp_path / f"notes-{i}.txt") for i in range(5)) + " and 2 more")
        assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(tmp_path / "clip.mp4")]
    assert run(str(tmp_path), "--every", "6", "-q").stderr == ""


def test_a_video_is_never_annotated_over_itself(tmp_path, video):
    """The overwrite refusal holds for videos too: --annotate naming the video's own folder or the video itself."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(video.read_bytes())
    before = clip.read_bytes()
    for given in (tmp_path, clip):  # the folder into itself, the one video file into itself
        out = run(str(given), "--annotate", str(given), "-q")
        assert out.exit_code == 2 and "would overwrite an input" in out.output, out.output
    assert clip.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def test_two_inputs_never_share_an_output_file(tmp_path, astronaut_rgb):
    """day1/x.jpg and day2/x.jpg both mirror to drawn/x.jpg: refused before any work, rather than one lost."""
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "x.jpg").write_bytes(encode(astronaut_rgb))
    out = run(str(tmp_path / "day1"), str(tmp_path / "day2"), "--annotate", str(tmp_path / "drawn"), "-q")
    assert out.exit_code == 2 and "would both be written as" in out.output, out.output
    assert not (tmp_path / "drawn").exists()
    one = run(str(tmp_path / "day1"), str(tmp_path / "day1" / "x.jpg"), "--annotate", str(tmp_path / "drawn"), "-q")
    assert one.exit_code == 0, one.output  # the same file named twice writes one copy, as before


def test_the_photos_model_by_name_and_an_unknown_model_in_one_line(photos):
    result = run(str(photos / "face.jpg"), "--model", "photos", "-q")
    assert result.exit_code == 0
    (face,) = json_lines(result.stdout)["face.jpg"]["faces"]
    assert list(face["scores"]) == CLASSES and sum(face["scores"].values()) == pytest.approx(1, abs=1e-3)
    result = run(str(photos / "face.jpg"), "--model", "nope")
    assert result.exit_code == 2 and "'nope' does not exist: give a model file (.tflite) or a shipped model's " \
        "name (photos)" in result.output
