"""Why LiteRT: the same Keras classifier in LiteRT and in ONNX Runtime, one thread, ms per face.

Needs the train extra plus `pip install onnxruntime tf2onnx onnx` (benchmark only; serving uses LiteRT alone).

    python benchmarks/bench_runtimes.py runs/cnn7-mixed/best.keras
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def median_ms(fn, x: np.ndarray, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000 / len(x))


def main(checkpoint: str) -> None:
    import keras
    import onnxruntime as ort

    from moodlens.engine.classify import ExpressionClassifier
    from moodlens.training.export import export_tflite, inference_model

    model = keras.models.load_model(checkpoint, compile=False)
    cols = list(range(model.output_shape[-1]))
    tmp = Path(tempfile.mkdtemp())
    files = {q: export_tflite(model, tmp / f"m-{q}.tflite", cols, quantize=q) for q in ("none", "dynamic")}
    wrapped = inference_model(model, cols, 1.0)
    wrapped.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0)  # Keras' ONNX export wants a called model
    wrapped.export(str(tmp / "m.onnx"), format="onnx", verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(tmp / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    print(f"{'runtime':<34}{'batch 1 ms/face':>16}{'batch 32 ms/face':>18}")
    for q, path in files.items():
        clf = ExpressionClassifier(path, num_threads=1)
        row = [median_ms(clf.predict, np.zeros((b, 48, 48, 1), np.float32) + 100, 200 // b + 20) for b in (1, 32)]
        print(f"{'LiteRT ' + ('float32' if q == 'none' else 'int8 dynamic-range'):<34}{row[0]:>16.3f}{row[1]:>18.3f}")
    row = [median_ms(lambda x: session.run(None, {name: x}), np.zeros((b, 48, 48, 1), np.float32) + 100,
                     200 // b + 20) for b in (1, 32)]
    print(f"{'ONNX Runtime float32':<34}{row[0]:>16.3f}{row[1]:>18.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cnn7-mixed/best.keras")
