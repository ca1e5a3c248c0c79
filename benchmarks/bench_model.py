"""Classifier speed in the serving runtime (LiteRT, one thread): ms per face at batch 1 and batch 32.

    python benchmarks/bench_model.py                      # the shipped files
    python benchmarks/bench_model.py /tmp/int8/*.tflite   # and other exports, measured in the same run
"""

from __future__ import annotations

import sys
from pathlib import Path

from reference import REFERENCE_MODEL, machine

from moodlens.engine.classify import ExpressionClassifier, model_file, ms_per_face, shipped_model_path


def main(extra: list[str]) -> None:
    print(f"machine: {machine()}; LiteRT, 1 thread")
    print(f"{'model':<34}{'MB':>6}{'batch 1 ms/face':>18}{'batch 32 ms/face':>18}{'batch 1 vs reference':>22}")
    ref = ms_per_face(ExpressionClassifier(REFERENCE_MODEL, num_threads=1), 1, repeats=300)
    rows = [("reference/expression-4.tflite", REFERENCE_MODEL)]
    rows += [(p.name, p) for p in (shipped_model_path("4"), shipped_model_path("7"), model_file("photos"))]
    rows += [(f"{Path(p).parent.name}/{Path(p).name}", Path(p)) for p in extra]  # int8/expression-7.tflite
    for name, path in rows:
        clf = ExpressionClassifier(path, num_threads=1)
        one = ms_per_face(clf, 1, repeats=300)
        print(f"{name:<34}{path.stat().st_size / 1e6:>6.2f}{one:>18.3f}"
              f"{ms_per_face(clf, 32, repeats=50):>18.3f}{one / ref:>21.2f}x")
    print("(budget for a new shipped classifier: <= 1.6x the reference at batch 1, file <= 3 MB)")

if __name__ == "__main__":
    main(sys.argv[1:])
