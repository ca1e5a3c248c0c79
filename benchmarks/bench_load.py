"""Load test: `moodlens serve` (gunicorn) on 127.0.0.1, hammered by `wrk` posting a real photo.

    python benchmarks/bench_load.py                       # 60 s, 32 connections, multipart upload
    python benchmarks/bench_load.py --duration 5 --body raw --json out.json

The photo is scikit-image's astronaut (one face) resized to 640x480, as a JPEG (quality 90). wrk's Lua script
reads the body (multipart/form-data with the field `image`, or the raw image/jpeg bytes) from a file and posts it
on every request. The server runs with its rate limit off (one client address would otherwise be limited).

Reports requests/s, latency p50/p90/p99/max, non-2xx answers and socket errors (both must be 0), and the RSS and
PSS of every worker after a warm-up at full load (--warmup seconds) and at the end (they must stay flat). Exits 1
when any request failed or a worker's RSS grew by more than --max-rss-growth MiB. Loopback only; bounded by
--warmup + --duration plus start-up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from moodlens.web.serve import stop_process

LUA = r"""
local f = assert(io.open(os.getenv("MOODLENS_LOAD_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("MOODLENS_LOAD_CTYPE")

-- each wrk thread counts the status codes it gets in its own Lua state; done() adds them up
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) statuses = {} end
response = function(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end

done = function(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses") or {}) do total[code] = (total[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', code, n) end
  local out = io.open(os.getenv("MOODLENS_LOAD_REPORT"), "w")
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}, "statuses": {%s}}',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, table.concat(parts, ", ")))
  out:close()
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_jpeg() -> bytes:
    import cv2
    from PIL import Image
    from skimage import data

    rgb = cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def multipart(data: bytes, boundary: str = "moodlens-load-boundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"astronaut.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def worker_pids(master: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split())
    except OSError:
        return []


def memory_mib(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) / 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def post(url: str, body: bytes, ctype: str) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        return resp.status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    ap.add_argument("--warmup", type=int, default=5, help="seconds of load before the start readings (default 5)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--workers", type=int, default=None, help="server workers (default: moodlens serve's)")
    ap.add_argument("--server-threads", type=int, default=2)
    ap.add_argument("--body", choices=["multipart", "raw"], default="multipart")
    ap.add_argument("--timeout", type=int, default=30, help="wrk's per-request timeout, seconds")
    ap.add_argument("--max-rss-growth", type=float, default=25.0, help="MiB a worker may grow (default 25)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()

    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is not installed (apt-get install wrk, or make system-deps)")
    jpeg = photo_jpeg()
    body, ctype = multipart(jpeg) if args.body == "multipart" else (jpeg, "image/jpeg")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/analyze"
    cmd = [sys.executable, "-m", "moodlens", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--rate-limit", "0", "--threads", str(args.server_threads)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    with tempfile.TemporaryDirectory(prefix="moodlens-load-") as tmp:
        body_path, lua_path, report_path = Path(tmp, "body"), Path(tmp, "post.lua"), Path(tmp, "report.json")
        body_path.write_bytes(body)
        lua_path.write_text(LUA)
        log = open(Path(tmp, "serve.log"), "wb")
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("moodlens serve did not start:\n" + Path(tmp, "serve.log").read_text()[-3000:])
                time.sleep(0.2)
            workers = worker_pids(server.pid)
            assert post(url, body, ctype) == 200
            env = {**os.environ, "MOODLENS_LOAD_BODY": str(body_path), "MOODLENS_LOAD_CTYPE": ctype,
                   "MOODLENS_LOAD_REPORT": str(report_path)}
            wrk_cmd = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                       f"--timeout={args.timeout}s", "-s", str(lua_path), url]
            # warm-up at full concurrency: every worker thread builds its interpreters and buffers before the
            # "start" memory reading, so start-to-end growth measures leaks, not first use
            warm = [*wrk_cmd[:3], f"-d{args.warmup}s", *wrk_cmd[4:]]
            subprocess.run(warm, env=env, capture_output=True, timeout=args.warmup + args.timeout + 60, check=True)
            mem_start = {pid: memory_mib(pid) for pid in workers}
            t0 = time.monotonic()
            proc = subprocess.run(wrk_cmd, env=env, capture_output=True, text=True,
                                  timeout=args.duration + args.timeout + 60)
            wall = time.monotonic() - t0
            mem_end = {pid: memory_mib(pid) for pid in worker_pids(server.pid)}
            alive = server.poll() is None
            health = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5).status
        finally:
            stop_process(server)
            log.close()
        serve_log = Path(tmp, "serve.log").read_text(errors="replace")
        if proc.returncode != 0 or not report_path.exists():
            sys.exit(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        raw = json.loads(report_path.read_text())

    ok = raw["statuses"].get("200", 0)
    non_2xx = sum(n for code, n in raw["statuses"].items() if not code.startswith("2"))
    socket_errors = sum(raw["errors"][k] for k in ("connect", "read", "write", "timeout"))
    growth = {pid: mem_end.get(pid, {}).get("rss", float("nan")) - m["rss"] for pid, m in mem_start.items()}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({_cpu_model()}), Python {platform.python_version()}",
        "server": {"workers": len(workers), "threads": args.server_threads, "rate_limit": 0},
        "load": {"tool": "wrk", "connections": args.connections, "threads": args.threads,
                 "duration_s": args.duration, "body": args.body, "body_bytes": len(body), "image": "640x480 JPEG"},
        "requests": raw["requests"], "ok_200": ok,
        "requests_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "latency_ms": {k: round(raw[f"{k}_us"] / 1000, 1) for k in ("p50", "p90", "p99", "max", "mean")},
        "non_2xx": non_2xx, "socket_errors": socket_errors, "errors": raw["errors"], "statuses": raw["statuses"],
        "workers_rss_mib": {"start": [round(m["rss"], 1) for m in mem_start.values()],
                            "end": [round(mem_end.get(p, {}).get("rss", float("nan")), 1) for p in mem_start]},
        "workers_pss_mib": {"start": [round(m.get("pss", float("nan")), 1) for m in mem_start.values()],
                            "end": [round(mem_end.get(p, {}).get("pss", float("nan")), 1) for p in mem_start]},
        "same_workers_at_end": sorted(mem_end) == sorted(mem_start), "server_alive": alive, "health_after": health,
        "tracebacks_in_log": serve_log.count("Traceback"), "worker_timeouts": serve_log.count("WORKER TIMEOUT"),
        "wall_s": round(wall, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    failures = []
    if non_2xx or socket_errors or ok != raw["requests"]:
        failures.append(f"{non_2xx} non-2xx answers, {socket_errors} socket errors")
    if not report["same_workers_at_end"] or not alive or report["worker_timeouts"]:
        failures.append("a worker was restarted or the server died")
    if any(g > args.max_rss_growth for g in growth.values()):
        failures.append(f"worker RSS grew by {max(growth.values()):.1f} MiB (limit {args.max_rss_growth})")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


def _cpu_model() -> str:
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        return m.group(1).strip() if m else "unknown CPU"
    except OSError:
        return "unknown CPU"


if __name__ == "__main__":
    main()
