#!/usr/bin/env python3
"""Long fuzzing run of the decoder and the API; prints how many cases were tried.

    python scripts/fuzz.py --seconds 180                 # Hypothesis: decoder, then API, half the time each
    python scripts/fuzz.py --seconds 180 --engine atheris # coverage-guided (libFuzzer) on the decoder, if installed
    python scripts/fuzz.py --seconds 300 --engine all

The same properties as tests/test_fuzz.py (decode_image raises only moodlens.errors.ImageError subclasses; the API
never answers 5xx and every 4xx is problem+json), on the same inputs (tests/fuzz_strategies.py: arbitrary bytes,
bytes behind a real format's magic number, mutated valid images of every format and mode), with many more
examples. A failure prints the input (Hypothesis shrinks it first) and exits 1; atheris writes crash-* files
into --artifacts. Uses one CPU core; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning / "Corrupt EXIF data" on mutated inputs


def hypothesis_decoder(seconds: float) -> int:
    from hypothesis import HealthCheck, given, settings

    from fuzz_strategies import any_image_bytes
    from moodlens.engine.decode import decode_image
    from moodlens.engine.errors import ImageError

    count = 0

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(any_image_bytes())
    def prop(data: bytes) -> None:
        nonlocal count
        count += 1
        try:
            rgb = decode_image(data)
        except ImageError:
            return
        assert rgb.ndim == 3 and rgb.shape[2] == 3

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        prop()
    return count


def hypothesis_api(seconds: float) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from bad_inputs import multipart
    from fuzz_strategies import any_image_bytes, content_types, query_strings
    from moodlens.web import create_app

    client = create_app({"MOODLENS_RATE_LIMIT": 0}).test_client()
    count = 0

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=any_image_bytes(), content_type=content_types(), query=query_strings(), as_multipart=st.booleans())
    def prop(body: bytes, content_type: str, query: str, as_multipart: bool) -> None:
        nonlocal count
        count += 1
        data = body
        if as_multipart:
            data, content_type = multipart([("image", "fuzz.jpg", body)])
        resp = client.post(f"/api/v1/analyze?{query}", data=data, content_type=content_type)
        assert resp.status_code < 500, resp.get_data(as_text=True)[:300]
        if resp.status_code >= 400:
            assert resp.mimetype == "application/problem+json"

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        prop()
    return count


def atheris_child(seconds: int, corpus: Path, artifacts: Path) -> None:
    """Runs inside a subprocess: libFuzzer owns the process and exits it when done."""
    import atheris

    with atheris.instrument_imports():
        import PIL.Image  # noqa: F401  (Pillow's Python-level parsers get coverage feedback)

        from moodlens.engine.decode import decode_image
        from moodlens.engine.errors import ImageError

    def one_input(data: bytes) -> None:
        try:
            decode_image(data)
        except ImageError:
            pass

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=3072",
                   "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus)], one_input)
    atheris.Fuzz()


def run_atheris(seconds: int, artifacts: Path) -> int | None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris); skipped", file=sys.stderr)
        return None
    from fuzz_strategies import seeds

    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="moodlens-fuzz-corpus-") as corpus:
        for name, data in seeds().items():
            Path(corpus, name).write_bytes(data)
        proc = subprocess.run([sys.executable, __file__, "--atheris-child", "--seconds", str(seconds),
                               "--corpus", corpus, "--artifacts", str(artifacts)],
                              capture_output=True, text=True, timeout=seconds + 300)
    out = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out) or re.findall(r"Done (\d+) runs", out)
    if proc.returncode != 0:
        print(out[-5000:], file=sys.stderr)
        raise SystemExit(f"atheris found a failure (exit {proc.returncode}); inputs in {artifacts}")
    cov = re.findall(r"cov: (\d+)", out)
    print(f"atheris: coverage {cov[-1] if cov else '?'} edges", file=sys.stderr)
    return int(runs[-1]) if runs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180, help="total time budget (default 180)")
    ap.add_argument("--engine", choices=["hypothesis", "atheris", "all"], default="hypothesis")
    ap.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "moodlens-fuzz")
    ap.add_argument("--atheris-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.atheris_child:
        atheris_child(int(args.seconds), args.corpus, args.artifacts)
        return

    os.environ.setdefault("PILLOW_BLOCKS_MAX", "2")
    share = args.seconds / (3 if args.engine == "all" else 2 if args.engine == "hypothesis" else 1)
    counts: dict[str, int | None] = {}
    start = time.monotonic()
    if args.engine in ("hypothesis", "all"):
        counts["hypothesis decoder"] = hypothesis_decoder(share)
        counts["hypothesis API"] = hypothesis_api(share)
    if args.engine in ("atheris", "all"):
        counts["atheris decoder"] = run_atheris(max(1, int(share)), args.artifacts)
    elapsed = time.monotonic() - start
    total = sum(v for v in counts.values() if v)
    for name, n in counts.items():
        print(f"{name}: {n if n is not None else 'skipped'} cases")
    print(f"total: {total} cases in {elapsed:.0f} s, no failure")


if __name__ == "__main__":
    main()
