"""Videos: analyze every Nth frame, follow each face across frames (a stable `face_id`, `engine.track`), smooth
its scores, and write a per-frame timeline CSV, a per-face plot of the scores over time and, optionally, an
annotated copy of the video."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from moodlens.engine.errors import NotAnImageError
from moodlens.engine.result import FaceBox
from moodlens.engine.safeio import csv_cell, printable, write_atomic
from moodlens.engine.track import DEFAULT_ALPHA, FaceTracker, Mosaic, RegionSearch, ScoreSmoother

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
#: Containers OpenCV's FFmpeg writer puts MPEG-4 Part 2 ("mp4v") in. The opencv-python wheels have no H.264
#: encoder and WebM takes only VP8/VP9/AV1, which those wheels cannot write either.
WRITABLE_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}
FOURCC = "mp4v"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
PLOT_PEOPLE = 4
BOX_COLUMNS = ("box_x", "box_y", "box_w", "box_h")  # faces (the most seen) shown in the timeline plot, one panel each


@dataclass
class Timeline:
    """Per-frame results: one row per face (or one face-less row for a frame without a face).

    Each row has the face's `face_id` (stable across frames, `engine.track.FaceTracker`), its `face_index`
    in that frame (detector order) and its box in pixels. With `smoothed`, `expression` and the `p_` scores are
    the face's moving average over its recent frames, else that frame's own."""

    classes: tuple[str, ...]
    fps: float
    frames_read: int
    frames_analyzed: int
    rows: list[dict]
    smoothed: bool = True

    @property
    def columns(self) -> list[str]:
        return ["frame", "time_s", "face_id", "face_index", *BOX_COLUMNS, "score", "expression", "uncertain",
                "quality", *(f"p_{c}" for c in self.classes)]

    @property
    def faces_seen(self) -> dict[int, int]:
        """Analyzed frames each face id was seen in, most seen first (ties: the lower id first)."""
        counts = Counter(r["face_id"] for r in self.rows if r["face_id"] is not None)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def frame_count(path: str | Path) -> int | None:
    """The frame count the container declares (for a progress bar; may be missing or approximate)."""
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    return n if n > 0 else None


def analyze_video(analyzer, path: str | Path, every: int = 1, progress: Callable[[int], None] | None = None,
                  smooth: bool = True, annotate: str | Path | None = None, root: str | Path | None = None,
                  min_face_score: float | None = None, tracker: FaceTracker | None = None,
                  alpha: float = DEFAULT_ALPHA, search: str = "full",
                  regions: RegionSearch | None = None) -> Timeline:
    """Analyze frames 0, N, 2N, ... of a video with `analyzer`. `progress(frames_read)` is called per frame read.

    Faces get ids from `tracker` (default: a new `FaceTracker()`); with `smooth`, each face's scores are an
    exponential moving average (`alpha`: the newest frame's weight). `annotate`: also write every frame, boxes
    and "id label score" drawn on it (the latest analyzed frame's faces on frames in between), to this new
    file (`AnnotatedVideo`: never over an existing file; `root`: the folder it may create sub-folders in).
    `search`: "full" searches every analyzed frame whole; "tracked" searches only around the faces tracked so far,
    and the whole frame every few frames (`regions`, default `RegionSearch()`): several times faster on frames
    whose faces are small, a face coming into view is found a few frames later."""
    if every < 1:
        raise ValueError("`every` must be at least 1")
    if search not in ("full", "tracked"):
        raise ValueError(f"`search` must be 'full' or 'tracked', not {search!r}")
    if search == "tracked" and regions is None:
        regions = RegionSearch()
    if annotate is not None:
        check_new_output(annotate)  # before any frame is analyzed
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise NotAnImageError(f"{path}: cannot open as a video (unsupported codec or not a video file)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    tracker = tracker or FaceTracker()
    smoother = ScoreSmoother(alpha if smooth else 1.0)
    classes = tuple(analyzer.classes)
    writer = AnnotatedVideo(annotate, fps if fps > 0 else 25.0, root) if annotate is not None else None
    rows: list[dict] = []
    index = analyzed = 0
    drawn: tuple[list, list[str]] = ([], [])
    try:
        while True:
            # grab() skips a frame without converting it to BGR; retrieve() only for frames we analyze or draw
            if not cap.grab():
                break
            if index % every == 0 or writer is not None:
                ok, bgr = cap.retrieve()
                if ok and index % every == 0:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    faces = _tracked_faces(analyzer, rgb, tracker, smoother, min_face_score,
                                           regions if search == "tracked" else None)
                    rows.extend(_frame_rows(faces, index, fps, classes))
                    drawn = ([f for _, _, f in faces], [f"{i} {_label(f)}" for i, _, f in faces])
                    analyzed += 1
                if ok and writer is not None:
                    writer.write(_draw(bgr, *drawn))
            index += 1
            if progress:
                progress(index)
        if index == 0:
            raise NotAnImageError(f"{path}: no frame could be read")
        if writer is not None:
            writer.close()
    finally:
        cap.release()
        if writer is not None:
            writer.abort()  # nothing left behind when analysis failed (a no-op after close)
    return Timeline(classes, fps, index, analyzed, rows, smoothed=smooth)


def _tracked_faces(analyzer, rgb: np.ndarray, tracker: FaceTracker, smoother: ScoreSmoother,
                   min_face_score: float | None, regions: RegionSearch | None = None) -> list[tuple[int, int, object]]:
    """(face_id, face_index, face) per face of the frame, the face's scores smoothed, by face_index."""
    tiles = regions.tiles(tracker.tracks, rgb.shape[1], rgb.shape[0]) if regions is not None else None
    if tiles is None:
        found = analyzer.analyze(rgb, min_face_score=min_face_score).faces
    else:
        mosaic = Mosaic(tuple(tiles))
        found = []
        for face in analyzer.analyze(mosaic.compose(rgb), min_face_score=min_face_score).faces:
            offset = mosaic.offset(tuple(face.box))
            if offset is not None:  # a face centred on the black filler is no face of the frame
                found.append(_shifted(face, *offset))
    ids = tracker.update(found)
    smoother.keep(tracker.active_ids)
    out = []
    for i, (face_id, face) in enumerate(zip(ids, found, strict=True)):
        scores = smoother.update(face_id, face.scores)
        top = max(scores, key=scores.__getitem__)
        out.append((face_id, i, replace(face, scores=scores, expression=top,
                                        uncertain=scores[top] < analyzer.uncertain_below)))
    return out


def _shifted(face, dx: float, dy: float):
    """A face found in a mosaic's tile, in the frame's pixels (`Mosaic.offset`)."""
    b = face.box
    return replace(face, box=FaceBox(b.x + dx, b.y + dy, b.w, b.h),
                   keypoints=[(kx + dx, ky + dy) for kx, ky in face.keypoints])


def _frame_rows(faces: list, index: int, fps: float, classes: tuple[str, ...]) -> list[dict]:
    t = round(index / fps, 3) if fps > 0 else None
    if not faces:
        return [{"frame": index, "time_s": t, "face_id": None, "face_index": None, **dict.fromkeys(BOX_COLUMNS),
                 "score": None, "expression": None, "uncertain": None, "quality": None,
                 **{f"p_{c}": None for c in classes}}]
    return [{"frame": index, "time_s": t, "face_id": face_id, "face_index": i,
             **dict(zip(BOX_COLUMNS, f.box.as_list(), strict=True)), "score": round(f.score, 4),
             "expression": f.expression, "uncertain": f.uncertain, "quality": f.quality,
             **{f"p_{c}": round(f.scores[c], 4) for c in classes}} for face_id, i, f in faces]


def _label(face) -> str:
    from moodlens.engine.render import label_text

    return label_text(face)


def _draw(bgr: np.ndarray, faces: list, labels: list[str]) -> np.ndarray:
    if not faces:
        return bgr
    from moodlens.engine.render import draw_faces

    rgb = draw_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), faces, labels=labels)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


# ------------------------------------------------------------------------------------------------ annotated video


def annotated_name(name: str) -> str:
    """The annotated copy's file name: the video's own when OpenCV can write that container, else ".mp4"
    appended (clip.webm -> clip.webm.mp4)."""
    return name if Path(name).suffix.lower() in WRITABLE_SUFFIXES else name + ".mp4"


def check_new_output(path: str | Path) -> None:
    """Refuse an output name that exists already, as anything (a file, a folder, a link, even a broken one)."""
    if os.path.lexists(path):
        raise FileExistsError(f"{printable(str(path))}: exists; an annotated video is never overwritten (remove "
                              "it or choose another name)")


class AnnotatedVideo:
    """A video written frame by frame (OpenCV, MPEG-4 "mp4v") that appears under its name only when complete.

    The project's safe-write rules (`engine.safeio`): the frames go to a new temporary file in the output's
    folder (its sub-folders under `root` created without following links, as `write_atomic` does), flushed to
    disk, then hard-linked to the final name, which fails rather than replace anything there (a file, or a
    link planted since the check); where the file system has no hard links it is renamed with `os.replace`
    after checking again that nothing is there. `abort()` (or an error) removes the temporary file."""

    def __init__(self, path: str | Path, fps: float, root: str | Path | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in WRITABLE_SUFFIXES:
            raise ValueError(f"{printable(str(path))}: an annotated video must end in "
                             f"{', '.join(sorted(WRITABLE_SUFFIXES))}")
        check_new_output(self.path)
        self.fps = fps
        # an empty placeholder written the safe way creates (and checks) the folders and reserves the name
        self.tmp = self.path.with_name(f".{self.path.name[:100]}.{secrets.token_hex(4)}.tmp{suffix}")
        write_atomic(self.tmp, b"", root if root is not None else self.path.parent)
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            h, w = bgr.shape[:2]
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"{printable(str(self.path))}: OpenCV cannot write {FOURCC} video here")
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and give it its final name."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        fd = os.open(self.tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(self.tmp, self.path, follow_symlinks=False)
        except FileExistsError as exc:
            raise FileExistsError(f"{printable(str(self.path))}: appeared while the video was written; not "
                                  "overwritten") from exc
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            check_new_output(self.path)  # no hard links on this file system (FAT, some network ones)
            os.replace(self.tmp, self.path)
        self.abort()
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


# ------------------------------------------------------------------------------------------------ timeline


def timeline_csv(timeline: Timeline) -> bytes:
    """The timeline as CSV (empty cells for frames without a face). Class names come from the model card, so
    text cells go through `csv_cell`: no formula or terminal escape reaches a spreadsheet or a terminal."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([csv_cell(c) for c in timeline.columns])
    writer.writerows([csv_cell(row.get(c)) for c in timeline.columns] for row in timeline.rows)
    return buf.getvalue().encode()


def write_timeline_csv(timeline: Timeline, path: str | Path, root: str | Path | None = None) -> Path:
    """`timeline_csv` written to `path` by `write_atomic` (never through a link; `root`: see there)."""
    write_atomic(path, timeline_csv(timeline), root)
    return Path(path)


def plot_timeline(timeline: Timeline, path: str | Path, title: str = "", root: str | Path | None = None) -> Path:
    """`timeline_png` written to `path` by `write_atomic` (never through a link; `root`: see there)."""
    write_atomic(path, timeline_png(timeline, title), root)
    return Path(path)


def timeline_png(timeline: Timeline, title: str = "", people: int = PLOT_PEOPLE) -> bytes:
    """`timeline_figure` as PNG bytes."""
    buf = io.BytesIO()
    timeline_figure(timeline, title, people).savefig(buf, format="png")
    return buf.getvalue()


def timeline_figure(timeline: Timeline, title: str = "", people: int = PLOT_PEOPLE):
    """A matplotlib Figure: one panel per face id (the `people` most seen), each class's score over time; the
    frames a face is not in leave gaps. The legend sits outside the panels, so it never covers a line. A video
    without a face gets a figure that says so."""
    # a bare Figure renders with Agg and touches no pyplot global state (no display, safe in worker threads)
    from matplotlib.figure import Figure

    from moodlens.engine.render import COLOURS

    seen = timeline.faces_seen
    if not seen:
        fig = Figure(figsize=(10, 2), dpi=100)
        fig.text(0.5, 0.5, f"{title + ': ' if title else ''}no face found in {timeline.frames_analyzed} analyzed "
                 f"frame{'s' if timeline.frames_analyzed != 1 else ''}", ha="center", va="center", fontsize=13)
        return fig
    shown = list(seen)[:people]
    frames = sorted({r["frame"] for r in timeline.rows})
    use_time = timeline.fps > 0
    time_of = {r["frame"]: r["time_s"] for r in timeline.rows}
    xs = [time_of[f] if use_time else f for f in frames]
    fig = Figure(figsize=(10, 1.2 + 1.9 * len(shown)), dpi=100, layout="constrained")
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, face_id in zip(axes, shown, strict=True):
        mine = {r["frame"]: r for r in timeline.rows if r["face_id"] == face_id}
        for c in timeline.classes:
            ys = [mine[f][f"p_{c}"] if f in mine else np.nan for f in frames]
            colour = tuple(v / 255 for v in COLOURS[c]) if c in COLOURS else None
            # small markers: a face seen in one analyzed frame between gaps still shows
            ax.plot(xs, ys, label=c, color=colour, linewidth=1.5, marker=".", markersize=3)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(f"face {face_id}: in {seen[face_id]} of {timeline.frames_analyzed} analyzed frames",
                     loc="left", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)" if use_time else "frame")
    what = "expression scores per face" + (" (smoothed)" if timeline.smoothed else "")
    if len(seen) > len(shown):
        what += f", the {len(shown)} most seen of {len(seen)} faces"
    fig.suptitle(f"{title}: {what}" if title else what)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    return fig
