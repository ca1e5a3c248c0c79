"""Faces across frames: a stable id per face (`FaceTracker`), per-face smoothing of its scores (`ScoreSmoother`)
and where to search the next frame (`RegionSearch`: around the tracked faces, the whole frame now and then).

Tracking is greedy box matching between consecutive analyzed frames, kept deliberately simple:

1. Each live track predicts where its face is now: its last box moved by its velocity (the centre's motion per
   frame, averaged over recent frames) times the frames since it was last seen.
2. Every (track, face) pair whose predicted box and new box overlap by IoU >= `iou_threshold` is a candidate;
   the pairs are taken best IoU first, each track and each face used at most once.
3. Tracks and faces still unmatched are paired, nearest first, when the face's centre is within `max_jump` face
   sizes of the prediction and the two sizes differ by less than 2x (a fast move, or `--every N` frames apart,
   leaves no overlap).
4. A face matched to no track starts a new one with the next id (1, 2, 3, ...; ids are never reused). A track
   not seen for more than `max_missed` analyzed frames ends: the same person coming back later gets a new id.

Landmarks are not used: at the frame rates and face sizes of a video the box alone separates faces well, and the
velocity keeps two faces that cross paths on their own tracks. The browser does the same for the webcam page
(`web/static/webcam.js`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]  # x, y, w, h

DEFAULT_IOU = 0.3
DEFAULT_MAX_MISSED = 5
DEFAULT_MAX_JUMP = 1.0
DEFAULT_ALPHA = 0.4  # the newest frame's weight: about the mean of the last 4 frames (2 / alpha - 1)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = min(ax0 + aw, bx0 + bw) - max(ax0, bx0)
    ih = min(ay0 + ah, by0 + bh) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _box(face) -> Box:
    """A face's box: a `Face` (its `.box`), a `FaceBox` or any (x, y, w, h)."""
    box = getattr(face, "box", face)
    x, y, w, h = box
    return float(x), float(y), float(w), float(h)


@dataclass
class Track:
    """One face tracked across frames."""

    id: int
    box: Box
    vx: float = 0.0  # centre motion per frame, pixels
    vy: float = 0.0
    missed: int = 0  # analyzed frames since it was last seen
    hits: int = 1  # analyzed frames it was seen in

    def predicted(self) -> Box:
        steps = self.missed + 1
        x, y, w, h = self.box
        return x + self.vx * steps, y + self.vy * steps, w, h

    def follow(self, box: Box) -> None:
        steps = self.missed + 1
        (x, y, w, h), (nx, ny, nw, nh) = self.box, box
        dx = (nx + nw / 2 - x - w / 2) / steps
        dy = (ny + nh / 2 - y - h / 2) / steps
        first = self.hits == 1  # no velocity yet: take the first measured one as it is
        self.vx = dx if first else 0.5 * self.vx + 0.5 * dx
        self.vy = dy if first else 0.5 * self.vy + 0.5 * dy
        self.box, self.missed, self.hits = box, 0, self.hits + 1


class FaceTracker:
    """Gives each face a stable id across frames: `update(faces)` once per analyzed frame, in frame order.

    `faces`: `Face`s, `FaceBox`es or (x, y, w, h) boxes. Returns one id per face, in the same order. `reset()`
    forgets every track (a new video); ids keep counting up so they never repeat within one tracker.
    """

    def __init__(self, iou_threshold: float = DEFAULT_IOU, max_missed: int = DEFAULT_MAX_MISSED,
                 max_jump: float = DEFAULT_MAX_JUMP):
        if not 0 < iou_threshold <= 1:
            raise ValueError("iou_threshold must be in (0, 1]")
        if max_missed < 0:
            raise ValueError("max_missed must be 0 or more")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_jump = max_jump
        self.tracks: list[Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self.tracks = []

    @property
    def active_ids(self) -> set[int]:
        """Ids of the tracks still alive (seen, or missed for at most `max_missed` frames)."""
        return {t.id for t in self.tracks}

    def update(self, faces: Sequence) -> list[int]:
        boxes = [_box(f) for f in faces]
        ids: list[int | None] = [None] * len(boxes)
        free_tracks = set(range(len(self.tracks)))
        free_faces = set(range(len(boxes)))
        predicted = [t.predicted() for t in self.tracks]

        overlaps = [(iou(predicted[t], boxes[f]), t, f) for t in free_tracks for f in free_faces]
        self._assign(sorted((p for p in overlaps if p[0] >= self.iou_threshold), key=lambda p: -p[0]),
                     ids, boxes, free_tracks, free_faces)
        near = []
        for t in free_tracks:
            px, py, pw, ph = predicted[t]
            for f in free_faces:
                x, y, w, h = boxes[f]
                size = math.sqrt(max(pw * ph, 1e-9))
                ratio = math.sqrt(max(w * h, 1e-9)) / size
                dist = math.hypot(x + w / 2 - px - pw / 2, y + h / 2 - py - ph / 2) / size
                if dist <= self.max_jump and 0.5 < ratio < 2:
                    near.append((dist, t, f))
        self._assign(sorted(near), ids, boxes, free_tracks, free_faces)

        for t in free_tracks:
            self.tracks[t].missed += 1
        for f in sorted(free_faces):
            self.tracks.append(Track(self._next_id, boxes[f]))
            ids[f] = self._next_id
            self._next_id += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return [int(i) for i in ids]  # every face has its id by now

    def _assign(self, pairs: Iterable[tuple[float, int, int]], ids: list, boxes: list[Box],
                free_tracks: set[int], free_faces: set[int]) -> None:
        for _, t, f in pairs:
            if t in free_tracks and f in free_faces:
                track = self.tracks[t]
                track.follow(boxes[f])
                ids[f] = track.id
                free_tracks.discard(t)
                free_faces.discard(f)


class ScoreSmoother:
    """Per-face exponential moving average of the class scores: s = alpha * new + (1 - alpha) * s.

    `update(face_id, scores)` returns the smoothed scores for that face (the first frame of a face is its own
    average). `alpha=1` turns smoothing off. `keep(ids)` forgets faces whose track has ended.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._state: dict[int, dict[str, float]] = {}

    def update(self, face_id: int, scores: Mapping[str, float]) -> dict[str, float]:
        old = self._state.get(face_id)
        a = self.alpha
        new = dict(scores) if old is None else {c: a * float(p) + (1 - a) * old.get(c, float(p))
                                                for c, p in scores.items()}
        self._state[face_id] = new
        return dict(new)

    def keep(self, ids: Iterable[int]) -> None:
        wanted = set(ids)
        self._state = {k: v for k, v in self._state.items() if k in wanted}


DEFAULT_FULL_EVERY = 10  # at 20 frames/s a face that walks in is found within half a second
DEFAULT_MARGIN = 0.5  # face sizes searched around each tracked face's predicted box, on every side
DEFAULT_MAX_AREA = 0.5  # tiles covering more than this share of the frame save too little: search it all
MIN_REGION = 96  # px: the smallest tile side (a far face of 20 px still gets some context)

Region = tuple[int, int, int, int]  # x, y, w, h in frame pixels


class RegionSearch:
    """Which part of the next frame the detector should search: the whole frame, or only around tracked faces.

    Searching a 640x480 frame whole costs YuNet's full pass when its faces are small (25-30 ms on one core,
    more than a 20 frames/s budget leaves), while a tile around a 50 px face, twice its size, is cheap: the face
    fills enough of it for BlazeFace alone. So between whole-frame searches only tiles around the tracked faces
    are searched, side by side in one picture (`Mosaic`): `tiles(tracks, width, height)` returns them, or None
    for the whole frame, which it asks for when nothing is tracked, when a track was missed in the last frame
    (the face may have moved out of its tile), every `full_every` frames (faces that came into view), and when
    the tiles would cover more than `max_area` of the frame. Tiles that overlap are merged, so no face is seen
    twice. Faces keep their size in pixels (tiles are cut, never scaled), so detection, the crop and the quality
    verdict see them as in the whole frame; two faces of one size in a 2x1 mosaic are each a quarter of its
    width, enough for BlazeFace to vouch for them (a fifth). The webcam page does the same in the browser
    (`web/static/webcam.js`); `analyze_video(search="tracked")` here.
    """

    def __init__(self, full_every: int = DEFAULT_FULL_EVERY, margin: float = DEFAULT_MARGIN,
                 max_area: float = DEFAULT_MAX_AREA):
        if full_every < 1:
            raise ValueError("full_every must be 1 or more")
        self.full_every, self.margin, self.max_area = full_every, margin, max_area
        self._since_full = 0

    def tiles(self, tracks: Sequence[Track], width: int, height: int) -> list[Region] | None:
        """The tiles of the next frame to search (x, y, w, h, inside the frame), or None: the whole frame."""
        self._since_full += 1
        if not tracks or self._since_full >= self.full_every or any(t.missed for t in tracks):
            self._since_full = 0
            return None
        grown = []
        for t in tracks:
            x, y, w, h = t.predicted()
            pad = self.margin * max(w, h)
            (x0, x1), (y0, y1) = _grow(x - pad, x + w + pad, width), _grow(y - pad, y + h + pad, height)
            grown.append([x0, y0, x1, y1])
        tiles = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in _merged(grown)]
        if any(w <= 0 or h <= 0 for _, _, w, h in tiles) or \
                sum(w * h for _, _, w, h in tiles) > self.max_area * width * height:
            self._since_full = 0
            return None
        return sorted(tiles)


def _merged(boxes: list[list[int]]) -> list[list[int]]:
    """Boxes (x0, y0, x1, y1) with every overlapping pair replaced by its union, until none overlap."""
    boxes = [list(b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


def _grow(lo: float, hi: float, size: int) -> tuple[int, int]:
    """[lo, hi) as whole pixels inside [0, size), widened to MIN_REGION where the frame allows."""
    lo, hi = max(0, math.floor(lo)), min(size, math.ceil(hi))
    if hi <= lo:  # the tracked face is predicted outside the frame
        return lo, hi
    short = MIN_REGION - (hi - lo)
    if short > 0:
        lo = max(0, lo - short // 2)
        hi = min(size, lo + MIN_REGION)
        lo = max(0, hi - MIN_REGION)
    return lo, hi


@dataclass(frozen=True)
class Mosaic:
    """Tiles of a frame laid out in one picture: a grid of ceil(sqrt(n)) columns, each cell as large as the
    largest tile, each tile at its cell's top-left corner (the rest black)."""

    tiles: tuple[Region, ...]

    @property
    def cols(self) -> int:
        return math.ceil(math.sqrt(len(self.tiles)))

    @property
    def cell(self) -> tuple[int, int]:
        return max(t[2] for t in self.tiles), max(t[3] for t in self.tiles)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the mosaic."""
        (cw, ch), cols = self.cell, self.cols
        return cw * cols, ch * math.ceil(len(self.tiles) / cols)

    def origin(self, i: int) -> tuple[int, int]:
        """Where tile `i` sits in the mosaic."""
        (cw, ch), cols = self.cell, self.cols
        return (i % cols) * cw, (i // cols) * ch

    def compose(self, rgb: np.ndarray) -> np.ndarray:
        """The mosaic of an (H, W, 3) frame."""
        w, h = self.size
        out = np.zeros((h, w, 3), rgb.dtype)
        for i, (x, y, tw, th) in enumerate(self.tiles):
            mx, my = self.origin(i)
            out[my:my + th, mx:mx + tw] = rgb[y:y + th, x:x + tw]
        return out

    def offset(self, box: Box) -> tuple[int, int] | None:
        """(dx, dy) that moves a box found in the mosaic to the frame: that of the tile its centre is in, None
        when the centre falls outside every tile (the black filler)."""
        (cw, ch), cols = self.cell, self.cols
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        col, row = int(cx // cw), int(cy // ch)
        i = row * cols + col
        if cx < 0 or cy < 0 or col >= cols or i >= len(self.tiles):
            return None
        x, y, tw, th = self.tiles[i]
        mx, my = self.origin(i)
        if cx - mx >= tw or cy - my >= th:
            return None
        return x - mx, y - my
