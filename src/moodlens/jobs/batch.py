"""`moodlens batch SRC DEST`: analyze every image under a folder, S3 prefix or list file into one table.

One row per face (path, face_index, box, detector score, expression, uncertain, quality, p_<class> per class,
error); an image
with no face, or one that fails, still gets one row with face_index null. The sorted input list is cut into
chunks of `--chunk-size` images; each chunk's rows are written atomically to DEST.parts/part-<hash>.parquet,
the hash covering the chunk's paths and the settings. A rerun after a crash or kill skips finished parts,
then all parts are merged into DEST, so every image is there exactly once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from moodlens.engine.decode import IMAGE_SUFFIXES
from moodlens.engine.errors import ImageTooLargeError
from moodlens.engine.runtime import quiet_native_output
from moodlens.engine.safeio import csv_cell, left_out_note, printable
from moodlens.engine.video import VIDEO_SUFFIXES
from moodlens.jobs import storage
from moodlens.jobs.storage import StorageUnavailableError

DEFAULT_CHUNK_SIZE = 64
FORMATS = ("parquet", "csv", "jsonl")
_SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "jsonl"}
FACE_COLUMNS = ("box_x", "box_y", "box_w", "box_h", "score", "expression", "uncertain", "quality")


# ---------------------------------------------------------------------------------------------- rows / schema


def output_columns(classes: Sequence[str]) -> list[str]:
    """Column names, in order, for a model with `classes`."""
    return ["path", "face_index", *FACE_COLUMNS, *(f"p_{c}" for c in classes), "error"]


def output_schema(classes: Sequence[str]):
    """The pyarrow schema of `moodlens batch` and `moodlens spark-batch` output."""
    import pyarrow as pa

    return pa.schema(
        [("path", pa.string()), ("face_index", pa.int32())]
        + [(c, pa.float64()) for c in ("box_x", "box_y", "box_w", "box_h", "score")]
        + [("expression", pa.string()), ("uncertain", pa.bool_()), ("quality", pa.string())]
        + [(f"p_{c}", pa.float64()) for c in classes]
        + [("error", pa.string())]
    )


def _empty_row(path: str, classes: Sequence[str], error: str | None = None) -> dict:
    return {"path": path, "face_index": None, **dict.fromkeys(FACE_COLUMNS),
            **{f"p_{c}": None for c in classes}, "error": error}


def analyze_one(analyzer, path: str, data: bytes | None = None, endpoint: str | None = None) -> list[dict]:
    """Rows for one image. Any failure but an unreachable object store becomes an error row."""
    classes = tuple(analyzer.classes)
    try:
        if data is None:
            max_bytes = getattr(analyzer, "max_bytes", None)
            data = storage.read_bytes(path, endpoint, max_bytes=max_bytes)  # never more than the limit + 1
            if max_bytes is not None and len(data) > max_bytes:
                raise ImageTooLargeError(f"the file is over the limit of {max_bytes:,} bytes")
        result = analyzer.analyze(data)
    except StorageUnavailableError:
        raise  # the store is down: stop the run instead of writing an error row per image
    except Exception as exc:  # a bad image must never stop the run
        return [_empty_row(path, classes, f"{type(exc).__name__}: {exc}")]
    if not result.faces:
        return [_empty_row(path, classes)]
    return [
        {"path": path, "face_index": i, "box_x": float(f.box.x), "box_y": float(f.box.y),
         "box_w": float(f.box.w), "box_h": float(f.box.h), "score": float(f.score), "expression": f.expression,
         "uncertain": bool(f.uncertain), "quality": f.quality,
         **{f"p_{c}": float(f.scores[c]) if c in f.scores else None for c in classes}, "error": None}
        for i, f in enumerate(result.faces)
    ]


def analyze_many(analyzer, paths: Iterable[str], endpoint: str | None = None) -> list[dict]:
    """Rows for many images, in order."""
    return [row for p in paths for row in analyze_one(analyzer, p, endpoint=endpoint)]


def rows_to_table(rows: list[dict], classes: Sequence[str]):
    """Rows as a pyarrow Table with the output schema (explicit, so all-null columns keep their type)."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=output_schema(classes))


def describe_model(classes: str = "4", model_path: str | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(class names in output order, Parquet key-value metadata naming moodlens and the model) of the expression
    model an analyzer with these settings loads; loading it here makes a broken model fail once, up front."""
    from moodlens import __version__
    from moodlens.engine.classify import ExpressionClassifier

    clf = ExpressionClassifier(model_path, classes=classes)
    return tuple(clf.classes), {"moodlens_version": __version__,
                                "model": str(clf.card.get("name") or Path(clf.path).name),
                                "classes": ",".join(clf.classes)}


def model_classes(classes: str = "4", model_path: str | None = None) -> tuple[str, ...]:
    """Class names, in output order, of the expression model an analyzer with these settings loads."""
    return describe_model(classes, model_path)[0]


def make_analyzer(classes: str = "4", model_path: str | None = None):
    """The analyzer a worker uses (models load once here)."""
    from moodlens import Analyzer

    return Analyzer(classes=classes, model_path=model_path)


# ------------------------------------------------------------------------------------------------- inputs


def list_inputs(src: str, endpoint: str | None = None, limit: int | None = None) -> list[str]:
    """Images to analyze, sorted: under a folder/prefix, or the entries of a .txt list (in list order)."""
    if src.lower().endswith(".txt"):
        paths = storage.read_path_list(src, endpoint)
    else:
        if not storage.is_url(src) and not os.path.isdir(storage.local_path(src)):
            raise click.BadParameter(f"{src}: not a folder, S3 prefix or .txt list", param_hint="SRC")
        paths = storage.list_images(src, endpoint)
    return paths[:limit] if limit else paths


def not_images(src: str, endpoint: str | None = None) -> list[str]:
    """Keys under the folder/prefix `src` that list_inputs leaves out for their extension (to name them)."""
    return [k for k in storage.list_keys(src, None, endpoint)
            if os.path.splitext(k)[1].lower() not in IMAGE_SUFFIXES]


def chunk_paths(paths: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive chunks of `size` paths (the listing is sorted, so chunks are the same on a rerun)."""
    return [list(paths[i:i + size]) for i in range(0, len(paths), size)]


def chunk_name(paths: Sequence[str], settings: dict) -> str:
    """`part-<hash>.parquet`: the hash covers the chunk's paths and everything that changes its rows."""
    from moodlens import __version__

    h = hashlib.sha256(json.dumps({"v": __version__, **settings}, sort_keys=True).encode())
    for p in paths:
        h.update(p.encode() + b"\n")
    return f"part-{h.hexdigest()[:20]}.parquet"


def parts_dir(dest: str) -> str:
    """Where the resumable parts of a run writing `dest` live."""
    return dest.rstrip("/") + ".parts"


# ------------------------------------------------------------------------------------------------- outputs


def infer_format(dest: str, fmt: str | None) -> str:
    """The output format: explicit, else from DEST's extension (no extension: Parquet). An image's or another
    unknown extension is refused rather than written over; with an explicit format, so is a table or media
    extension that says another format (`--format csv out.parquet`, `--format csv photo.jpg`)."""
    ext = os.path.splitext(dest.rstrip("/"))[1].lower()
    if fmt:
        if _SUFFIX_FORMAT.get(ext, fmt) != fmt or ext in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            raise click.BadParameter(f"{printable(dest)}: a {ext} name for {fmt} output; name it .{fmt}",
                                     param_hint="DEST")
        return fmt
    if ext and ext not in _SUFFIX_FORMAT:
        raise click.BadParameter(f"{printable(dest)}: unknown output extension {printable(ext)!r}; use .parquet, "
                                 ".csv or .jsonl", param_hint="DEST")
    return _SUFFIX_FORMAT.get(ext, "parquet")


def csv_safe(table):
    """`table` with every text cell and column name through `safeio.csv_cell` (paths, errors and model-card
    class names can carry formulas and terminal escapes); for CSV output only, the data formats keep the text."""
    import pyarrow as pa

    columns = [pa.array([csv_cell(v) for v in col.to_pylist()], pa.string()) if pa.types.is_string(col.type)
               else col for col in table.columns]
    return pa.table(columns, names=[csv_cell(n) for n in table.column_names])


def table_bytes(table, fmt: str) -> bytes:
    """A table serialized as Parquet (zstd), CSV (header, empty for null) or JSON lines."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, buf, compression="zstd")
    elif fmt == "csv":
        pacsv.write_csv(csv_safe(table), buf)
    elif fmt == "jsonl":
        for row in table.to_pylist():
            buf.write(json.dumps(row).encode() + b"\n")
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    return buf.getvalue()


def read_parquet(url: str, endpoint: str | None = None):
    """A Parquet file (local or object) as a pyarrow Table."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(url, endpoint)))


# ------------------------------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(classes: str, model_path: str | None, endpoint: str | None, quiet: bool = False) -> None:
    """Process-pool initializer: one analyzer per worker process, one OpenCV thread (the pool is the parallelism)."""
    import cv2

    cv2.setNumThreads(1)
    with quiet_native_output(quiet):
        _WORKER.update(analyzer=make_analyzer(classes, model_path), endpoint=endpoint)


def _init_pool_worker(parent_pid: int, *args) -> None:
    """Pool initializer: tie this process's life to the batch parent's, then `_init_worker(*args)`."""
    _die_with_parent(parent_pid)
    _init_worker(*args)


def _die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` (its parent) ends, however it ends.

    Without this a `kill -9` of the parent leaves the workers running for ever: they wait on a call queue
    whose pipe they hold both ends of, so they never see EOF, and they keep multiprocessing's resource tracker
    alive too (it exits once the last holder of its pipe has gone).
    """
    if sys.platform.startswith("linux"):
        _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed: nothing would send it
        os._exit(1)
    _start_parent_watchdog(parent_pid)


def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL this process when its parent exits (prctl PR_SET_PDEATHSIG).

    The kernel sends it when the parent *thread* that started the process exits: ProcessPoolExecutor starts
    workers from the thread that calls `submit`, run_batch's thread, which outlives the pool.
    """
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    try:
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc or no prctl symbol in it: the watchdog still ends the worker
        pass


def _start_parent_watchdog(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """A daemon thread that exits the process once it is no longer `parent_pid`'s child: the portable
    fallback for PR_SET_PDEATHSIG (macOS, BSD), polling because there is no portable notification."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)  # no cleanup to wait for: a part is either written whole or not at all

    thread = threading.Thread(target=watch, name="moodlens-parent-watchdog", daemon=True)
    thread.start()
    return thread


def _run_chunk(paths: list[str], part_url: str) -> tuple[int, float]:
    """Analyze one chunk and write its part atomically. Returns (images, seconds spent reading + analyzing)."""
    analyzer, endpoint = _WORKER["analyzer"], _WORKER["endpoint"]
    t0 = time.perf_counter()
    rows = analyze_many(analyzer, paths, endpoint)
    seconds = time.perf_counter() - t0
    storage.write_bytes(part_url, table_bytes(rows_to_table(rows, analyzer.classes), "parquet"), endpoint)
    return len(paths), seconds


@dataclass
class BatchSummary:
    """What a batch run did."""

    images: int
    rows: int
    faces: int
    errors: int
    parts_done_before: int
    parts_total: int
    seconds: float
    dest: str
    task_seconds: float = 0.0  # summed over workers: reading + analyzing the images done in this run

    @property
    def images_per_second(self) -> float:
        done = self.images * (1 - self.parts_done_before / max(self.parts_total, 1))
        return done / self.seconds if self.seconds > 0 else 0.0


def run_batch(
    src: str,
    dest: str,
    fmt: str | None = None,
    workers: int | None = None,
    limit: int | None = None,
    classes: str = "4",
    model_path: str | None = None,
    endpoint: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    keep_parts: bool = False,
    progress: bool = True,
    quiet: bool = False,
) -> BatchSummary:
    """Analyze SRC into DEST (see the module docstring). Resumes from DEST.parts when it exists.

    `quiet`: nothing on stderr but errors and warnings (no progress bar, notes or native libraries' notices).

    With more than one worker this starts `spawn` processes, so a calling script needs the usual
    `if __name__ == "__main__":` guard.
    """
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    import pyarrow as pa
    from tqdm import tqdm

    t0 = time.perf_counter()
    fmt = infer_format(dest, fmt)
    # a broken model fails here, once, with its ModelError, rather than in every worker (BrokenProcessPool)
    with quiet_native_output(quiet):
        out_classes, metadata = describe_model(classes, model_path)
    progress = progress and not quiet
    workers = workers or os.cpu_count() or 1
    paths = list_inputs(src, endpoint, limit)
    if storage.local_path(dest) in {storage.local_path(p) for p in paths if not storage.is_url(p)}:
        raise click.BadParameter(f"{dest} is one of the inputs: write the table somewhere else", param_hint="DEST")
    # the columns too: a part written with another schema is redone, not concatenated
    settings = {"classes": str(classes), "model": str(model_path or ""),
                "columns": output_columns(out_classes)}
    chunks = chunk_paths(paths, chunk_size)
    parts = parts_dir(dest)
    names = [chunk_name(c, settings) for c in chunks]
    existing = {u.rsplit("/", 1)[-1] for u in storage.list_files(parts, {".parquet"}, endpoint)}
    todo = [(c, storage.join(parts, n)) for c, n in zip(chunks, names, strict=True) if n not in existing]
    done_before = len(chunks) - len(todo)
    if done_before and not quiet:
        click.echo(f"resuming: {done_before} of {len(chunks)} parts already done in {printable(parts)}", err=True)

    if not paths and not quiet:
        click.echo(f"no images found in {printable(src)}", err=True)
    left_out = [] if quiet or src.lower().endswith(".txt") else not_images(src, endpoint)
    if left_out:
        click.echo(left_out_note(left_out, IMAGE_SUFFIXES, "an image moodlens batch reads"), err=True)
    task_seconds = 0.0
    bar = tqdm(total=len(paths), initial=len(paths) - sum(len(c) for c, _ in todo), unit="img",
               desc="batch", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        if todo and workers == 1:
            _init_worker(classes, model_path, endpoint, quiet)
            for chunk, url in todo:
                n, secs = _run_chunk(chunk, url)
                bar.update(n)
                task_seconds += secs
        elif todo:
            import multiprocessing

            # spawn, not fork: the parent may already run fsspec's event-loop thread, which fork would break
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_pool_worker,
                                     initargs=(os.getpid(), classes, model_path, endpoint, quiet)) as pool:
                pending = {pool.submit(_run_chunk, chunk, url) for chunk, url in todo}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        exc = fut.exception()
                        if exc is not None:
                            pool.shutdown(cancel_futures=True)
                            raise exc
                        n, secs = fut.result()
                        bar.update(n)
                        task_seconds += secs
    finally:
        bar.close()

    tables = [read_parquet(storage.join(parts, n), endpoint) for n in names]
    table = pa.concat_tables(tables) if tables else rows_to_table([], out_classes)
    table = table.replace_schema_metadata(metadata)
    storage.write_bytes(dest, table_bytes(table, fmt), endpoint)
    if not keep_parts:
        storage.remove_tree(parts, endpoint)
    face_index, error = table.column("face_index"), table.column("error")
    return BatchSummary(
        images=len(paths), rows=table.num_rows, faces=table.num_rows - face_index.null_count,
        errors=len(error) - error.null_count, parts_done_before=done_before, parts_total=len(chunks),
        seconds=time.perf_counter() - t0, dest=dest, task_seconds=task_seconds)
