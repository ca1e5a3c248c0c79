"""explain: occlusion-sensitivity heatmaps — which parts of a face the expression model's answer rests on.

A grey patch slides over the 48x48 crop; each occluded copy is classified and a region's heat is how much hiding
it lowers the probability of the predicted class. With the default 12x12 patch and stride 6 the patch centres
form a 7x7 grid spanning pixels 3..45 of the crop, which is the detector's face box (the crop adds a 20% margin,
align.CROP_SCALE), upright.

The copies are classified a few faces at a time (`MAX_PASS` copies per call), never all at once: a LiteRT
interpreter keeps the tensors of the largest batch it was ever given for as long as it lives (measured: +0.4 MB
per face in the batch, 1 GB after the 2,646 copies of a 54-face photo, not given back), and one call with every
copy is no faster than calls of 49 (0.60 vs 0.75 ms a copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from moodlens.engine.align import FACE_SIZE

PATCH = 12
STRIDE = 6
FILL = 128  # mid grey: carries no edge or expression of its own
#: Most faces (or occluded copies) classified in one call: bounds what each interpreter keeps allocated.
MAX_PASS = 64


def occlusion_batch(faces: np.ndarray, patch: int = PATCH, stride: int = STRIDE, fill: int = FILL) -> np.ndarray:
    """Every occluded copy of every face: (N * G * G, S, S[, C]) float32, face-major, row-major grid of G x G.

    `faces` are 48x48 grey crops (N, 48, 48[, 1]) or any square crops (N, S, S, C); `patch` and `stride` are in
    48x48 pixels, scaled to S, so that every crop of a face (a fused model reads several) is hidden in the same
    place."""
    faces = np.asarray(faces, np.float32)
    if faces.ndim < 4 or faces.shape[-1] == 1:  # grey: (S, S), (N, S, S) or (N, S, S, 1)
        size = faces.shape[-2] if faces.ndim == 4 else faces.shape[-1]
        faces = faces.reshape(-1, size, size)
    size = faces.shape[1]
    k = size / FACE_SIZE
    side = round(patch * k)
    starts = [round(v * k) for v in range(0, FACE_SIZE - patch + 1, stride)]
    g = len(starts)
    out = np.repeat(faces[:, None], g * g, axis=1)  # (N, G*G, S, S[, C])
    for i, y in enumerate(starts):
        for j, x in enumerate(starts):
            out[:, i * g + j, y:y + side, x:x + side] = fill
    return out.reshape(-1, *faces.shape[1:])


def predict_in_passes(predict: Callable, faces: np.ndarray | Sequence[np.ndarray], size: int = MAX_PASS) -> np.ndarray:
    """`predict(faces)`, called on at most `size` faces at a time (see the module's note on memory). `faces` is
    one array, or a list of arrays with a row per face each (a model's crops per input), sliced alike."""
    several = isinstance(faces, list | tuple)
    n = len(faces[0]) if several else len(faces)
    if n <= size:
        return predict(faces)
    return np.concatenate([predict([f[i:i + size] for f in faces] if several else faces[i:i + size])
                           for i in range(0, n, size)])


def occlusion_heatmaps(
    predict: Callable,
    faces: np.ndarray | Sequence[np.ndarray],
    probs: np.ndarray | None = None,
    patch: int = PATCH,
    stride: int = STRIDE,
    fill: int = FILL,
    max_pass: int = MAX_PASS,
    check: Callable[[], None] | None = None,
) -> list[list[list[float]]]:
    """One G x G heatmap (G = 7 by default) per face, values 0..1, top row first.

    `predict` maps (M, 48, 48) faces to (M, C) probabilities (e.g. ExpressionClassifier.predict); `probs` are
    the faces' unoccluded probabilities when already known. `faces` may also be a list of crops per face, one
    array per model input (what ExpressionClassifier.predict takes for a fused model): each crop is then hidden
    in the same place at once. Heat = drop of the predicted class's probability when that region is hidden,
    divided by the face's largest drop (all zeros if no region lowers it). The occluded copies of as many whole
    faces as fit in `max_pass` (at least one face) go to `predict` at a time; `check()`, if given, runs before
    each of those calls (it raises to stop: the analyzer's time limit).
    """
    several = isinstance(faces, list | tuple)
    crops = [np.asarray(f, np.float32) for f in faces] if several else \
        [np.asarray(faces, np.float32).reshape(-1, FACE_SIZE, FACE_SIZE)]
    n = len(crops[0])
    if n == 0:
        return []

    def run(batch: list[np.ndarray]) -> np.ndarray:
        if check is not None:
            check()
        return predict(batch if several else batch[0])

    if probs is None:
        probs = predict_in_passes(predict, crops if several else crops[0], max_pass)
    g = len(range(0, FACE_SIZE - patch + 1, stride))
    per_pass = max(1, max_pass // (g * g))
    occluded = np.concatenate([run([occlusion_batch(c[i:i + per_pass], patch, stride, fill) for c in crops])
                               for i in range(0, n, per_pass)]).reshape(n, g * g, -1)
    top = np.argmax(probs, axis=1)
    base = probs[np.arange(n), top]
    drop = np.clip(base[:, None] - occluded[np.arange(n), :, top], 0.0, None)  # (N, G*G)
    peak = drop.max(axis=1, keepdims=True)
    heat = np.divide(drop, peak, out=np.zeros_like(drop), where=peak > 1e-6)
    return [np.round(h.reshape(g, g).astype(np.float64), 3).tolist() for h in heat]
