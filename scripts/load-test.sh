#!/usr/bin/env bash
# Load test: `moodlens serve` on 127.0.0.1 (free port, rate limit off) under wrk, 60 s at 32 connections posting a
# 640x480 JPEG of scikit-image's astronaut. Prints requests/s, p50/p99 latency, non-2xx and socket errors (must be
# 0) and worker RSS at start and end (must stay flat); exits 1 otherwise. Arguments go to benchmarks/bench_load.py:
#   scripts/load-test.sh                          # the full run
#   scripts/load-test.sh --duration 5             # a quick check
#   scripts/load-test.sh --body raw --json /tmp/load.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
command -v wrk >/dev/null || { echo "wrk is not installed: make system-deps (or apt-get install wrk)" >&2; exit 2; }
exec "$PY" benchmarks/bench_load.py "$@"
