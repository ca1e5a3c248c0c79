"""Videos in the engine: face ids stable across frames (`engine.track`), smoothing on and off, the per-face plot,
a video without a face, and the annotated copy (right frame count, never over an existing file or a link).

The videos are synthetic: the astronaut's head (as in conftest.compose_faces) moving across a plain wall."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from moodlens.engine.track import FaceTracker, Mosaic, RegionSearch, ScoreSmoother, iou
from moodlens.engine.video import AnnotatedVideo, Timeline, analyze_video, timeline_csv

pytest.importorskip("skimage")

CLASSES = ("angry", "happy", "neutral", "sad")
W, H, S = 480, 360, 120  # frame size, head size
WALL = (200, 190, 170)


def head(size: int) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut()[30:230, 125:325], (size, size), interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def crossing_frames(n: int = 12) -> list[np.ndarray]:
    """Two heads crossing paths: one along the top from left to right, one along the bottom from right to left
    (they pass each other half way)."""
    face = head(S)
    frames = []
    for i in range(n):
        t = i / (n - 1)
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = WALL
        xa, xb = int(10 + t * (W - S - 20)), int(W - S - 10 - t * (W - S - 20))
        canvas[20:20 + S, xa:xa + S] = face
        canvas[H - S - 20:H - 20, xb:xb + S] = face
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def analyzer():
    from moodlens import Analyzer

    return Analyzer()


@pytest.fixture(scope="module")
def crossing(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "crossing.mp4", crossing_frames())


@pytest.fixture(scope="module")
def crossing_timeline(analyzer, crossing) -> Timeline:
    return analyze_video(analyzer, crossing)


# ------------------------------------------------------------------------------------------------ the tracker


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0 and iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0


def test_boxes_that_pass_through_each_other_keep_their_ids():
    """Same row, opposite directions, 20 px a frame: without the velocity the nearer old box would win at the
    crossing and the ids would swap."""
    tracker = FaceTracker()
    seen = []
    for i in range(15):
        a, b = (20 * i, 100, 100, 100), (300 - 20 * i, 100, 100, 100)
        ids = tracker.update([b, a] if i % 2 else [a, b])  # detector order changes from frame to frame
        seen.append(dict(zip(("b", "a") if i % 2 else ("a", "b"), ids, strict=True)))
    assert {s["a"] for s in seen} == {1} and {s["b"] for s in seen} == {2}


def test_a_missed_face_keeps_its_id_for_a_while_and_new_faces_get_new_ids():
    tracker = FaceTracker(max_missed=2)
    assert tracker.update([(0, 0, 50, 50)]) == [1]
    assert tracker.update([]) == [] and tracker.update([]) == []  # missed twice: still alive
    assert tracker.active_ids == {1}
    assert tracker.update([(5, 0, 50, 50), (300, 300, 60, 60)]) == [1, 2]
    for _ in range(3):  # missed three times: gone
        tracker.update([(300, 300, 60, 60)])
    assert tracker.active_ids == {2}
    assert tracker.update([(5, 0, 50, 50), (300, 300, 60, 60)]) == [3, 2]  # back, but as a new face: ids never reused


def test_a_jump_without_overlap_is_followed_when_near_and_of_the_same_size():
    tracker = FaceTracker()
    tracker.update([(0, 0, 40, 40)])
    assert tracker.update([(38, 0, 40, 40)]) == [1]  # IoU 0.03, centre one face width away
    assert tracker.update([(200, 0, 40, 40)]) == [2]  # far: another face
    assert tracker.update([(195, 0, 50, 50)]) == [2]  # overlaps, grows: the same face
    assert tracker.update([(200, 0, 150, 150)]) == [3]  # 3x the size: another face
    assert tracker.update([(400, 0, 10, 10)]) == [4]


def test_the_smoother_is_a_moving_average_and_alpha_1_turns_it_off():
    smoother = ScoreSmoother(alpha=0.5)
    assert smoother.update(1, {"happy": 1.0, "sad": 0.0}) == {"happy": 1.0, "sad": 0.0}
    assert smoother.update(1, {"happy": 0.0, "sad": 1.0}) == {"happy": 0.5, "sad": 0.5}
    assert smoother.update(2, {"happy": 0.2, "sad": 0.8}) == {"happy": 0.2, "sad": 0.8}  # per face
    smoother.keep({2})
    assert smoother.update(1, {"happy": 0.0, "sad": 1.0}) == {"happy": 0.0, "sad": 1.0}  # forgotten: starts again
    off = ScoreSmoother(alpha=1)
    off.update(1, {"happy": 1.0})
    assert off.update(1, {"happy": 0.25}) == {"happy": 0.25}


# ------------------------------------------------------------------------------------------------ videos


def test_each_face_keeps_its_id_on_a_video_of_two_faces_crossing_paths(crossing_timeline):
    tl = crossing_timeline
    assert tl.frames_read == tl.frames_analyzed == 12
    assert tl.faces_seen == {1: 12, 2: 12}
    rows_of = {}
    for r in tl.rows:
        rows_of.setdefault(r["frame"], []).append(r)
    assert all(len(rows) == 2 for rows in rows_of.values())
    top_ids = {min(rows, key=lambda r: r["box_y"])["face_id"] for rows in rows_of.values()}
    bottom_ids = {max(rows, key=lambda r: r["box_y"])["face_id"] for rows in rows_of.values()}
    assert len(top_ids) == len(bottom_ids) == 1 and top_ids != bottom_ids
    # the top face went right, the bottom one left: they crossed
    top_x = [min(rows, key=lambda r: r["box_y"])["box_x"] for _, rows in sorted(rows_of.items())]
    bottom_x = [max(rows, key=lambda r: r["box_y"])["box_x"] for _, rows in sorted(rows_of.items())]
    assert top_x[0] < bottom_x[0] and top_x[-1] > bottom_x[-1]


def test_csv_has_face_id_and_face_index(crossing_timeline):
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(timeline_csv(crossing_timeline).decode())))
    assert list(rows[0]) == ["frame", "time_s", "face_id", "face_index", "box_x", "box_y", "box_w", "box_h",
                             "score", "expression", "uncertain", "quality", *(f"p_{c}" for c in CLASSES)]
    assert {r["face_id"] for r in rows} == {"1", "2"} and {r["face_index"] for r in rows} == {"0", "1"}


def test_smoothing_on_is_the_moving_average_of_smoothing_off(analyzer, crossing, crossing_timeline):
    raw = analyze_video(analyzer, crossing, smooth=False)
    assert not raw.smoothed and crossing_timeline.smoothed
    key = [(r["frame"], r["face_id"]) for r in raw.rows]
    assert key == [(r["frame"], r["face_id"]) for r in crossing_timeline.rows]
    # smoothing off: each frame's own scores, as analyzing that frame alone gives
    cap = cv2.VideoCapture(str(crossing))
    _, bgr = cap.read()
    cap.release()
    first = analyzer.analyze(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    for r in raw.rows[:2]:
        face = min(first.faces, key=lambda f: abs(f.box.x - r["box_x"]))
        assert [r[f"p_{c}"] for c in CLASSES] == pytest.approx([face.scores[c] for c in CLASSES], abs=1e-4)
    # smoothing on: an exponential moving average (alpha 0.4) of them, per face
    mean: dict[int, np.ndarray] = {}
    for r, s in zip(raw.rows, crossing_timeline.rows, strict=True):
        p = np.array([r[f"p_{c}"] for c in CLASSES])
        mean[r["face_id"]] = p if r["face_id"] not in mean else 0.4 * p + 0.6 * mean[r["face_id"]]
        assert [s[f"p_{c}"] for c in CLASSES] == pytest.approx(list(mean[r["face_id"]]), abs=1e-3)
        assert s["expression"] == CLASSES[int(np.argmax(mean[r["face_id"]]))]


def test_a_video_without_a_face(analyzer, tmp_path, coffee_rgb):
    wall = cv2.resize(coffee_rgb, (W, H))
    tl = analyze_video(analyzer, write_video(tmp_path / "cup.mp4", [wall] * 4), every=2)
    assert tl.faces_seen == {} and tl.frames_analyzed == 2
    assert [(r["frame"], r["face_id"], r["face_index"]) for r in tl.rows] == [(0, None, None), (2, None, None)]
    pytest.importorskip("matplotlib")
    from moodlens.engine.video import timeline_figure

    fig = timeline_figure(tl, "cup.mp4")
    assert fig.axes == []  # no empty plot: one line of text
    assert [t.get_text() for t in fig.texts] == ["cup.mp4: no face found in 2 analyzed frames"]


def test_the_plot_has_one_panel_per_face_most_seen_first_and_the_legend_outside():
    pytest.importorskip("matplotlib")
    from moodlens.engine.video import timeline_figure, timeline_png

    rng = np.random.default_rng(0)
    rows = []
    for frame in range(30):
        for face_id in range(1, 7):
            if frame % face_id == 0:  # face 1 in every frame, face 6 in one of six
                p = rng.dirichlet(np.ones(len(CLASSES)))
                scores = {f"p_{c}": float(v) for c, v in zip(CLASSES, p, strict=True)}
                rows.append({"frame": frame, "time_s": frame / 10, "face_id": face_id, "face_index": 0,
                             "expression": CLASSES[int(np.argmax(p))], **scores})
    tl = Timeline(CLASSES, 10.0, 30, 30, rows)
    fig = timeline_figure(tl, "six.mp4")
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "face 1: in 30 of 30 analyzed frames", "face 2: in 15 of 30 analyzed frames",
        "face 3: in 10 of 30 analyzed frames", "face 4: in 8 of 30 analyzed frames"]
    assert "the 4 most seen of 6 faces" in fig._suptitle.get_text()
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(CLASSES)
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent())  # the legend never covers a line
        assert len(ax.lines) == len(CLASSES)
    assert timeline_png(tl)[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ annotated videos


def test_the_annotated_video_has_every_frame_and_the_faces_drawn(analyzer, crossing, tmp_path):
    out = tmp_path / "drawn" / "sub" / "crossing.mp4"
    tl = analyze_video(analyzer, crossing, every=3, annotate=out, root=tmp_path / "drawn")
    assert tl.frames_analyzed == 4
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    assert len(frames) == 12 and frames[0].shape == (H, W, 3)
    src = cv2.VideoCapture(str(crossing))
    _, original = src.read()
    src.release()
    # the box and label of the first face are drawn on frame 0 (the label's fill: the class colour)
    r = tl.rows[0]
    x, y = int(r["box_x"]), int(r["box_y"])
    assert np.abs(frames[0][y - 8:y, x:x + 40].astype(int) - original[y - 8:y, x:x + 40]).mean() > 30
    assert os.listdir(out.parent) == ["crossing.mp4"]  # no temporary file left


@pytest.mark.parametrize("planted", ["file", "link", "dangling link"])
def test_an_annotated_video_never_replaces_what_is_there(analyzer, crossing, tmp_path, planted):
    precious = tmp_path / "precious.mp4"
    precious.write_bytes(b"keep me")
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    if planted == "file":
        out.write_bytes(b"an earlier video")
    else:
        out.symlink_to(precious if planted == "link" else tmp_path / "nowhere.mp4")
    before = {p.name: (p.is_symlink(), p.read_bytes() if p.exists() else None) for p in out.parent.iterdir()}
    with pytest.raises(FileExistsError, match="never overwritten"):
        analyze_video(analyzer, crossing, annotate=out)
    assert {p.name: (p.is_symlink(), p.read_bytes() if p.exists() else None) for p in out.parent.iterdir()} == before
    assert precious.read_bytes() == b"keep me"


def test_a_file_that_appears_while_the_video_is_written_is_kept(tmp_path):
    out = tmp_path / "clip.mp4"
    video = AnnotatedVideo(out, 10)
    for i in range(3):
        video.write(np.full((64, 64, 3), 80 * i, np.uint8))
    out.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="appeared"):
        video.close()
    video.abort()
    assert out.read_bytes() == b"someone else's" and os.listdir(tmp_path) == ["clip.mp4"]


def test_an_annotated_video_through_a_linked_sub_folder_is_refused(analyzer, crossing, tmp_path):
    from moodlens.engine.safeio import UnsafeOutputError

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeOutputError, match="symlink"):
        analyze_video(analyzer, crossing, annotate=tmp_path / "out" / "sub" / "clip.mp4", root=tmp_path / "out")
    assert os.listdir(tmp_path / "elsewhere") == []


# ------------------------------------------------------------------------------------------------ region search


def test_region_search_asks_for_the_whole_frame_when_it_must():
    tracker, regions = FaceTracker(), RegionSearch(full_every=4)
    assert regions.tiles(tracker.tracks, 640, 480) is None  # nothing tracked yet
    tracker.update([(300, 200, 100, 100)])
    got = [regions.tiles(tracker.tracks, 640, 480) for _ in range(5)]
    assert got[:3] == [[(250, 150, 200, 200)]] * 3  # half a face size on every side (the face does not move)
    assert got[3] is None and got[4] == [(250, 150, 200, 200)]  # the 4th frame since the last whole one
    tracker.update([])
    assert regions.tiles(tracker.tracks, 640, 480) is None  # a face was missed: it may have left its tile
    tracker.update([(300, 200, 100, 100)])
    regions.tiles(tracker.tracks, 640, 480)
    tracker.update([(300, 200, 100, 100), (20, 20, 250, 250)])
    assert regions.tiles(tracker.tracks, 640, 480) is None  # the tiles would cover more than half the frame


def test_region_search_follows_the_motion_stays_in_the_frame_and_merges_overlapping_tiles():
    tracker, regions = FaceTracker(), RegionSearch()
    tracker.update([(600, 10, 20, 20)])
    tracker.update([(610, 12, 20, 20)])  # 10 px a frame to the right
    [(x, y, w, h)] = regions.tiles(tracker.tracks, 640, 480)
    assert (x + w, y) == (640, 0) and x <= 620 - 10  # clipped by the frame's edges, ahead of the motion
    assert (w, h) == (96, 96)  # widened to MIN_REGION where the frame allows it
    tracker = FaceTracker()
    tracker.update([(100, 100, 40, 40), (150, 100, 40, 40), (400, 300, 40, 40)])
    assert regions.tiles(tracker.tracks, 640, 480) == [(72, 72, 146, 96), (372, 272, 96, 96)]


def test_a_mosaic_lays_tiles_out_and_maps_faces_back():
    frame = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3)
    mosaic = Mosaic(((10, 20, 100, 90), (300, 200, 80, 96), (500, 50, 96, 96)))
    assert (mosaic.cols, mosaic.cell, mosaic.size) == (2, (100, 96), (200, 192))
    image = mosaic.compose(frame)
    assert (image[:90, :100] == frame[20:110, 10:110]).all() and (image[:96, 100:180] == frame[200:296, 300:380]).all()
    assert (image[96:, :96] == frame[50:146, 500:596]).all() and (image[96:, 100:] == 0).all()
    assert (image[90:96, :100] == 0).all()  # below the shorter first tile: filler
    assert mosaic.offset((120, 10, 40, 40)) == (300 - 100, 200)  # centre in the 2nd tile
    assert mosaic.offset((10, 100, 40, 40)) == (500, 50 - 96)
    assert mosaic.offset((150, 150, 20, 20)) is None and mosaic.offset((170, 10, 30, 30)) is None  # filler


@pytest.fixture(scope="module")
def arriving(tmp_path_factory) -> Path:
    """Heads of 96 px (faces of ~45 px, as 2-3 m from a webcam): one walks slowly to the right, a second
    appears beside its path at frame 8."""
    face = head(96)
    frames = []
    for i in range(24):
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = WALL
        x = 40 + 6 * i
        canvas[100:196, x:x + 96] = face
        if i >= 8:
            canvas[90:186, 340:436] = face
        frames.append(canvas)
    return write_video(tmp_path_factory.mktemp("video") / "arriving.mp4", frames)


class ShapeLog:
    """The real analyzer, noting the size of every picture it is given."""

    def __init__(self, analyzer):
        self.analyzer, self.shapes = analyzer, []
        self.classes, self.uncertain_below = analyzer.classes, analyzer.uncertain_below

    def analyze(self, rgb, **options):
        self.shapes.append(rgb.shape[:2])
        return self.analyzer.analyze(rgb, **options)


def test_tracked_search_finds_the_same_faces_in_regions(analyzer, arriving):
    log = ShapeLog(analyzer)
    tracked = analyze_video(log, arriving, search="tracked", smooth=False)
    full = analyze_video(analyzer, arriving, smooth=False)
    whole = [s == (H, W) for s in log.shapes]
    assert whole == [i % 10 == 0 for i in range(24)]  # the rest: mosaics of tiles around the tracked faces
    assert max(h * w for h, w in log.shapes if (h, w) != (H, W)) < 0.4 * H * W
    rows = {}
    for r in tracked.rows:
        rows.setdefault(r["frame"], {})[r["face_id"]] = r
    assert set(tracked.faces_seen) == {1, 2} and tracked.faces_seen[1] == 24  # the walker: one id, every frame
    first_seen_2 = min(f for f, faces in rows.items() if 2 in faces)
    assert 8 <= first_seen_2 <= 8 + RegionSearch().full_every  # the newcomer waits for the next whole frame
    assert all(2 in rows[f] for f in range(first_seen_2, 24))
    by_frame = {(r["frame"], round(r["box_x"] / 20)): r for r in full.rows}
    for f, faces in rows.items():  # a face found in a region is where the whole-frame search puts it
        for r in faces.values():
            match = by_frame.get((f, round(r["box_x"] / 20))) or by_frame.get((f, round(r["box_x"] / 20) + 1)) \
                or by_frame.get((f, round(r["box_x"] / 20) - 1))
            assert match is not None
            tolerance = 0.15 * match["box_w"]  # the tile's cheaper path (BlazeFace alone) draws its own box
            assert abs(match["box_x"] - r["box_x"]) < tolerance
            assert abs(match["box_y"] - r["box_y"]) < tolerance and abs(match["box_w"] - r["box_w"]) < tolerance
            assert match["expression"] == r["expression"] and match["quality"] == r["quality"]
    with pytest.raises(ValueError, match="search"):
        analyze_video(analyzer, arriving, search="everywhere")
