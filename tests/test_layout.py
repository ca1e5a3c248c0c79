"""The package's rooms and what each may import: the engine stands alone, and serving stays light."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "moodlens"
ROOMS = ("engine", "training", "jobs", "web", "cli", "models")
HEAVY = ("pandas", "sklearn", "scipy", "matplotlib", "tensorflow", "keras", "pyspark", "pyarrow")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "moodlens":  # `from moodlens import batch` names a module too
                names |= {f"moodlens.{a.name}" for a in node.names}
    return names


def test_every_module_lives_in_a_room():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == [], f"modules outside engine/ training/ jobs/ web/ cli/: {loose}"
    assert all((PACKAGE / room / "__init__.py").is_file() for room in ROOMS)


@pytest.mark.parametrize("module", sorted((PACKAGE / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_imports_no_other_room_and_nothing_heavy(module):
    bad = {m for m in imported_modules(module)
           if m.split(".")[:2] in [["moodlens", r] for r in ("training", "jobs", "web", "cli")]
           or m.split(".")[0] in set(HEAVY) - {"matplotlib"}}
    assert bad == set(), f"{module.name} imports {sorted(bad)}"


def test_matplotlib_is_only_imported_where_a_plot_is_drawn():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if any(m.split(".")[0] == "matplotlib" for m in imported_modules(p))}
    # the video timeline plot (optional: `moodlens[plots]`), training curves and the confusion matrix
    assert users <= {"engine/video.py", "training/train.py", "training/evaluate.py"}


def test_import_and_a_whole_analysis_load_nothing_heavy(astronaut_jpeg_bytes):
    code = (
        "import sys, json\n"
        "import moodlens\n"
        "after_import = sorted(sys.modules)\n"
        "from moodlens import Analyzer\n"
        "result = Analyzer().analyze(sys.stdin.buffer.read())\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "print(json.dumps({'faces': len(result.faces), 'loaded': loaded,"
        " 'engine_at_import': [m for m in after_import if m.startswith('moodlens.')]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=astronaut_jpeg_bytes, capture_output=True, check=True)
    report = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert report["faces"] == 1
    assert report["loaded"] == []
    assert report["engine_at_import"] == []  # `import moodlens` itself loads no stage


@pytest.mark.slow
def test_serving_install_stays_small(tmp_path):
    """The venv `make run` installs fits in 350 MB and serves without the extras."""
    if os.environ.get("MOODLENS_SKIP_INSTALL_TEST"):
        pytest.skip("MOODLENS_SKIP_INSTALL_TEST is set")
    env_dir = tmp_path / "venv"
    install = subprocess.run(["make", "-C", str(PACKAGE.parents[1]), "install", f"VENV={env_dir}",
                              f"PYTHON={sys.executable}"], capture_output=True, text=True, timeout=900,
                             env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
    assert install.returncode == 0, install.stderr[-3000:]
    python = env_dir / "bin" / "python"
    size = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file() and not f.is_symlink())
    assert size <= 350e6, f"serving venv is {size / 1e6:.0f} MB"
    check = subprocess.run(
        [str(python), "-c", "import importlib.util as u, json; import moodlens.web; "
         f"print(json.dumps([m for m in {HEAVY!r} if u.find_spec(m)]))"],
        capture_output=True, text=True, check=True)
    assert json.loads(check.stdout) == []
    # a command that needs an extra says which one
    cli = subprocess.run([str(env_dir / "bin" / "moodlens"), "evaluate", "--help"], capture_output=True, text=True)
    assert cli.returncode != 0 and "pip install 'moodlens[eval]'" in cli.stderr
