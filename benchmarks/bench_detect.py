"""Face detection on real photos: group counts, no-face photos, single faces; recall by face size; ms per photo.

    python benchmarks/bench_detect.py [--photos ../shared/data/photos-dev] [--detectors auto short full yunet]
        [--option recheck=0] [--option verify_from=0.5]   (FaceDetector options: the figures without them)

photos-dev (validation only, never training): `group/` photos with hand counts and boxes (`boxes.csv`),
`noface/` photos, `single/` photos with one face each. A group photo counts as right when the number of faces
found is within max(1, 10%) of the hand count; recall and precision are against the boxes (IoU >= 0.4), by face
width. One thread, images decoded at full size (the detector's own cost, not the analyzer's reduced decode).

`--scale-test` adds synthetic scale tests: faces cut from the single photos (box from YuNet at full size,
1.6x margin) pasted at widths of 16-200 px on 4000x3000 canvases made from the no-face photos; recall
(IoU >= 0.3 with the pasted box, detectors draw boxes differently) by face width, and ms per canvas.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from reference import machine

from moodlens.engine.decode import decode_image
from moodlens.engine.detect import FaceDetector, iou

SIZE_BINS = ((0, 24), (24, 40), (40, 60), (60, 100), (100, 10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared/data/photos-dev"))
    parser.add_argument("--detectors", nargs="+", default=["auto", "short", "full", "yunet"])
    parser.add_argument("--scale-test", action="store_true", help="also run the synthetic scale tests")
    parser.add_argument("--only-scale-test", action="store_true", help="run only the synthetic scale tests")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=NUMBER",
                        help="a FaceDetector option for every detector, e.g. recheck=0 (no recheck)")
    args = parser.parse_args()
    options = {k: float(v) for k, v in (o.split("=", 1) for o in args.option)}
    cv2.setNumThreads(1)
    root = Path(args.photos)
    rows = list(csv.DictReader((root / "labels.csv").open()))
    boxes = defaultdict(list)
    for b in csv.DictReader((root / "boxes.csv").open()):
        boxes[b["file"]].append([float(b[k]) for k in ("x", "y", "w", "h")])
    images = {r["file"]: decode_image(root / r["file"], max_pixels=60_000_000) for r in rows}
    print(f"machine: {machine()}; {len(rows)} photos from {root}; options {options or 'default'}")
    if args.scale_test or args.only_scale_test:
        scale_test(args.detectors, rows, images, options)
        if args.only_scale_test:
            return
    print("| detector | group counts ok (of 36) | no-face clean (of 28) | single found (of 194) | false faces, "
          "no-face photos | recall by face width: <24, 24-40, 40-60, 60-100, >=100 px | precision (group) "
          "| ms/photo median (group, single) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.detectors:
        det = FaceDetector(name, **options)
        ok = clean = single = false_faces = 0
        hit, total = np.zeros(len(SIZE_BINS)), np.zeros(len(SIZE_BINS))
        matched = found_n = 0
        ms = defaultdict(list)
        for r in rows:
            rgb = images[r["file"]]
            t0 = time.perf_counter()
            found = det.detect(rgb)
            ms[r["kind"]].append((time.perf_counter() - t0) * 1000)
            n = int(r["n_faces"])
            if r["kind"] == "group":
                ok += abs(len(found) - n) <= max(1, 0.1 * n)
                truth = np.array(boxes[r["file"]])
                m = iou(truth, np.array([d.box for d in found])) if found else np.zeros((len(truth), 1))
                got = m.max(axis=1) >= 0.4
                for i, (lo, hi) in enumerate(SIZE_BINS):
                    in_bin = (truth[:, 2] >= lo) & (truth[:, 2] < hi)
                    hit[i] += (got & in_bin).sum()
                    total[i] += in_bin.sum()
                matched += int((m.max(axis=0) >= 0.4).sum()) if found else 0
                found_n += len(found)
            elif r["kind"] == "noface":
                clean += not found
                false_faces += len(found)
            else:
                single += bool(found)
        recall = ", ".join(f"{h / t:.2f}" if t else "-" for h, t in zip(hit, total, strict=True))
        print(f"| {name} | {ok} | {clean} | {single} | {false_faces} | {recall} | {matched / max(found_n, 1):.2f} "
              f"| {np.median(ms['group']):.1f}, {np.median(ms['single']):.1f} |")


SCALE_WIDTHS = (16, 20, 24, 32, 40, 60, 100, 200)
CANVAS = (3000, 4000)  # height, width: a 12 Mpx phone photo


def face_patches(rows: list[dict], images: dict, n: int = 40, margin: float = 1.6) -> list[tuple[np.ndarray, float]]:
    """(patch, face width as a fraction of the patch) for the largest face of the first `n` single photos."""
    yunet = FaceDetector("yunet")
    patches = []
    for r in [r for r in rows if r["kind"] == "single"]:
        rgb = images[r["file"]]
        found = yunet.detect(rgb)
        if not found:
            continue
        x, y, w, h = max(found, key=lambda d: d.box[2] * d.box[3]).box
        side = max(w, h) * margin
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
        patch = rgb[y0:int(cy + side / 2), x0:int(cx + side / 2)]
        if min(patch.shape[:2]) >= 0.9 * side:  # faces cut off by the photo's edge would paste half a face
            patches.append((patch, w / patch.shape[1]))
        if len(patches) == n:
            break
    return patches


def scale_canvases(rows: list[dict], images: dict, width: int, patches, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """Canvases from the no-face photos with faces `width` px wide pasted on a jittered grid; (canvas, boxes)."""
    out = []
    backgrounds = [images[r["file"]] for r in rows if r["kind"] == "noface"][:4]
    for k, bg in enumerate(backgrounds):
        canvas = cv2.resize(bg, CANVAS[::-1], interpolation=cv2.INTER_LINEAR)
        cell = max(int(width / min(f for _, f in patches) * 1.3), 64)
        truth = []
        cells = [(gy, gx) for gy in range(0, CANVAS[0] - cell, cell) for gx in range(0, CANVAS[1] - cell, cell)]
        for c in rng.permutation(len(cells))[:24]:  # spread over the whole canvas, not the top rows
            gy, gx = cells[c]
            patch, frac = patches[(k * 24 + len(truth)) % len(patches)]
            side = int(round(width / frac))
            small = cv2.resize(patch, (side, int(round(side * patch.shape[0] / patch.shape[1]))),
                               interpolation=cv2.INTER_AREA)
            ph, pw = small.shape[:2]
            x0 = gx + int(rng.integers(0, max(cell - pw, 1)))
            y0 = gy + int(rng.integers(0, max(cell - ph, 1)))
            canvas[y0:y0 + ph, x0:x0 + pw] = small
            fw = frac * pw
            truth.append([x0 + (pw - fw) / 2, y0 + (ph - fw) / 2, fw, fw])
        out.append((canvas, np.array(truth)))
    return out


def scale_test(detectors: list[str], rows: list[dict], images: dict, options: dict | None = None) -> None:
    """Recall by pasted face width on 4000x3000 canvases, and ms per canvas, for each detector."""
    patches = face_patches(rows, images)
    rng = np.random.default_rng(0)
    sets = {w: scale_canvases(rows, images, w, patches, rng) for w in SCALE_WIDTHS}
    n_faces = sum(len(t) for _, t in sets[SCALE_WIDTHS[0]])
    print(f"\nsynthetic scale test: {len(patches)} faces from single/, 4 no-face backgrounds at "
          f"{CANVAS[1]}x{CANVAS[0]}, {n_faces} faces per width")
    print("| detector | " + " | ".join(f"{w} px" for w in SCALE_WIDTHS) + " | extra boxes per canvas | ms/canvas |")
    print("|---|" + "---|" * (len(SCALE_WIDTHS) + 2))
    for name in detectors:
        det = FaceDetector(name, **(options or {}))
        recalls, extra, ms = [], [], []
        for w in SCALE_WIDTHS:
            hit = total = 0
            for canvas, truth in sets[w]:
                t0 = time.perf_counter()
                found = det.detect(canvas)
                ms.append((time.perf_counter() - t0) * 1000)
                m = iou(truth, np.array([d.box for d in found])) if found else np.zeros((len(truth), 1))
                hit += int((m.max(axis=1) >= 0.3).sum())
                total += len(truth)
                extra.append(len(found) - int((m.max(axis=0) >= 0.3).sum()) if found else 0)
            recalls.append(hit / total)
        print(f"| {name} | " + " | ".join(f"{r:.2f}" for r in recalls)
              + f" | {np.mean(extra):.1f} | {np.median(ms):.0f} |")


if __name__ == "__main__":
    main()
