"""render: draw faces (box, "happy 87%" label, optional heatmap) on an image; encode JPEG/PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from moodlens.engine.result import Face

# RGB, one per class; anything else gets DEFAULT_COLOUR
COLOURS: dict[str, tuple[int, int, int]] = {
    "happy": (255, 196, 0), "sad": (66, 133, 244), "angry": (230, 40, 40), "neutral": (170, 170, 170),
    "surprise": (255, 128, 0), "fear": (160, 90, 220), "disgust": (60, 180, 75),
}
DEFAULT_COLOUR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_text(face: Face) -> str:
    """"happy 87%", with a "?" when the analyzer marked the face uncertain."""
    p = face.scores.get(face.expression, 0.0)
    return f"{face.expression} {round(p * 100)}%" + ("?" if face.uncertain else "")


def draw_faces(rgb: np.ndarray, faces: Sequence[Face], heatmaps: bool = True,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of `rgb` (H, W, 3 uint8) with each face's box and label, and its heatmap when it has one.
    `labels`: one text per face instead of `label_text` (a video's "3 happy 87%", with the face's track id)."""
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))  # lines and text grow with the photo, so they stay readable
    font_scale = max(0.45, min(h, w) / 900)
    text_thick = max(1, round(font_scale * 1.5))
    for i, face in enumerate(faces):
        x0, y0 = round(face.box.x), round(face.box.y)
        x1, y1 = round(face.box.x + face.box.w), round(face.box.y + face.box.h)
        if heatmaps and face.heatmap:
            _overlay_heatmap(out, face.heatmap, x0, y0, x1, y1)
        colour = COLOURS.get(face.expression, DEFAULT_COLOUR)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)
        text = label_text(face) if labels is None else labels[i]
        (tw, th), base = cv2.getTextSize(text, FONT, font_scale, text_thick)
        # label above the box, or inside its top when the box touches the top edge
        ty = y0 - base - 2 if y0 - th - base - 4 >= 0 else y0 + th + 2
        cv2.rectangle(out, (x0, ty - th - 2), (min(w - 1, x0 + tw + 4), ty + base), colour, cv2.FILLED)
        cv2.putText(out, text, (x0 + 2, ty), FONT, font_scale, (0, 0, 0), text_thick, cv2.LINE_AA)
    return out


def _overlay_heatmap(out: np.ndarray, heatmap: list[list[float]], x0: int, y0: int, x1: int, y1: int) -> None:
    """Blend the heatmap (0..1 grid over the face box) into `out` in place; cold regions stay see-through."""
    h, w = out.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        return
    grid = np.clip(np.asarray(heatmap, np.float32), 0, 1)
    heat = cv2.resize(grid, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    heat = np.clip(heat, 0, 1)[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    alpha = (0.6 * heat)[:, :, None]
    region = out[cy0:cy1, cx0:cx1].astype(np.float32)
    out[cy0:cy1, cx0:cx1] = (region * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """`rgb` (H, W, 3 uint8) as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    """`rgb` (H, W, 3 uint8) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()
