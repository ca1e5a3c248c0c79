"""Start `moodlens serve` and measure it: time to the first 200 on /api/v1/health, memory of the master and of
each worker after start (RSS, and PSS, which splits pages the workers share with the master), and the latency of
sequential /api/v1/analyze requests on one photo.

    python benchmarks/bench_server.py [--workers 2] [--threads 2] [--requests 30]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from reference import process_table

from moodlens.web.serve import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid: int) -> dict[str, float]:
    """RSS and PSS of `pid`, MiB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1]) / 1024
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) / 1024
    return out


def children(pid: int) -> list[int]:
    return sorted(child for child, (parent, _, _) in process_table().items() if parent == pid)


def photo() -> bytes:
    """A JPEG with one face (scikit-image's astronaut) or, without scikit-image, a plain gray image."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        rgb = data.astronaut()
    except ImportError:
        rgb = np.full((512, 512, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        resp.read()
        return resp.status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=30, help="sequential analyze requests to time (0: none)")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moodlens", "serve", "--port", str(port), "--workers", str(args.workers),
           "--threads", str(args.threads), "--rate-limit", "0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if get(f"{base}/api/v1/health", timeout=1) == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"moodlens serve exited with {proc.returncode}; run it by hand to see why: {' '.join(cmd)}")
            if time.perf_counter() - t0 > args.timeout:
                sys.exit("moodlens serve did not answer in time")
            time.sleep(0.02)
        start_s = time.perf_counter() - t0
        time.sleep(1.0)  # let every worker finish booting
        workers = children(proc.pid)
        report: dict = {
            "workers": args.workers, "threads": args.threads, "cpus": os.cpu_count(),
            "start_to_first_health_200_s": round(start_s, 3),
            "master_mib": memory_mib(proc.pid),
            "worker_mib": [memory_mib(w) for w in workers],
        }
        if args.requests:
            body = photo()
            times = []
            for _ in range(args.requests + 2):
                req = urllib.request.Request(f"{base}/api/v1/analyze", data=body, method="POST",
                                             headers={"Content-Type": "image/jpeg"})
                t = time.perf_counter()
                with urllib.request.urlopen(req, timeout=30) as resp:
                    faces = len(json.load(resp)["faces"])
                times.append((time.perf_counter() - t) * 1000)
            times = times[2:]  # the first requests of a thread build its interpreter
            report["analyze_ms"] = {
                "n": len(times), "faces": faces, "p50": round(statistics.median(times), 1),
                "p90": round(sorted(times)[int(0.9 * (len(times) - 1))], 1), "min": round(min(times), 1),
            }
            report["worker_mib_after_requests"] = [memory_mib(w) for w in children(proc.pid)]
    finally:
        stop_process(proc)

    def fmt(m: dict[str, float]) -> str:
        return f"RSS {m.get('rss', 0):.1f} MiB, PSS {m.get('pss', 0):.1f} MiB"

    print(f"moodlens serve: workers={args.workers} threads={args.threads} on {os.cpu_count()} CPUs")
    print(f"  start to first 200 on /api/v1/health: {report['start_to_first_health_200_s']:.2f} s")
    print(f"  master:   {fmt(report['master_mib'])}")
    for i, m in enumerate(report["worker_mib"]):
        print(f"  worker {i}: {fmt(m)}")
    if "analyze_ms" in report:
        a = report["analyze_ms"]
        print(f"  analyze (512x512 JPEG, {a['faces']} face, sequential, n={a['n']}): "
              f"p50 {a['p50']} ms, p90 {a['p90']} ms, min {a['min']} ms")
        for i, m in enumerate(report["worker_mib_after_requests"]):
            print(f"  worker {i} after requests: {fmt(m)}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
