"""Spark in local[2]: spark-batch equals `moodlens batch` (disk and S3, fsspec and binaryFile reads),
spark-prepare writes shards that load_shards reads, and spark-submit runs the module unchanged."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import click
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from moodlens.cli import main
from moodlens.jobs.shards import in_validation, load_shards, read_shards, split_photos
from moodlens.training.labels import FOUR

# s3_server is a pytest plugin (session fixtures, assertion rewriting): its helpers are imported inside the
# tests, after pytest has loaded it, not at the top.
pytest_plugins = ["s3_server"]
pytest.importorskip("pyspark")
if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java (openjdk-17-jre-headless)", allow_module_level=True)

# pyspark 4.3 warns that it does not fully support pandas 3; mapInPandas with Arrow is what these tests check.
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")]


@pytest.fixture(scope="module")
def spark(request):
    """A local[2] session. Python workers inherit the environment at start-up, so the S3 credentials are set
    before it starts (when the Ceph server can run)."""
    from moodlens.jobs.spark import spark_session
    from s3_server import ceph_available

    saved = dict(os.environ)
    if ceph_available():
        os.environ.update(request.getfixturevalue("s3_server").env())
    session = spark_session("local[2]", "moodlens-tests", {"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()
    os.environ.clear()
    os.environ.update(saved)


def _read(path):
    return ds.dataset(str(path), format="parquet").to_table()


def test_spark_batch_equals_batch_on_disk(spark, photo_set, photo_set_batch, tmp_path):
    from moodlens.jobs.spark import run_spark_batch
    from s3_server import assert_same_rows

    s = run_spark_batch(spark, str(photo_set), str(tmp_path / "out"), partitions=6)
    assert (s.images, s.errors) == (243, 3) and s.task_seconds > 0
    out = _read(tmp_path / "out")
    assert out.schema.remove_metadata() == photo_set_batch.schema.remove_metadata()
    assert_same_rows(out, photo_set_batch)
    # issue 12 item 5: each part file names moodlens and the model, as batch's Parquet does
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == 6
    assert {_moodlens_metadata(pq.read_schema(p)) for p in parts} == {_moodlens_metadata(photo_set_batch.schema)}
    assert dict(_moodlens_metadata(photo_set_batch.schema))[b"classes"] == b"angry,happy,neutral,sad"


def _moodlens_metadata(schema) -> tuple:
    return tuple((k, v) for k, v in sorted((schema.metadata or {}).items()) if not k.startswith(b"ARROW"))


def test_spark_batch_binaryfile_reader_and_cli(spark, photo_set, photo_set_batch, tmp_path):
    from s3_server import assert_same_rows

    result = CliRunner().invoke(main, ["spark-batch", str(photo_set), str(tmp_path / "out"),
                                       "--read-with", "binaryFile", "--partitions", "3", "--limit", "120"])
    assert result.exit_code == 1, result.output  # two broken images, as `moodlens batch` says
    assert "120 images" in result.output and "2 errors" in result.output and "ms per image in tasks" in result.output
    assert spark.sparkContext._jsc is not None, "the command must not stop a session it did not start"
    # Spark's file scan skips zero-byte files: the empty image gets no row with binaryFile (it does with fsspec)
    first = set(sorted({r["path"] for r in photo_set_batch.to_pylist()} - {str(photo_set / "broken/empty.png")})[:120])
    expected = photo_set_batch.filter(np.array([p in first for p in photo_set_batch.column("path").to_pylist()]))
    assert_same_rows(_read(tmp_path / "out"), expected)


def test_spark_batch_s3_to_s3(spark, photo_set, photo_set_batch, s3_env):
    from moodlens.jobs.spark import run_spark_batch
    from s3_server import assert_same_rows, upload_tree

    bucket = s3_env.new_bucket()
    src = upload_tree(s3_env, photo_set, bucket, "photos")
    s = run_spark_batch(spark, src, f"s3://{bucket}/out", partitions=5)
    assert s.images == 243
    fs = s3_env.filesystem()
    names = sorted(k.rsplit("/", 1)[-1] for k in fs.ls(f"{bucket}/out"))
    assert names == ["_SUCCESS"] + [f"part-{i:05d}.parquet" for i in range(5)]  # one part per partition
    out = ds.dataset(f"{bucket}/out", format="parquet", filesystem=fs, exclude_invalid_files=True).to_table()
    assert_same_rows(out, photo_set_batch, strip_a=src + "/", strip_b=str(photo_set) + "/")


def _kill_when(args: list[str], ready, settle: float) -> None:
    """Run `python -m moodlens ARGS` in its own session (driver, JVM, Python workers) and SIGKILL all of it
    `settle` seconds after `ready()` is true."""
    proc = subprocess.Popen([sys.executable, "-m", "moodlens", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        time.sleep(settle)
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


@pytest.mark.parametrize("write_with", ["spark", "fsspec"])
def test_killed_rerun_keeps_the_previous_output(spark, photo_set, tmp_path, write_with):
    """Issue 13 item 6: a rerun deleted DEST first, so killing it left a folder that read as 0 rows, no error.
    Now it writes DEST.incomplete and swaps it in at the end."""
    from s3_server import assert_same_rows

    dest, staging = tmp_path / "out", tmp_path / "out.incomplete"
    args = ["spark-batch", str(photo_set / "people"), str(dest), "--write-with", write_with]
    result = CliRunner().invoke(main, [*args, "--limit", "12", "--partitions", "4"])
    assert result.exit_code == 0, result.output  # no image failed
    before = _read(dest)
    assert before.num_rows >= 12
    # all 216 photos on one core, killed while its tasks run (the old code had deleted DEST by then); small
    # partitions, as fsspec's DEST.incomplete appears with the first finished one
    rerun_started = lambda: staging.exists() or not (dest / "_SUCCESS").exists()  # noqa: E731
    _kill_when([*args, "--master", "local[1]", "--partitions", "24"], rerun_started,
               settle=1.0 if write_with == "spark" else 0.2)
    assert (dest / "_SUCCESS").exists()
    assert_same_rows(_read(dest), before)

    result = CliRunner().invoke(main, [*args, "--limit", "12", "--partitions", "4"])
    assert result.exit_code == 0, result.output
    assert_same_rows(_read(dest), before)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or previous output left


def test_staging_path_is_a_sibling_and_never_another_bucket(tmp_path):
    from moodlens.jobs.spark import staging_path

    assert staging_path("s3://bucket/out/") == "s3://bucket/out.incomplete"
    assert staging_path(str(tmp_path / "out")) == str(tmp_path / "out.incomplete")
    for root in ("s3://bucket", "s3://bucket/", "hdfs://namenode:8020/", "/"):
        with pytest.raises(click.BadParameter, match="root"):
            staging_path(root)


def _labelled_tree(root, photo_set):
    """SRC/<label>/...: astronaut photos as happy and sad, objects as neutral (no face), one broken file."""
    for i, p in enumerate(sorted(p for p in (photo_set / "people").rglob("*") if p.is_file())[:24]):
        dest = root / ("happy" if i % 2 else "sad") / f"{i % 3}" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (root / "neutral").mkdir()
    for p in sorted((photo_set / "objects").iterdir())[:4]:
        shutil.copy(p, root / "neutral" / p.name)
    shutil.copy(photo_set / "broken" / "truncated.jpg", root / "happy" / "truncated.jpg")
    (root / "loose.jpg").write_bytes((photo_set / "objects" / "object-000.jpg").read_bytes())  # no label: skipped


def test_spark_prepare_shards_load_for_training(spark, photo_set, tmp_path):
    from moodlens.jobs.spark import run_spark_prepare
    from moodlens.training.data import load_image_folder

    src = tmp_path / "labelled"
    _labelled_tree(src, photo_set)
    s = run_spark_prepare(spark, str(src), str(tmp_path / "shards"), partitions=3)
    assert s.images == 29  # 24 photos + 4 objects + 1 broken; loose.jpg has no label folder
    table = read_shards(str(tmp_path / "shards"))
    assert table.num_rows == s.rows >= 20
    assert set(table.column("label").to_pylist()) <= {"happy", "sad"}
    assert {len(p) for p in table.column("pixels").to_pylist()} == {48 * 48}

    train, val = load_shards(str(tmp_path / "shards"), FOUR, seed=3, val_fraction=0.25)
    assert len(train) + len(val) == table.num_rows and len(val) > 0
    assert train.images.shape[1:] == (48, 48) and train.images.dtype == np.uint8
    assert np.allclose(train.target.sum(1), 1) and set(train.y) <= {FOUR.index("happy"), FOUR.index("sad")}
    paths = table.column("path").to_pylist()
    val_paths = {paths[i] for i in val.source_rows}
    assert val_paths and not val_paths & {paths[i] for i in train.source_rows}  # photos never straddle
    assert val_paths == split_photos(paths, 3, 0.25)
    assert {p for p in set(paths) if in_validation(p, 3, 0.25)} <= val_paths

    # the same crops as the app's own image-folder loader
    ref = load_image_folder(src, FOUR)
    assert sorted(x.tobytes() for x in ref.images) == sorted(table.column("pixels").to_pylist())


def test_spark_prepare_s3_and_load_shards_from_s3(spark, photo_set, s3_env, tmp_path):
    from moodlens.jobs.spark import run_spark_prepare
    from s3_server import upload_tree

    _labelled_tree(tmp_path / "labelled", photo_set)
    bucket = s3_env.new_bucket()
    src = upload_tree(s3_env, tmp_path / "labelled", bucket, "raw")
    run_spark_prepare(spark, src, f"s3://{bucket}/shards", partitions=2)
    local = run_spark_prepare(spark, str(tmp_path / "labelled"), str(tmp_path / "shards"), partitions=2)
    train, val = load_shards(f"s3://{bucket}/shards", FOUR, seed=1)
    assert len(train) + len(val) == local.rows


def test_spark_submit_runs_the_module(photo_set, tmp_path):
    spark_submit = shutil.which("spark-submit", path=os.path.dirname(sys.executable))
    if spark_submit is None:
        pytest.skip("spark-submit not on the venv's PATH")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    module = os.path.join(os.path.dirname(__file__), "..", "src", "moodlens", "cli", "jobs.py")
    proc = subprocess.run([spark_submit, "--master", "local[1]", "--conf", "spark.ui.enabled=false", module,
                           "batch", str(photo_set / "broken"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]  # every image failed
    # spark-submit merges the Python driver's stderr into its stdout
    assert "3 images, 0 faces, 3 errors" in proc.stdout
    assert _read(tmp_path / "out").num_rows == 3


def test_load_shards_guards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moodlens.jobs.shards import shard_schema

    def write(name, rows):
        (tmp_path / "s").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema()), tmp_path / "s" / name)

    face = bytes(range(48)) * 48
    write("part-0.parquet", [{"path": f"p{i}.jpg", "face_index": 0, "label": "happy", "pixels": face, "width": 48,
                              "height": 48} for i in range(3)])
    write("part-1.parquet", [{"path": "q.jpg", "face_index": j, "label": "surprise", "pixels": face, "width": 48,
                              "height": 48} for j in range(2)])
    (tmp_path / "s" / "_SUCCESS").write_bytes(b"")
    train, val = load_shards(str(tmp_path / "s"), FOUR, seed=0, val_fraction=0.01)
    assert len(train) == 2 and len(val) == 1  # neither side empty, even at 1%; "surprise" is not in FOUR
    assert train.images[0].tobytes() == face
    with pytest.raises(ValueError, match="no faces labelled"):
        load_shards(str(tmp_path / "s" / "part-1.parquet"), FOUR)
    write("part-2.parquet", [{"path": "r.jpg", "face_index": 0, "label": "sad", "pixels": b"x", "width": 48,
                              "height": 48}])
    with pytest.raises(ValueError, match="2304 pixel bytes"):
        load_shards(str(tmp_path / "s"), FOUR)
    with pytest.raises(FileNotFoundError, match="spark-prepare"):
        load_shards(str(tmp_path / "nothing"), FOUR)
