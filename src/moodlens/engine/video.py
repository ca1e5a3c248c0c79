"""Videos: analyze every Nth frame, write a per-frame timeline CSV and a plot of expression scores over time."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from moodlens.engine.errors import NotAnImageError
from moodlens.engine.safeio import csv_cell, write_atomic

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


@dataclass
class Timeline:
    """Per-frame results: one row per face (or one face-less row for a frame without a face)."""

    classes: tuple[str, ...]
    fps: float
    frames_read: int
    frames_analyzed: int
    rows: list[dict]

    @property
    def columns(self) -> list[str]:
        return ["frame", "time_s", "face_index", "expression", *(f"p_{c}" for c in self.classes)]


def analyze_video(analyzer, path: str | Path, every: int = 1,
                  progress: Callable[[int], None] | None = None) -> Timeline:
    """Analyze frames 0, N, 2N, ... of a video with `analyzer`. `progress(frame_index)` is called per frame read."""
    if every < 1:
        raise ValueError("`every` must be at least 1")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise NotAnImageError(f"{path}: cannot open as a video (unsupported codec or not a video file)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    rows: list[dict] = []
    index = analyzed = 0
    classes = tuple(analyzer.classes)
    try:
        while True:
            # grab() skips a frame without converting it to BGR; retrieve() only for frames we analyze
            if not cap.grab():
                break
            if index % every == 0:
                ok, bgr = cap.retrieve()
                if ok:
                    rows.extend(_frame_rows(analyzer, bgr, index, fps, classes))
                    analyzed += 1
            index += 1
            if progress:
                progress(index)
    finally:
        cap.release()
    if index == 0:
        raise NotAnImageError(f"{path}: no frame could be read")
    return Timeline(classes, fps, index, analyzed, rows)


def _frame_rows(analyzer, bgr: np.ndarray, index: int, fps: float, classes: tuple[str, ...]) -> list[dict]:
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    t = round(index / fps, 3) if fps > 0 else None
    result = analyzer.analyze(rgb)
    if not result.faces:
        return [{"frame": index, "time_s": t, "face_index": None, "expression": None,
                 **{f"p_{c}": None for c in classes}}]
    return [{"frame": index, "time_s": t, "face_index": i, "expression": f.expression,
             **{f"p_{c}": round(f.scores[c], 4) for c in classes}} for i, f in enumerate(result.faces)]


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


def timeline_png(timeline: Timeline, title: str = "") -> bytes:
    """A PNG line plot of each class's score over time for the first face of each frame (the detector's
    most confident); frames without a face leave gaps."""
    # a bare Figure renders with Agg and touches no pyplot global state (no display, safe in worker threads)
    from matplotlib.figure import Figure

    from moodlens.engine.render import COLOURS

    frames = sorted({r["frame"] for r in timeline.rows})
    first = {r["frame"]: r for r in timeline.rows if r["face_index"] in (0, None)}
    use_time = timeline.fps > 0
    xs = [first[f]["time_s"] if use_time else f for f in frames]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax = fig.add_subplot()
    for c in timeline.classes:
        ys = [np.nan if first[f][f"p_{c}"] is None else first[f][f"p_{c}"] for f in frames]
        colour = tuple(v / 255 for v in COLOURS[c]) if c in COLOURS else None
        ax.plot(xs, ys, label=c, color=colour, linewidth=1.5)
    ax.set_xlabel("time (s)" if use_time else "frame")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    what = "expression scores of the most confident face per frame"
    ax.set_title(f"{title}: {what}" if title else what)
    ax.legend(loc="upper right", ncol=min(len(timeline.classes), 7), fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
