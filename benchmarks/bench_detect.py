"""Face detection on real photos: group counts, no-face photos, single faces; recall by face size; ms per photo.

    python benchmarks/bench_detect.py [--photos ../shared/data/photos-dev] [--detectors auto short full yunet]

photos-dev (validation only, never training): `group/` photos with hand counts and boxes (`boxes.csv`),
`noface/` photos, `single/` photos with one face each. A group photo counts as right when the number of faces
found is within max(1, 10%) of the hand count; recall and precision are against the boxes (IoU >= 0.4), by face
width. One thread, images decoded at full size (the detector's own cost, not the analyzer's reduced decode).
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
    args = parser.parse_args()
    cv2.setNumThreads(1)
    root = Path(args.photos)
    rows = list(csv.DictReader((root / "labels.csv").open()))
    boxes = defaultdict(list)
    for b in csv.DictReader((root / "boxes.csv").open()):
        boxes[b["file"]].append([float(b[k]) for k in ("x", "y", "w", "h")])
    images = {r["file"]: decode_image(root / r["file"], max_pixels=60_000_000) for r in rows}
    print(f"machine: {machine()}; {len(rows)} photos from {root}")
    print("| detector | group counts ok (of 36) | no-face clean (of 28) | single found (of 194) | false faces, "
          "no-face photos | recall by face width: <24, 24-40, 40-60, 60-100, >=100 px | precision (group) "
          "| ms/photo median (group, single) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.detectors:
        det = FaceDetector(name)
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


if __name__ == "__main__":
    main()
