"""What every speed benchmark shares: the machine it ran on and the fixed reference unit figures are divided by.

Machines differ more than code does (LiteRT runs several times slower on an AVX2-only host than on an AVX-512
one), so speed targets are ratios to a fixed unit of work measured in the same run: one full-resolution
`cv2.imdecode` of the photo's bytes plus one batch-1 invoke of `reference/expression-4.tflite` (the 4-class
classifier shipped before Model v2), both on one thread.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

REFERENCE_MODEL = Path(__file__).parent / "reference" / "expression-4.tflite"


def machine() -> str:
    """CPU model, its widest vector extension, cores and load average (other work skews the figures)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu} ({vector}), {os.cpu_count()} cores, load average {load}"


def median_ms(fn, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def reference_unit_ms(jpeg: bytes, runs: int = 200) -> dict[str, float]:
    """Median ms of the reference unit's two parts and their sum, on one thread."""
    from ai_edge_litert.interpreter import Interpreter

    cv2.setNumThreads(1)
    buf = np.frombuffer(jpeg, np.uint8)
    it = Interpreter(model_path=str(REFERENCE_MODEL), num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    face = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 1)).astype(np.float32)

    def invoke():
        it.set_tensor(inp, face)
        it.invoke()

    decode = median_ms(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR), runs)
    classify = median_ms(invoke, runs)
    return {"imdecode": decode, "invoke": classify, "unit": decode + classify}


def process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used so far) of every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    return out
