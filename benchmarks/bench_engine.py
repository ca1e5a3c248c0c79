"""End-to-end milliseconds per photo, stage by stage, one thread (LiteRT and OpenCV), median and p90.

    python benchmarks/bench_engine.py [--runs 200] [--classes 4] [--model photos]

The one-face photo's end-to-end time is also given as a ratio to the reference unit (benchmarks/reference.py),
measured in the same run: that ratio, not the milliseconds, is what compares across machines.

Photos (JPEG bytes in memory, built from skimage's public-domain astronaut): one face at 640x480, and a group of
four faces at 640x480 (heads pasted on a wall; small enough that "auto" also runs the full-range detector).
"""

from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
from PIL import Image
from reference import machine, reference_unit_ms

STAGES = ("decode", "detect", "align", "classify", "total")


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def one_face_photo() -> np.ndarray:
    """640x480, one face about a quarter of the width (a portrait / webcam framing)."""
    from skimage import data

    return cv2.resize(data.astronaut()[20:320, 25:425], (640, 480), interpolation=cv2.INTER_AREA)


def group_photo(sizes=(200, 180, 190, 210), width: int = 640, height: int = 480, cols: int = 2) -> np.ndarray:
    """The astronaut's head pasted at `sizes` in a grid on a plain wall."""
    from skimage import data

    head = data.astronaut()[30:230, 125:325]
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = (200, 190, 170)
    rows = -(-len(sizes) // cols)
    for i, s in enumerate(sizes):
        r, c = divmod(i, cols)
        x0, y0 = int((c + 0.5) * width / cols) - s // 2, int((r + 0.5) * height / rows) - s // 2
        canvas[y0:y0 + s, x0:x0 + s] = cv2.resize(head, (s, s), interpolation=cv2.INTER_AREA)
    return canvas


def bench(analyzer, data: bytes, runs: int) -> tuple[int, dict[str, tuple[float, float]]]:
    """(faces, {stage: (median ms, p90 ms)}) over `runs` analyses after 5 warm-ups.

    Stages are wall-clock times from the analyzer; "cpu" is the thread's CPU time per photo, which other
    processes on the machine inflate far less than wall time (what one idle core would take).
    """
    for _ in range(5):
        faces = len(analyzer.analyze(data).faces)
    times = {s: [] for s in (*STAGES, "cpu")}
    for _ in range(runs):
        c0 = time.thread_time()
        t = analyzer.analyze(data).timings_ms
        times["cpu"].append((time.thread_time() - c0) * 1000)
        for s in STAGES:
            times[s].append(t[s])
    return faces, {s: (float(np.median(v)), float(np.percentile(v, 90))) for s, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--classes", default="4")
    parser.add_argument("--model", help="a .tflite file or a shipped alternative's name (e.g. photos)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core: OpenCV's resize/warp would otherwise use a thread pool
    from moodlens import Analyzer

    analyzer = Analyzer(classes=args.classes, model_path=args.model, num_threads=1)
    photos = {"1 face, 640x480 JPEG": jpeg(one_face_photo()), "4 faces, 640x480 JPEG": jpeg(group_photo())}
    print(f"machine: {machine()}")
    print(f"LiteRT and OpenCV on 1 thread, detector auto, {analyzer.classifier.path.name}, {args.runs} runs; "
          "ms median / p90")
    columns = (*STAGES, "cpu")
    print(f"{'photo':<24}{'faces':>6}" + "".join(f"{s:>16}" for s in columns))
    for name, data in photos.items():
        t0 = time.perf_counter()
        faces, stats = bench(analyzer, data, args.runs)
        row = f"{name:<24}{faces:>6}" + "".join(f"{stats[s][0]:>9.2f} /{stats[s][1]:>5.1f}" for s in columns)
        print(row + f"   ({time.perf_counter() - t0:.1f} s)")
        if name.startswith("1 face"):
            ref = reference_unit_ms(data, args.runs)
            faces, again = bench(analyzer, data, args.runs)  # again, right after the unit: same machine state
            total = (stats["total"][0] + again["total"][0]) / 2
            print(f"  reference unit (benchmarks/reference.py): imdecode {ref['imdecode']:.2f} + invoke "
                  f"{ref['invoke']:.2f} = {ref['unit']:.2f} ms; end to end = {total / ref['unit']:.2f}x the unit "
                  "(target <= 2.0x)")


if __name__ == "__main__":
    main()
