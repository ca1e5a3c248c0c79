"""Throughput of `moodlens batch` vs `moodlens spark-batch` (local[2]) on the same generated photos.

    python benchmarks/bench_batch.py [--n 2000] [--workers 2] [--master local[2]] [--keep DIR]

Photos are variations of skimage's astronaut (one face; ~10% are object photos with none), written to a temp
folder. Reported: images/s end to end for each runner, and the per-image cost of read + analyze measured inside
the workers (summed worker time / images): one plain process, `batch`'s pool processes, Spark's Python workers.
Spark's JVM start-up is shown apart.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_photos(root: Path, n: int) -> None:
    from s3_server import face_photo, no_face_photo

    for i in range(n):
        if i % 10 == 9:
            path, data = root / "objects" / f"object-{i:05d}.jpg", no_face_photo(i)
        else:
            data, ext = face_photo(i)
            path = root / "people" / f"{i % 16:02d}" / f"astronaut-{i:05d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def per_image_outside(root: Path, sample: int) -> float:
    """Milliseconds per image for read + analyze in this process (one thread), after a warm-up image."""
    import cv2

    from moodlens.jobs import storage
    from moodlens.jobs.batch import analyze_one, make_analyzer

    cv2.setNumThreads(1)
    analyzer = make_analyzer()
    paths = storage.list_images(str(root))[:sample]
    analyze_one(analyzer, paths[0])
    t0 = time.perf_counter()
    for p in paths:
        analyze_one(analyzer, p)
    return 1000 * (time.perf_counter() - t0) / len(paths)


@click.command()
@click.option("--n", default=2000, show_default=True, help="Photos to generate.")
@click.option("--workers", default=2, show_default=True, help="`moodlens batch` worker processes.")
@click.option("--master", default="local[2]", show_default=True)
@click.option("--partitions", default=None, type=int, help="Spark partitions (default: 4 per core).")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Generate into / reuse this folder.")
@click.option("--spark/--no-spark", default=True, show_default=True, help="Also time spark-batch.")
def main(n: int, workers: int, master: str, partitions: int | None, keep: str | None, spark: bool) -> None:
    from moodlens.jobs.batch import run_batch
    from moodlens.jobs.spark import run_spark_batch, spark_session  # noqa: F401 (pyspark only with --spark)

    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="moodlens-bench-"))
    photos = work / "photos"
    if not photos.exists():
        t0 = time.perf_counter()
        make_photos(photos, n)
        print(f"generated {n} photos in {time.perf_counter() - t0:.0f} s under {photos}", file=sys.stderr)

    outside_ms = per_image_outside(photos, min(n, 200))

    one = run_batch(str(photos), str(work / "batch1.parquet"), workers=1, progress=False)
    b = run_batch(str(photos), str(work / "batch.parquet"), workers=workers, progress=False)

    s, spark_start = None, 0.0
    if spark:
        t0 = time.perf_counter()
        session = spark_session(master, "moodlens-bench")
        spark_start = time.perf_counter() - t0
        try:
            run_spark_batch(session, str(photos), str(work / "warm"),
                            limit=2 * session.sparkContext.defaultParallelism)
            s = run_spark_batch(session, str(photos), str(work / "spark"), partitions=partitions)
        finally:
            session.stop()

    load = os.getloadavg()[0]
    rows = [
        ("one process, no pool (reference)", "1", "-", "-", f"{1000 / outside_ms:.1f}", f"{outside_ms:.1f}"),
        *[("moodlens batch", f"{r_workers} process{'es' if r_workers > 1 else ''}", r.images, f"{r.seconds:.1f}",
           f"{r.images / r.seconds:.1f}", f"{1000 * r.task_seconds / r.images:.1f}")
          for r_workers, r in ((1, one), (workers, b))],
    ]
    if s is not None:
        rows.append(("moodlens spark-batch", master, s.images, f"{s.seconds:.1f}", f"{s.images / s.seconds:.1f}",
                     f"{1000 * s.task_seconds / s.images:.1f}"))
    print(f"\n{n} photos, {os.cpu_count()} cores, load average {load:.1f} at the end; "
          f"Spark session start {spark_start:.1f} s (not in the Spark row)\n")
    print("| runner | parallelism | images | seconds | images/s | ms per image (read + analyze, per worker) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"\nbatch with {workers} workers: {one.seconds / b.seconds:.2f}x the one-worker throughput (target >= 1.8x)")


if __name__ == "__main__":
    main()
