"""Photos per second through `moodlens analyze` (a process pool, one Analyzer per worker).

    python benchmarks/bench_cli.py [--photos 400] [--workers 1 2]

Writes `--photos` 640x480 one-face JPEGs (variations of skimage's astronaut: crop, flip, brightness) to a
temporary folder, then times the whole command, as a user runs it, for each worker count. "steady" leaves
out the start-up (imports, model loading, pool start), measured by running the same command on one photo.
"CPU ms/photo" (command and workers, start-up excluded) does not depend on what else runs on the machine;
"idle-core estimate" = workers x 1000 / CPU ms per photo is the rate with that many otherwise idle cores.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from bench_engine import jpeg
from reference import machine


def write_photos(folder: Path, n: int) -> None:
    from skimage import data

    rgb = data.astronaut()
    rng = np.random.default_rng(0)
    for i in range(n):
        x0, y0 = int(rng.integers(0, 60)), int(rng.integers(0, 30))
        x1, y1 = x0 + int(rng.integers(360, 452 - x0 + 60)), y0 + int(rng.integers(280, 330))
        photo = cv2.resize(rgb[y0:y1, x0:min(x1, 512)], (640, 480), interpolation=cv2.INTER_AREA)
        if i % 2:
            photo = photo[:, ::-1]
        photo = np.clip(photo.astype(np.float32) * rng.uniform(0.8, 1.15), 0, 255).astype(np.uint8)
        (folder / f"photo-{i:04d}.jpg").write_bytes(jpeg(photo, quality=int(rng.integers(80, 95))))


def timed(args: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the command and its pool workers, stdout) of one `moodlens analyze` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "moodlens", "analyze", *args, "-q"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"moodlens analyze failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_photos(folder, args.photos)
        one = folder / "photo-0000.jpg"
        print(f"machine: {machine()}")
        print(f"{args.photos} JPEGs 640x480, one face each; `python -m moodlens analyze DIR --workers N -q`")
        print(f"{'workers':>8}{'wall s':>9}{'photos/s':>10}{'start-up s':>12}{'steady photos/s':>17}"
              f"{'CPU ms/photo':>14}{'idle-core estimate':>20}{'faces':>7}")
        whole = {}
        for workers in args.workers:
            startup, startup_cpu, _ = timed([str(one), "--workers", str(workers)])
            wall, cpu, out = timed([str(folder), "--workers", str(workers)])
            faces = sum(line.count('"box"') for line in out.splitlines())
            steady = (args.photos - 1) / max(wall - startup, 1e-9)
            cpu_ms = (cpu - startup_cpu) * 1000 / (args.photos - 1)
            print(f"{workers:>8}{wall:>9.2f}{args.photos / wall:>10.1f}{startup:>12.2f}{steady:>17.1f}"
                  f"{cpu_ms:>14.2f}{workers * 1000 / cpu_ms:>20.1f}{faces:>7}")
            whole[workers] = args.photos / wall
        if 1 in whole:
            for workers, rate in whole.items():
                if workers > 1:
                    print(f"--workers {workers}: {rate / whole[1]:.2f}x the one-worker throughput, whole command "
                          "(target >= 1.8x at 2)")


if __name__ == "__main__":
    main()
