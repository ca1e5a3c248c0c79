"""`moodlens batch`, `spark-batch` and `spark-prepare`: the command-line face of moodlens.jobs.

Also runnable without the moodlens CLI:  spark-submit src/moodlens/cli/jobs.py batch|prepare SRC DEST [OPTIONS]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from moodlens.cli import MODEL_HELP
from moodlens.engine.errors import MoodlensError
from moodlens.engine.safeio import printable
from moodlens.jobs import storage
from moodlens.jobs.batch import DEFAULT_CHUNK_SIZE, FORMATS, parts_dir, run_batch
from moodlens.jobs.spark import (
    DEFAULT_LOCAL_MASTER,
    READ_WITH,
    WRITE_WITH,
    SparkSummary,
    parse_conf,
    run_spark_batch,
    run_spark_prepare,
    spark_session,
)


def s3_endpoint_option(f):
    """`--s3-endpoint URL`, shared by the batch commands."""
    return click.option("--s3-endpoint", envvar=storage.S3_ENDPOINT_ENV, default=None, metavar="URL",
                        help=f"S3-compatible endpoint (Ceph RGW, MinIO, ...); env {storage.S3_ENDPOINT_ENV}.")(f)


@click.command("batch")
@click.argument("src")
@click.argument("dest")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format (default: from DEST's extension, else parquet).")
@click.option("--workers", type=click.IntRange(1), default=None, help="Worker processes (default: all cores).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images of the sorted list.")
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True)
@click.option("--model", "model_path", default=None, help=MODEL_HELP)
@click.option("--chunk-size", type=click.IntRange(1), default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Images per resumable part.")
@click.option("--keep-parts", is_flag=True, help="Keep DEST.parts/ after merging.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-q", "--quiet", is_flag=True,
              help="Nothing on stderr but errors: no progress bar, summary, notes or native libraries' notices.")
@s3_endpoint_option
@click.pass_context
def batch_command(ctx, src, dest, fmt, workers, limit, classes, model_path, chunk_size, keep_parts, no_progress,
                  quiet, s3_endpoint) -> None:
    """Analyze every image under SRC into one table at DEST, one row per face.

    SRC: a folder, an S3 prefix (s3://bucket/photos/) or a .txt file of paths/URLs (relative entries are
    taken from the list's folder). DEST: a local path or S3 URL; .parquet (default), .csv or .jsonl.
    Interrupted runs resume from DEST.parts/ when rerun with the same arguments. The exit status is 1 when
    any image failed (its row carries the error), as for `moodlens analyze`.
    """
    refuse_linked_outputs(dest)
    try:
        s = run_batch(src, dest, fmt=fmt, workers=workers, limit=limit, classes=classes, model_path=model_path,
                      endpoint=s3_endpoint, chunk_size=chunk_size, keep_parts=keep_parts, progress=not no_progress,
                      quiet=quiet)
    except MoodlensError as exc:  # storage errors, a broken model
        raise click.ClickException(printable(str(exc), lines=True)) from exc
    except OSError as exc:  # per-image errors are rows already: this is the listing or the output failing
        raise click.ClickException(printable(f"{type(exc).__name__}: {exc}", lines=True)) from exc
    if not quiet:
        click.echo(f"{s.images} images, {s.faces} faces, {s.errors} errors -> {printable(s.dest)} "
                   f"({s.seconds:.1f} s, {s.images_per_second:.1f} images/s)", err=True)
    ctx.exit(1 if s.errors else 0)


def refuse_linked_outputs(dest: str) -> None:
    """Refuse a local DEST or DEST.parts that is a symlink before any work: the run would write through it
    (DEST.parts) or fail at the very end (DEST; `safeio.write_atomic` refuses it)."""
    if storage.is_url(dest):
        return
    for path in (storage.local_path(dest), storage.local_path(parts_dir(dest))):
        if os.path.islink(path):
            raise click.UsageError(f"{printable(path)} is a symlink; refusing to write through it")


def _spark_options(f):
    options = [
        click.option("--master", default=None,
                     help=f"Spark master: {DEFAULT_LOCAL_MASTER} (default), local[*], yarn, k8s://..., "
                          "spark://...; under spark-submit its own."),
        click.option("--partitions", type=click.IntRange(1), default=None,
                     help="Partitions of the input list (default: 4 per core)."),
        click.option("--read-with", type=click.Choice(READ_WITH), default="fsspec", show_default=True,
                     help="fsspec: tasks fetch each file (works anywhere); binaryFile: Spark reads the files "
                          "(cluster with hadoop-aws: use s3a:// URLs)."),
        click.option("--write-with", type=click.Choice(WRITE_WITH), default="auto", show_default=True,
                     help="auto: fsspec for local and s3:// destinations (part files with moodlens' Parquet "
                          "metadata), Spark's writer for hdfs://, s3a:// and other Hadoop URLs."),
        click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images (sorted)."),
        click.option("--conf", "conf", multiple=True, metavar="KEY=VALUE", help="Extra Spark setting (repeatable)."),
        s3_endpoint_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _task_storage_error(message: str) -> str | None:
    """The message of a StorageError raised inside a Spark task, if that is what failed the job."""
    for line in reversed(message.splitlines()):
        for name in ("StorageUnavailableError: ", "UnsafePathError: ", "StorageError: "):
            if name in line:
                return line.split(name, 1)[1].strip()
    return None


def _with_session(master: str | None, conf: tuple[str, ...], app: str, run: Callable[[object], SparkSummary],
                  ) -> SparkSummary:
    from pyspark.sql import SparkSession

    had_session = SparkSession.getActiveSession() is not None
    spark = spark_session(master, app, parse_conf(conf))
    try:
        s = run(spark)
    except storage.StorageError as exc:
        raise click.ClickException(printable(str(exc), lines=True)) from exc
    except OSError as exc:  # listing or writing on the driver
        raise click.ClickException(printable(f"{type(exc).__name__}: {exc}", lines=True)) from exc
    except Exception as exc:
        # a task's StorageError reaches the driver as a Python traceback inside a Spark exception
        reason = _task_storage_error(str(exc))
        if reason is None:
            raise
        raise click.ClickException(printable(reason)) from exc
    finally:
        if not had_session:
            spark.stop()
    per_image = f", {1000 * s.task_seconds / s.images:.1f} ms per image in tasks" if s.images else ""
    click.echo(f"{s.images} images, {s.faces} faces, {s.errors} errors -> {s.dest} "
               f"({s.seconds:.1f} s, {s.images_per_second:.1f} images/s{per_image})", err=True)
    return s


@click.command("spark-batch")
@click.argument("src")
@click.argument("dest")
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True)
@click.option("--model", "model_path", default=None, help=MODEL_HELP)
@_spark_options
@click.pass_context
def spark_batch_command(ctx, src, dest, classes, model_path, master, partitions, read_with, write_with, limit, conf,
                        s3_endpoint) -> None:
    """`moodlens batch` on Apache Spark: images under SRC -> Parquet folder DEST, one row per face.

    SRC: a folder, S3 prefix or .txt list; DEST: a local folder, s3:// (written via fsspec), s3a:// or hdfs://.
    DEST is replaced only once the new output is complete (it is written to DEST.incomplete first). The exit
    status is 1 when any image failed (its row carries the error), as for `moodlens batch`.
    """
    s = _with_session(master, conf, "moodlens-batch", lambda spark: run_spark_batch(
        spark, src, dest, classes=classes, model_path=model_path, partitions=partitions, read_with=read_with,
        write_with=write_with, limit=limit, endpoint=s3_endpoint))
    ctx.exit(1 if s.errors else 0)


@click.command("spark-prepare")
@click.argument("src")
@click.argument("dest")
@_spark_options
def spark_prepare_command(src, dest, master, partitions, read_with, write_with, limit, conf, s3_endpoint) -> None:
    """Labelled photos SRC/<label>/*.jpg -> aligned 48x48 face crops as Parquet shards under DEST.

    Columns: path, face_index, label, pixels (2304 bytes, row-major grayscale), width, height. Train on them
    with `moodlens train --shards DEST`.
    """
    _with_session(master, conf, "moodlens-prepare", lambda spark: run_spark_prepare(
        spark, src, dest, partitions=partitions, read_with=read_with, write_with=write_with, limit=limit,
        endpoint=s3_endpoint))


@click.group()
def _submit_main() -> None:
    """spark-submit entry point: `batch` or `prepare`."""


if __name__ == "__main__":
    # Run the commands from the imported module, not __main__, so Spark pickles the task functions by
    # reference (workers import moodlens.jobs.spark and keep its model cache between tasks). The script's own
    # folder leaves sys.path so `spark`, `data`, ... are not importable as top-level modules.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    from moodlens.cli import jobs as _module

    _submit_main.add_command(_module.spark_batch_command, "batch")
    _submit_main.add_command(_module.spark_prepare_command, "prepare")
    _submit_main()
