"""The Keras port of face-api.js's FaceExpressionNet gives the original's probabilities.

Reference: tests/fixtures/faceapi/reference.json, written by scripts/faceapi-reference.mjs running the package's
own FaceExpressionNet (tfjs CPU backend) on synthetic inputs rebuilt here bit for bit (checked by SHA-256).
The package (weights included) comes from `make faceapi` (scripts/fetch-faceapi.sh) into .cache/faceapi; without
it, or without node, the tests skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "faceapi" / "reference.json"
CACHE = Path(os.environ.get("FACEAPI_CACHE", ROOT / ".cache" / "faceapi"))
PACKAGE = CACHE / "node_modules" / "@vladmandic" / "face-api"
MODEL_DIR = PACKAGE / "model"
SCRIPT = ROOT / "scripts" / "faceapi-reference.mjs"
TOLERANCE = 1e-3
S = 112


def _hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32, as hash32 in scripts/faceapi-reference.mjs (uint32 arithmetic wraps like Math.imul)."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def make_image(recipe: dict) -> np.ndarray:
    """The 112x112x3 uint8 image of a fixture recipe: makeImage in scripts/faceapi-reference.mjs."""
    y, x, c = np.meshgrid(np.arange(S), np.arange(S), np.arange(3), indexing="ij")
    kind = recipe["kind"]
    if kind in ("noise", "blocks"):
        if kind == "noise":
            index = (y * S + x) * 3 + c
        else:
            index = ((y // recipe["cell"]) * S + x // recipe["cell"]) * 3 + c
        base = np.uint32((recipe["seed"] * 0x9E3779B9) & 0xFFFFFFFF)
        v = _hash32(base + index.astype(np.uint32)) >> np.uint32(24)
    elif kind == "gradient":
        v = np.choose(c, [x * 255 // (S - 1), y * 255 // (S - 1), (x + y) * 255 // (2 * (S - 1))])
    elif kind == "radial":
        d2 = (2 * x - (S - 1)) ** 2 + (2 * y - (S - 1)) ** 2
        v = 255 - d2 * 255 // (2 * (S - 1) ** 2)
    else:
        raise ValueError(f"unknown recipe {kind}")
    return v.astype(np.uint8)


def _port_probabilities(cases: list[dict]) -> np.ndarray:
    from moodlens.training.faceapi import load_faceapi_expression_net

    images = []
    for case in cases:
        image = make_image(case["recipe"])
        assert hashlib.sha256(image.tobytes()).hexdigest() == case["sha256"], case["recipe"]
        images.append(image)
    model = load_faceapi_expression_net(MODEL_DIR)
    return np.asarray(model.predict(np.stack(images).astype(np.float32), verbose=0))


def _assert_matches(reference: dict, ours: np.ndarray) -> float:
    from moodlens.training.faceapi import FACEAPI_LABELS

    assert tuple(reference["labels"]) == FACEAPI_LABELS
    theirs = np.array([case["probabilities"] for case in reference["cases"]], dtype=np.float64)
    assert theirs.shape == ours.shape == (len(reference["cases"]), 7)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= TOLERANCE, f"max |port - face-api| = {diff:.2e}"
    return diff


@pytest.fixture(scope="module")
def model_dir() -> Path:
    if not (MODEL_DIR / "face_expression_model-weights_manifest.json").is_file():
        pytest.skip(f"face-api package not installed in {CACHE} (run `make faceapi`)")
    pytest.importorskip("keras")
    return MODEL_DIR


def test_classes_map_onto_fer2013_names() -> None:
    pytest.importorskip("keras")
    from moodlens.training.faceapi import FACEAPI_CLASSES
    from moodlens.training.labels import FER2013_CLASSES

    assert sorted(FACEAPI_CLASSES.values()) == sorted(FER2013_CLASSES)


def test_port_matches_stored_reference(model_dir: Path) -> None:
    reference = json.loads(FIXTURE.read_text())
    _assert_matches(reference, _port_probabilities(reference["cases"]))


@pytest.mark.slow
def test_port_matches_live_face_api(model_dir: Path, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not on PATH")
    out = tmp_path / "reference.json"
    subprocess.run([node, str(SCRIPT), str(out)], check=True, capture_output=True, timeout=300,
                   env={**os.environ, "FACEAPI_CACHE": str(CACHE)})
    live = json.loads(out.read_text())
    assert live["package"] == json.loads(FIXTURE.read_text())["package"]
    _assert_matches(live, _port_probabilities(live["cases"]))
