"""Classifier speed in the serving runtime (LiteRT, one thread): ms per face at batch 1 and batch 32.

    python benchmarks/bench_model.py
"""

from __future__ import annotations

import os
import platform

from moodlens.engine.classify import ExpressionClassifier, ms_per_face, shipped_model_path


def main() -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} cores; LiteRT, 1 thread")
    print(f"{'model':<22}{'MB':>6}{'batch 1 ms/face':>18}{'batch 32 ms/face':>18}")
    for classes in ("4", "7"):
        path = shipped_model_path(classes)
        clf = ExpressionClassifier(path, num_threads=1)
        print(f"{path.name:<22}{path.stat().st_size / 1e6:>6.2f}"
              f"{ms_per_face(clf, 1, repeats=300):>18.3f}{ms_per_face(clf, 32, repeats=50):>18.3f}")


if __name__ == "__main__":
    main()
