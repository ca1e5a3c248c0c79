"""`moodlens spark-batch` and `moodlens spark-prepare`: the batch pipeline on Apache Spark.

The driver lists the images (local folder, S3 prefix or .txt list, as `moodlens batch`), makes a DataFrame of
paths in `--partitions` partitions and runs the analyzer inside `mapInPandas`; each Python worker loads the
models once (module-level cache) and fetches the bytes itself through fsspec, since pyspark's bundled Hadoop
has no S3 connector. On a cluster with hadoop-aws, `--read-with binaryFile` lets Spark read the files instead.

Output is Parquet with the same schema and file metadata as `moodlens batch` (a folder of part files). Local
and `s3://` destinations are written by the tasks through fsspec (one atomic write per partition); hdfs://,
s3a:// and other Hadoop URLs by Spark's own writer (whose files lack moodlens' key-value metadata: Spark's
Parquet writer has no way to add any). Either way the run writes DEST.incomplete/<application id>/ and
replaces DEST with it only once it is complete, so a killed or failed rerun leaves the previous output as it
was, and tasks of a killed run that are still finishing write into their own run's folder, never the new one.

Also runnable without the moodlens CLI:  spark-submit src/moodlens/cli/jobs.py batch|prepare SRC DEST [OPTIONS]
(then --master defaults to spark-submit's own).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import click

from moodlens.engine.decode import IMAGE_SUFFIXES
from moodlens.jobs import batch, storage

# pyspark 4.3 warns on pandas >= 3; the features used here (mapInPandas with Arrow) are tested with it.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

READ_WITH = ("fsspec", "binaryFile")
WRITE_WITH = ("auto", "spark", "fsspec")
DEFAULT_LOCAL_MASTER = "local[2]"

# One analyzer per Python worker process, reused by every task the worker runs (spark.python.worker.reuse).
_ANALYZERS: dict[tuple[str, str | None], object] = {}


def cached_analyzer(classes: str, model_path: str | None):
    """This process's analyzer for (classes, model), loaded on first use."""
    key = (str(classes), model_path)
    if key not in _ANALYZERS:
        import cv2

        cv2.setNumThreads(1)  # Spark runs one task per core already
        _ANALYZERS[key] = batch.make_analyzer(classes, model_path)
    return _ANALYZERS[key]


# ------------------------------------------------------------------------------------------------- session


def spark_session(master: str | None = None, app_name: str = "moodlens", conf: dict[str, str] | None = None):
    """A SparkSession: `master` or spark-submit's, else local[2]; local runs bind to 127.0.0.1, no UI."""
    from pyspark.sql import SparkSession

    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # set when spark-submit launched this driver
    master = master or (None if under_submit else DEFAULT_LOCAL_MASTER)
    builder = SparkSession.builder.appName(app_name)
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # images are small files: a low open cost spreads them evenly over tasks (binaryFile reads)
        "spark.sql.files.openCostInBytes": "8192",
    }
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers use this venv
        settings["spark.ui.enabled"] = "false"
        settings["spark.driver.host"] = "127.0.0.1"
    python = (conf or {}).get("spark.pyspark.python")
    if python and not under_submit:
        # spark-submit turns this setting into PYSPARK_PYTHON; a driver started here reads only the variable,
        # and tells the executors to run that interpreter
        os.environ["PYSPARK_PYTHON"] = python
    for k, v in {**settings, **(conf or {})}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def parse_conf(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--conf")
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------- task functions


@dataclass(frozen=True)
class _Counters:
    """Spark accumulators the tasks add to, for the summary line. The job is one result stage, so Spark merges
    the updates of each task's successful attempt only: a task retried after its executor died counts once
    (243 images with a lost and rerun task in tests/test_spark_cluster.py)."""

    images: object
    rows: object
    faces: object
    errors: object
    seconds: object

    @classmethod
    def create(cls, sc) -> _Counters:
        return cls(sc.accumulator(0), sc.accumulator(0), sc.accumulator(0), sc.accumulator(0), sc.accumulator(0.0))


def _to_pandas(table):
    """Arrow -> pandas for Spark, keeping nullable ints as ints (not NaN floats)."""
    import pandas as pd
    import pyarrow as pa

    return table.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}.get)


def _part_name() -> str:
    from pyspark import TaskContext

    return f"part-{TaskContext.get().partitionId():05d}.parquet"


def _map_batches(batches: Iterator, *, rows_for: Callable, schema, counters: _Counters,
                 write_to: str | None, endpoint: str | None, metadata: dict[str, str] | None = None) -> Iterator:
    """mapInPandas body: rows for each (path[, label][, content]) batch, yielded or written as one part."""
    import pandas as pd
    import pyarrow as pa

    tables = []
    for pdf in batches:
        t0 = time.perf_counter()
        rows: list[dict] = []
        contents = pdf["content"] if "content" in pdf.columns else None
        labels = pdf["label"] if "label" in pdf.columns else None
        for i, path in enumerate(pdf["path"]):
            data = None if contents is None else bytes(contents.iloc[i])
            rows += rows_for(path, data, None if labels is None else labels.iloc[i])
        table = pa.Table.from_pylist(rows, schema=schema)
        counters.seconds.add(time.perf_counter() - t0)
        counters.images.add(len(pdf))
        counters.rows.add(len(rows))
        counters.faces.add(sum(r.get("face_index") is not None for r in rows))
        counters.errors.add(sum(r.get("error") is not None for r in rows))
        if write_to is None:
            yield _to_pandas(table)
        else:
            tables.append(table)
    if write_to is not None:
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if metadata:
            table = table.replace_schema_metadata(metadata)
        if table.num_rows:
            # one object per partition, named by partition id: a retried task overwrites its own part
            storage.write_bytes(storage.join(write_to, _part_name()), batch.table_bytes(table, "parquet"), endpoint)
        yield pd.DataFrame({"rows": [table.num_rows]})


def _analysis_rows(path: str, data: bytes | None, label, *, classes: str, model_path: str | None,
                   endpoint: str | None, expected: tuple[str, ...]) -> list[dict]:
    analyzer = cached_analyzer(classes, model_path)
    if tuple(analyzer.classes) != expected:
        raise RuntimeError(f"worker model classes {analyzer.classes} differ from the driver's {expected}")
    return batch.analyze_one(analyzer, path, data, endpoint)


def _prepare_rows(path: str, data: bytes | None, label, *, endpoint: str | None) -> list[dict]:
    from moodlens.jobs.shards import face_crop_rows

    return face_crop_rows(path, label, data, endpoint)


# ------------------------------------------------------------------------------------------------- driver


@dataclass
class SparkSummary:
    """What a Spark run did; `task_seconds` is the time spent inside the tasks' analysis loops."""

    images: int
    rows: int
    faces: int
    errors: int
    seconds: float
    task_seconds: float
    dest: str

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _writer_for(dest: str, write_with: str) -> str:
    # pyspark's Hadoop has no s3:// filesystem (and s3a:// only with hadoop-aws): s3:// goes through fsspec;
    # so do local paths, whose part files then carry moodlens' metadata (Spark's Parquet writer cannot add it)
    if write_with != "auto":
        return write_with
    return "fsspec" if dest.startswith("s3://") or not storage.is_url(dest) else "spark"


def _hadoop_path(url: str) -> str:
    return url if storage.is_url(url) else storage.local_path(url)


def _paths_frame(spark, src: str, read_with: str, partitions: int, limit: int | None, endpoint: str | None,
                 labelled: bool = False):
    """DataFrame (path[, label][, content]) of the inputs, in `partitions` partitions."""
    from pyspark.sql import functions as F

    if read_with == "binaryFile":
        if src.lower().endswith(".txt"):
            raise click.BadParameter("--read-with binaryFile reads folders/prefixes, not .txt lists")
        # Hadoop globs are case-sensitive: both spellings of each suffix
        suffixes = sorted({s.lstrip(".") for s in IMAGE_SUFFIXES} | {s.lstrip(".").upper() for s in IMAGE_SUFFIXES})
        root = _hadoop_path(src).rstrip("/")
        reader = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
                  .option("pathGlobFilter", "*.{" + ",".join(suffixes) + "}"))
        df = reader.load(root)
        if limit:
            keep = [r.path for r in df.select("path").orderBy("path").limit(limit).collect()]
            df = reader.load(keep) if keep else df.limit(0)
        # Hadoop names local files file:/abs/path; `moodlens batch` writes /abs/path
        df = df.select(F.regexp_replace("path", "^file:", "").alias("path"), "content")
        if labelled:  # SRC/<label>/...: the first folder under the root names the label
            rel = F.substring(F.col("path"), len(root) + 2, 1 << 20)
            df = (df.withColumn("label", F.lower(F.split(rel, "/").getItem(0)))
                  .where(rel.contains("/")).select("path", "label", "content"))
        return df.repartition(partitions)
    if labelled:
        keys = [k for k in storage.list_keys(src, IMAGE_SUFFIXES, endpoint) if "/" in k]
        keys = keys[:limit] if limit else keys
        data = [(storage.join(src, k), k.split("/", 1)[0].lower()) for k in keys]
        schema = "path string, label string"
    else:
        data = [(p,) for p in batch.list_inputs(src, endpoint, limit)]
        schema = "path string"
    n = max(1, min(partitions, len(data)))
    # parallelize slices the sorted list into contiguous ranges: deterministic partitions, no shuffle
    return spark.createDataFrame(spark.sparkContext.parallelize(data, n), schema)


def staging_path(dest: str) -> str:
    """Where a run writes before its output replaces DEST: the sibling DEST.incomplete. Not inside DEST, which
    keeps the previous output whole until the new one is complete."""
    if storage.is_url(dest) and "/" not in dest.rstrip("/").split("://", 1)[1]:
        raise click.BadParameter(f"{dest}: a bucket or file-system root; write to a folder under it",
                                 param_hint="DEST")
    root = dest.rstrip("/") if storage.is_url(dest) else storage.local_path(dest)
    if root in ("", os.sep):
        raise click.BadParameter(f"{dest}: the root folder; write to a folder under it", param_hint="DEST")
    return root + ".incomplete"


def _swap_in(spark, staging: str, run_dir: str, dest: str) -> None:
    """Move Spark's finished output `run_dir` (inside `staging`) to `dest` through Hadoop's FileSystem (local,
    hdfs://, s3a://): dest -> dest.previous, run_dir -> dest, then the previous output and `staging` are
    deleted. The renames are atomic on a local disk and HDFS; on s3a they are copies."""
    jvm, conf = spark._jvm, spark._jsc.hadoopConfiguration()
    target, new = jvm.org.apache.hadoop.fs.Path(dest), jvm.org.apache.hadoop.fs.Path(run_dir)
    previous = jvm.org.apache.hadoop.fs.Path(dest.rstrip("/") + ".previous")
    fs = target.getFileSystem(conf)
    fs.delete(previous, True)  # left by a run killed between the two renames
    if fs.exists(target) and not fs.rename(target, previous):
        raise OSError(f"could not move the previous output {dest} aside")
    if not fs.rename(new, target):
        raise OSError(f"could not move {run_dir} to {dest}")
    fs.delete(previous, True)
    fs.delete(jvm.org.apache.hadoop.fs.Path(staging), True)


def _run(spark, df, rows_for: Callable, arrow_schema, dest: str, write_with: str, endpoint: str | None,
         metadata: dict[str, str] | None = None) -> SparkSummary:
    from pyspark.sql.pandas.types import from_arrow_schema

    t0 = time.perf_counter()
    counters = _Counters.create(spark.sparkContext)
    writer = _writer_for(dest, write_with)
    staging = staging_path(dest)
    # A killed or failed run leaves DEST as it was: the output is written beside it and swapped in at the end.
    # Each run writes in its own folder: executors of a killed driver can still be finishing tasks (until
    # the cluster manager stops them), and their parts must not land among this run's.
    run_dir = storage.join(staging, spark.sparkContext.applicationId)
    body = functools.partial(_map_batches, rows_for=rows_for, schema=arrow_schema, counters=counters,
                             write_to=run_dir if writer == "fsspec" else None, endpoint=endpoint,
                             metadata=metadata)
    if writer == "fsspec":
        storage.remove_tree(staging, endpoint)  # killed runs' partial output
        df.mapInPandas(body, "rows long").collect()
        storage.write_bytes(storage.join(run_dir, "_SUCCESS"), b"", endpoint)
        storage.replace_tree(run_dir, dest, endpoint)
        storage.remove_tree(staging, endpoint)
    else:
        out = df.mapInPandas(body, from_arrow_schema(arrow_schema))
        out.write.mode("overwrite").parquet(_hadoop_path(run_dir))
        _swap_in(spark, _hadoop_path(staging), _hadoop_path(run_dir), _hadoop_path(dest))
    return SparkSummary(images=counters.images.value, rows=counters.rows.value, faces=counters.faces.value,
                        errors=counters.errors.value, seconds=time.perf_counter() - t0,
                        task_seconds=counters.seconds.value, dest=dest)


def default_partitions(spark) -> int:
    """Four partitions per core: small enough tasks to balance, few enough to keep per-task overhead low."""
    return 4 * spark.sparkContext.defaultParallelism


def run_spark_batch(spark, src: str, dest: str, classes: str = "4", model_path: str | None = None,
                    partitions: int | None = None, read_with: str = "fsspec", write_with: str = "auto",
                    limit: int | None = None, endpoint: str | None = None) -> SparkSummary:
    """`moodlens batch`, on Spark: Parquet at DEST with the same schema and rows."""
    endpoint = storage.resolve_endpoint(endpoint)
    classes_out, metadata = batch.describe_model(classes, model_path)
    df = _paths_frame(spark, src, read_with, partitions or default_partitions(spark), limit, endpoint)
    rows_for = functools.partial(_analysis_rows, classes=classes, model_path=model_path, endpoint=endpoint,
                                 expected=classes_out)
    return _run(spark, df, rows_for, batch.output_schema(classes_out), dest, write_with, endpoint, metadata)


def run_spark_prepare(spark, src: str, dest: str, partitions: int | None = None, read_with: str = "fsspec",
                      write_with: str = "auto", limit: int | None = None, endpoint: str | None = None,
                      ) -> SparkSummary:
    """Labelled photos SRC/<label>/* -> aligned 48x48 face crops in Parquet shards under DEST."""
    from moodlens.jobs.shards import shard_schema

    endpoint = storage.resolve_endpoint(endpoint)
    df = _paths_frame(spark, src, read_with, partitions or default_partitions(spark), limit, endpoint,
                      labelled=True)
    rows_for = functools.partial(_prepare_rows, endpoint=endpoint)
    return _run(spark, df, rows_for, shard_schema(), dest, write_with, endpoint)


# ------------------------------------------------------------------------------------------------ commands
