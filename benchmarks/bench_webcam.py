"""The webcam page's round trip, frames per second: `moodlens serve` in a subprocess, the page in headless
Chromium on its fake camera (a Y4M video this script writes), every /api/v1/analyze answer counted.

    python benchmarks/bench_webcam.py [--seconds 15] [--scene near|far|both] [--workers 1] [--threads 2]

Scenes (640x480 camera, the page sends 640 px JPEGs at quality 0.8): `near`, the astronaut's face at arm's
length (~180 px wide: BlazeFace alone); `far`, two heads of ~45 px, as faces 2-3 m from a laptop camera
(the detector's YuNet path on a whole frame). Between whole frames the page sends only tiles around the
tracked faces, side by side in one picture (engine/track.py's RegionSearch and Mosaic). Prints the CPU, the
load, the frames sent (whole frames: their share, size and bytes; mosaics of tiles: median size), the round
trips per
second (timed in the page) and the page's own fps figure, the CPU time per frame of the server and of Chromium
(what the round trip costs, whatever else runs on the machine), and the ids the page showed. Needs Chromium
(/usr/bin/chromium), playwright and scikit-image.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from reference import process_table

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
WIDTH, HEIGHT = 640, 480


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu() -> str:
    name = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, StopIteration):
        simd = "?"
    return f"{name} ({simd}), {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f}"


def tree_cpu(root: int, name_has: str = "") -> float:
    """CPU seconds used by `root` and its descendants (those whose command name contains `name_has`)."""
    procs = process_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs and name_has in procs[pid][1].lower():
            total += procs[pid][2]
        todo += kids.get(pid, [])
    return total


def scene(kind: str) -> np.ndarray:
    import cv2
    from skimage import data

    photo = data.astronaut()
    canvas = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    if kind == "near":  # the photo letterboxed into the frame, as tests/web_helpers.write_y4m does
        canvas[:] = 0
        side = HEIGHT // 2 * 2
        canvas[:, (WIDTH - side) // 2:(WIDTH + side) // 2] = cv2.resize(photo, (side, side),
                                                                        interpolation=cv2.INTER_AREA)
        return canvas
    canvas[:] = (200, 190, 170)
    head = cv2.resize(photo[30:230, 125:325], (96, 96), interpolation=cv2.INTER_AREA)  # face ~45 px
    for x, y in ((180, 200), (370, 190)):
        canvas[y:y + 96, x:x + 96] = head
    return canvas


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 30) -> Path:
    import cv2

    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{rgb.shape[1]} H{rgb.shape[0]} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + i420)
    return path


def start_server(workers: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moodlens", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(workers), "--threads", str(threads), "--rate-limit", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/api/v1/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moodlens serve did not start")


#: Wraps the page's fetch: for each /api/v1/analyze call, when it was sent and answered (performance.now(), ms),
#: and the frame it sent (bytes, and its size decoded by the browser, after the request is on its way).
RECORD_FETCH = """(() => {
  const original = window.fetch;
  window.__frames = [];
  window.fetch = function (input, init) {
    const url = String((input && input.url) || input);
    const body = init && init.body;
    if (!url.includes("/api/v1/analyze") || !(body instanceof Blob)) return original.apply(this, arguments);
    const rec = { sent: performance.now(), bytes: body.size };
    const answer = original.apply(this, arguments);
    createImageBitmap(body).then(function (b) { rec.w = b.width; rec.h = b.height; b.close(); }, function () {});
    return answer.then(function (resp) {
      rec.done = performance.now();
      const timing = /dur=([0-9.]+)/.exec(resp.headers.get("Server-Timing") || "");
      rec.server = timing ? Number(timing[1]) : null;
      window.__frames.push(rec);
      return resp;
    });
  };
})();"""


def measure(playwright, base: str, camera: Path, seconds: float, server: int) -> dict:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=ARGS + [f"--use-file-for-fake-video-capture={camera}"])
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script(RECORD_FETCH)
        page.goto(base + "/webcam")
        page.click("#start")
        page.wait_for_function("() => /^[0-9.]+ fps$/.test(document.getElementById('fps').textContent)",
                               timeout=30_000)
        page.wait_for_timeout(2000)  # warm up: each worker thread builds its interpreters on its first request
        t0 = page.evaluate("performance.now()")
        cpu0 = tree_cpu(server), tree_cpu(os.getpid(), "chrom")
        ids: set[str] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ids |= set(page.eval_on_selector_all("#cam-overlay .face-box", "bs => bs.map(b => b.dataset.face)"))
            page.wait_for_timeout(250)
        t1 = page.evaluate("performance.now()")
        cpu1 = tree_cpu(server), tree_cpu(os.getpid(), "chrom")
        frames = [f for f in page.evaluate("window.__frames") if t0 <= f["done"] <= t1]
        page_fps = page.inner_text("#fps")
        page.click("#stop")
    finally:
        browser.close()
    latency = [f["done"] - f["sent"] for f in frames]
    server_ms = [f["server"] for f in frames if f.get("server") is not None]
    n = max(1, len(frames))
    whole = [f for f in frames if (f.get("w"), f.get("h")) == (WIDTH, HEIGHT)]
    parts = [f for f in frames if f.get("w") and (f["w"], f["h"]) != (WIDTH, HEIGHT)]
    return {"fps": 1000 * len(frames) / (t1 - t0), "page": page_fps, "ids": sorted(ids, key=int),
            "whole": len(whole) / n, "frame": whole[-1] if whole else None,
            "region": (statistics.median(f["w"] for f in parts), statistics.median(f["h"] for f in parts),
                       statistics.median(f["bytes"] for f in parts)) if parts else None,
            "analyze_whole_ms": statistics.median(f["server"] for f in whole) if whole else np.nan,
            "analyze_region_ms": statistics.median(f["server"] for f in parts) if parts else np.nan,
            "latency_ms": statistics.median(latency) if latency else np.nan,
            "analyze_ms": statistics.median(server_ms) if server_ms else np.nan,
            "server_cpu_ms": 1000 * (cpu1[0] - cpu0[0]) / n, "browser_cpu_ms": 1000 * (cpu1[1] - cpu0[1]) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--scene", choices=["near", "far", "both"], default="both")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from moodlens.web.serve import stop_process

    print(f"CPU: {cpu()}")
    print(f"server: --workers {args.workers} --threads {args.threads}; camera {WIDTH}x{HEIGHT}; {args.seconds:.0f} s "
          "per scene")
    proc, base = start_server(args.workers, args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
            for kind in ["near", "far"] if args.scene == "both" else [args.scene]:
                r = measure(p, base, write_y4m(Path(tmp) / f"{kind}.y4m", scene(kind)), args.seconds, proc.pid)
                f = r["frame"] or {}
                part = r["region"]
                regions = (f"tiles {100 * (1 - r['whole']):.0f}% (median {part[0]:.0f}x{part[1]:.0f}, "
                           f"{part[2] / 1024:.0f} KiB, analysis {r['analyze_region_ms']:.0f} ms)") if part \
                    else "no tiles"
                print(f"{kind:5s} frames sent: whole {100 * r['whole']:.0f}% ({f.get('w')}x{f.get('h')} JPEG "
                      f"{f.get('bytes', 0) / 1024:.0f} KiB, analysis {r['analyze_whole_ms']:.0f} ms), {regions} | "
                      f"round trip {r['fps']:.1f} frames/s (median request-to-answer {r['latency_ms']:.0f} ms, "
                      f"of which analysis {r['analyze_ms']:.0f} ms; "
                      f"the page shows {r['page']}) | CPU per frame: server {r['server_cpu_ms']:.1f} ms, "
                      f"Chromium {r['browser_cpu_ms']:.1f} ms | face ids shown {r['ids']}")
    finally:
        stop_process(proc)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
