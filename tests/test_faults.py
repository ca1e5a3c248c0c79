"""A broken model file (truncated, random bytes, empty, missing, the wrong network, a broken card) is a clear
start-up error naming the file, from `Analyzer`, `create_app`, `moodlens serve`, `moodlens analyze` and
`moodlens batch`: a one-line message and a non-zero exit, never a traceback or a crash on the first request.

(Batch/Spark kill-and-resume and S3-down faults are in test_batch.py, test_spark.py and test_storage.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from moodlens import Analyzer
from moodlens.engine.classify import shipped_model_path
from moodlens.engine.errors import ModelError

BAD_MODELS = ["truncated", "random", "empty", "text", "wrong-network", "bad-card", "missing"]


def make_bad_model(kind: str, folder: Path) -> Path:
    """A broken copy of the shipped 4-class model, as `folder/<kind>.tflite`."""
    good = shipped_model_path("4")
    path = folder / f"{kind}.tflite"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif kind == "random":
        path.write_bytes(os.urandom(300_000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 4704484\n")  # an LFS pointer
    elif kind == "wrong-network":  # a valid LiteRT model, but the face detector: 128x128x3 in, not 48x48x1
        shutil.copy(good.with_name("face_detection_short_range.tflite"), path)
    elif kind == "bad-card":
        shutil.copy(good, path)
        path.with_suffix(".json").write_text('{"classes": ["a", "b"')
    elif kind != "missing":
        raise ValueError(kind)
    return path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {kind: make_bad_model(kind, folder) for kind in BAD_MODELS}


@pytest.mark.parametrize("kind", BAD_MODELS)
def test_analyzer_refuses_a_broken_model_naming_it(bad_models, kind):
    path = bad_models[kind]
    with pytest.raises(ModelError) as info:
        Analyzer(model_path=path)
    message = str(info.value)
    assert path.stem in message and "\n" not in message  # the model, or its card beside it


def test_wrong_number_of_classes_in_card(tmp_path):
    path = tmp_path / "m.tflite"
    shutil.copy(shipped_model_path("4"), path)
    path.with_suffix(".json").write_text('{"classes": ["a", "b", "c"]}')
    with pytest.raises(ModelError, match="m.tflite.*4 outputs.*3 classes"):
        Analyzer(model_path=path)


@pytest.mark.parametrize("kind", ["truncated", "wrong-network", "missing"])
def test_create_app_refuses_a_broken_model(bad_models, kind):
    from moodlens.web import create_app

    with pytest.raises(ModelError, match=bad_models[kind].name):
        create_app({"MOODLENS_MODEL_PATH": str(bad_models[kind])})


def assert_one_line_failure(code: int, output: str, path: Path) -> None:
    assert code != 0
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("INFO:")]
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1 and path.stem in errors[0], output


@pytest.mark.parametrize("kind", ["truncated", "random", "wrong-network"])
def test_serve_stops_at_start_up(bad_models, kind):
    path = bad_models[kind]
    proc = subprocess.run([sys.executable, "-m", "moodlens", "serve", "--port", "0", "--model", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert_one_line_failure(proc.returncode, proc.stdout + proc.stderr, path)
    assert "could not start" in proc.stderr and "Booting worker" not in proc.stderr


def test_serve_missing_model_is_a_usage_error(bad_models):
    path = bad_models["missing"]
    proc = subprocess.run([sys.executable, "-m", "moodlens", "serve", "--port", "0", "--model", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "wrong-network", "bad-card"])
def test_cli_analyze_stops_before_any_file(bad_models, kind, tmp_path):
    from moodlens.cli import main

    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG not really")
    path = bad_models[kind]
    result = CliRunner().invoke(main, ["analyze", "--workers", "1", "--model", str(path), str(photo)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert_one_line_failure(result.exit_code, result.output, path)
    assert '"path"' not in result.stdout  # no record was written


@pytest.mark.parametrize("kind", ["truncated", "wrong-network"])
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_batch_stops_before_any_part(bad_models, kind, workers, tmp_path):
    pytest.importorskip("pyarrow")
    from moodlens.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.png").write_bytes(b"\x89PNG not really")
    path = bad_models[kind]
    dest = tmp_path / "out.parquet"
    result = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), str(dest), "--workers", str(workers),
                                       "--model", str(path), "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert_one_line_failure(result.exit_code, result.output, path)
    assert not dest.exists() and not (tmp_path / "out.parquet.parts").exists()


@pytest.mark.parametrize("card", ["[1, 2]", "null", '{"classes": 5}', '{"classes": "abcd"}',
                                  '{"classes": ["a", "a", "b", "c"]}', '{"uncertain_below": "hot"}', "a folder"])
def test_a_malformed_card_is_a_one_line_error(tmp_path, card):
    """Valid JSON of the wrong shape (each was a traceback, or "abcd" silently four classes a, b, c, d), or a
    card that cannot be read."""
    from moodlens.cli import main

    path = tmp_path / "m.tflite"
    shutil.copy(shipped_model_path("4"), path)
    if card == "a folder":
        path.with_suffix(".json").mkdir()
    else:
        path.with_suffix(".json").write_text(card)
    with pytest.raises(ModelError, match="m.json") as info:
        Analyzer(model_path=path)
    assert "\n" not in str(info.value)
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(main, ["analyze", "--workers", "1", "--model", str(path), str(photo)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert_one_line_failure(result.exit_code, result.output, path)
