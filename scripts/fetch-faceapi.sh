#!/usr/bin/env bash
# Installs face-api.js (the @vladmandic/face-api fork: weights + source) and the tfjs it runs on into
# .cache/faceapi, for the FaceExpressionNet port (src/moodlens/training/faceapi.py) and its parity test.
# Build/test time only: nothing downloads the package at run time. Idempotent: a second run is a no-op.
set -euo pipefail
FACEAPI_VERSION=1.7.15
TFJS_VERSION=4.22.0  # the tfjs face-api 1.7.15 was built against
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${FACEAPI_CACHE:-$ROOT/.cache/faceapi}"
STAMP="$PREFIX/.installed-$FACEAPI_VERSION-$TFJS_VERSION"
if [[ -f "$STAMP" ]]; then
  exit 0
fi
if ! command -v npm >/dev/null; then  # not fatal: tests/test_faceapi_port.py then skips, saying why
  echo "fetch-faceapi: npm not found, face-api not installed (install Node.js 18+ for the parity tests)" >&2
  exit 0
fi
mkdir -p "$PREFIX"
# --ignore-scripts: no native builds (no tfjs-node). face-api's node-wasm bundle needs tfjs + tfjs-backend-wasm;
# the reference runs on the pure-JS CPU backend.
npm install --prefix "$PREFIX" --no-audit --no-fund --ignore-scripts --save-exact \
  "@vladmandic/face-api@$FACEAPI_VERSION" "@tensorflow/tfjs@$TFJS_VERSION" "@tensorflow/tfjs-backend-wasm@$TFJS_VERSION"
touch "$STAMP"
