"""`moodlens analyze PATH...`: photos and videos from the command line, JSON lines or CSV on stdout.

Images are analyzed in a process pool (`--workers`, one Analyzer per process). The analyzer is built once in
the main process before the pool forks, so a broken model fails fast with one message and workers start
without reloading models (on platforms without fork each worker builds its own).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import click

from moodlens.cli import MODEL_HELP, ModelParam
from moodlens.engine.decode import IMAGE_SUFFIXES
from moodlens.engine.detect import DETECTORS
from moodlens.engine.runtime import quiet_native_output
from moodlens.engine.safeio import check_regular, csv_cell, left_out_note, list_inside, printable, write_atomic
from moodlens.engine.video import VIDEO_SUFFIXES, WRITABLE_SUFFIXES, annotated_name

CSV_FACE_COLUMNS = ["face_index", "box_x", "box_y", "box_w", "box_h", "score", "expression", "uncertain", "quality"]


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to analyze one input."""

    classes: str
    model_path: str | None
    detector: str
    explain: bool
    every: int
    annotate: str | None
    out: str | None
    min_face_score: float = 0.5
    quiet: bool = False
    smooth: bool = True  # videos: each face's scores averaged over its recent frames


@dataclass(frozen=True)
class Job:
    """One input: its path, and the folder it was found under (to mirror sub-folders in output folders)."""

    path: str
    root: str | None = None
    missing: bool = False


_STATE: dict = {}  # this process's settings and Analyzer (set before the pool forks, or by the initializer)


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def collect_jobs(paths: tuple[Path, ...], skip: tuple[str | None, ...] = (),
                 left_out: list[str] | None = None) -> list[Job]:
    """Files as given (whatever their suffix), and images/videos under folders, recursively, sorted; nothing
    under the `skip` folders (the command's own output folders, so a rerun never reads what it wrote).

    Folders are listed like `moodlens batch` lists them (`safeio.list_inside`): links that lead outside the
    folder are skipped, FIFOs and devices are kept so that each gets its error line. Files in folders whose
    extension is no image or video moodlens reads are appended to `left_out`, so the command can say so."""
    jobs = []
    for p in paths:
        if p.is_dir():
            jobs += _folder_jobs(p, skip, left_out if left_out is not None else [])
        else:
            jobs.append(Job(str(p), missing=not p.exists()))
    return jobs


def _folder_jobs(folder: Path, skip: tuple[str | None, ...], left_out: list[str]) -> list[Job]:
    # an output folder inside this input folder is skipped; one that is the input folder is not (its files are
    # the inputs, and check_outputs refuses to write over them)
    skipped = [o for o in (Path(s).resolve() for s in skip if s) if o != folder.resolve()]
    wanted = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    every = [folder / key for key in list_inside(folder)]
    files = [f for f in every if f.suffix.lower() in wanted]
    # a video's timeline plot and CSV beside it are this command's outputs, not inputs of a rerun
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    own = {f.with_name(f.stem + ".timeline" + ext) for f in videos for ext in (".png", ".csv")}

    def ours(f: Path) -> bool:
        return f in own or any(f.resolve().is_relative_to(o) for o in skipped)

    left_out += [str(f) for f in every if f.suffix.lower() not in wanted and not ours(f)]
    return [Job(str(f), str(folder)) for f in files if not ours(f)]


def is_video(job: Job) -> bool:
    return Path(job.path).suffix.lower() in VIDEO_SUFFIXES


def output_paths(job: Job, settings: Settings) -> list[Path]:
    """Every file the run writes for `job`."""
    if is_video(job):
        drawn = [annotated_video_path(job, settings)] if settings.annotate else []
        return [*timeline_paths(job, settings), *drawn]
    return [annotated_path(settings.annotate, job)] if settings.annotate else []


def annotates_one_file(annotate: str | None) -> bool:
    """Whether `--annotate` names the annotated copy of one video (clip.drawn.mp4) rather than a folder."""
    return bool(annotate) and Path(annotate).suffix.lower() in VIDEO_SUFFIXES and not Path(annotate).is_dir()


def annotate_folder(settings: Settings) -> str | None:
    """The folder `--annotate` writes in: itself, or the folder of the one video file it names."""
    if annotates_one_file(settings.annotate):
        return str(Path(settings.annotate).parent)
    return settings.annotate


def check_outputs(jobs: list[Job], settings: Settings) -> None:
    """Refuse a run that would write over any of its inputs (e.g. `--annotate` pointing at the input folder),
    or write two inputs' outputs to one file (x.jpg of two input folders: the second would replace the first)."""
    inputs = {Path(j.path).resolve() for j in jobs if not j.missing}
    written: dict[Path, Job] = {}
    for job in jobs:
        for out in output_paths(job, settings):
            where = out.resolve()
            if where in inputs:
                raise click.UsageError(
                    f"{printable(str(out))} would overwrite an input: choose an output folder outside the input "
                    "folders")
            first = written.setdefault(where, job)
            if Path(first.path).resolve() != Path(job.path).resolve():  # one file given twice writes one copy
                raise click.UsageError(
                    f"{printable(first.path)} and {printable(job.path)} would both be written as "
                    f"{printable(str(out))}: analyze them in separate runs or into separate output folders")


def _init_state(settings: Settings) -> None:
    """Set this process's settings; build its Analyzer unless one with the same model and detector exists."""
    key = (settings.classes, settings.model_path, settings.detector)
    if _STATE.get("key") != key:
        from moodlens import Analyzer

        _STATE.update(key=key, analyzer=Analyzer(classes=settings.classes, model_path=settings.model_path,
                                                 detector=settings.detector))
    _STATE["settings"] = settings


def _init_worker(settings: Settings) -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV's own threads would only contend for cores
    with quiet_native_output(settings.quiet):  # a spawned worker builds its own models (a forked one has them)
        _init_state(settings)


def _mirrored(folder: str, job: Job) -> Path:
    """`job`'s path inside `folder`, keeping its sub-folders under the input folder (so names never clash)."""
    src = Path(job.path)
    return Path(folder) / (src.relative_to(job.root) if job.root else Path(src.name))


def annotated_path(folder: str, job: Job) -> Path:
    """Where the annotated copy goes: same name for JPEG/PNG, else ".jpg" appended (photo.heic.jpg)."""
    out = _mirrored(folder, job)
    return out if out.suffix.lower() in (".jpg", ".jpeg", ".png") else out.with_name(out.name + ".jpg")


def annotated_video_path(job: Job, settings: Settings) -> Path:
    """Where a video's annotated copy goes: the file --annotate names, else its name (".mp4" appended where
    OpenCV cannot write that container: clip.webm.mp4) mirrored under the --annotate folder."""
    if annotates_one_file(settings.annotate):
        return Path(settings.annotate)
    out = _mirrored(settings.annotate, job)
    return out.with_name(annotated_name(out.name))


def timeline_root(job: Job, settings: Settings) -> Path:
    """The folder a video's timeline is written in: --out, else --annotate's folder, else the video's own."""
    folder = settings.out or annotate_folder(settings)
    return Path(folder) if folder else Path(job.path).parent


def timeline_paths(job: Job, settings: Settings) -> tuple[Path, Path]:
    """Where a video's timeline CSV and plot go: <stem>.timeline.csv and <stem>.timeline.png, mirrored under
    --out/--annotate, else beside the video."""
    folder = settings.out or annotate_folder(settings)
    base = _mirrored(folder, job) if folder else Path(job.path)
    return base.with_name(base.stem + ".timeline.csv"), base.with_name(base.stem + ".timeline.png")


def analyze_job(job: Job) -> dict:
    """Analyze one input in this process; never raises: failures become the record's "error"."""
    settings: Settings = _STATE["settings"]
    if job.missing:
        return {"path": job.path, "faces": [], "error": "FileNotFoundError: no such file"}
    try:
        if is_video(job):
            return _analyze_video(job, settings)
        return _analyze_image(job, settings)
    except Exception as exc:  # a bad file must never stop the run
        return {"path": job.path, "faces": [], "error": f"{type(exc).__name__}: {exc}"}


def _analyze_image(job: Job, settings: Settings) -> dict:
    analyzer = _STATE["analyzer"]
    if settings.annotate:
        from moodlens.engine.decode import decode_image
        from moodlens.engine.render import draw_faces, encode_jpeg, encode_png

        rgb = decode_image(job.path, analyzer.max_bytes, analyzer.max_pixels)
        result = analyzer.analyze(rgb, explain=settings.explain, min_face_score=settings.min_face_score)
        drawn = draw_faces(rgb, result.faces)
        out = annotated_path(settings.annotate, job)
        write_atomic(out, encode_png(drawn) if out.suffix.lower() == ".png" else encode_jpeg(drawn), settings.annotate)
    else:
        result = analyzer.analyze(job.path, explain=settings.explain, min_face_score=settings.min_face_score)
    faces = []
    for f in result.faces:
        d = f.to_dict()
        face = {k: d[k] for k in ("box", "score", "expression", "scores", "uncertain", "quality")}
        if f.heatmap is not None:
            face["heatmap"] = f.heatmap
        faces.append(face)
    return {"path": job.path, "faces": faces, "error": None}


def _analyze_video(job: Job, settings: Settings) -> dict:
    from moodlens.engine.video import analyze_video, frame_count, plot_timeline, write_timeline_csv

    check_regular(job.path)  # OpenCV opens the file itself: a FIFO would block it, a device never end
    drawn = annotated_video_path(job, settings) if settings.annotate else None
    bar = None
    if _STATE.get("frame_bar") and not settings.quiet:  # only in the main process: one terminal, one bar set
        from tqdm import tqdm

        name = printable(Path(job.path).name)
        bar = tqdm(total=frame_count(job.path), unit="frame", desc=name if len(name) <= 30 else name[:29] + "…",
                   file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        timeline = analyze_video(_STATE["analyzer"], job.path, every=settings.every, smooth=settings.smooth,
                                 annotate=drawn, root=annotate_folder(settings) if drawn else None,
                                 min_face_score=settings.min_face_score,
                                 progress=(lambda _: bar.update(1)) if bar else None)
    finally:
        if bar:
            bar.close()
    root, (csv_path, png_path) = timeline_root(job, settings), timeline_paths(job, settings)
    write_timeline_csv(timeline, csv_path, root)
    seen = timeline.faces_seen
    record = {"path": job.path, "video": True, "frames": timeline.frames_read, "frames_analyzed":
              timeline.frames_analyzed, "faces_tracked": len(seen), "timeline_csv": str(csv_path),
              "timeline_png": str(png_path), "annotated": str(drawn) if drawn else None, "error": None}
    warnings = [] if seen else [f"no face found in {timeline.frames_analyzed} analyzed frames"]
    try:
        plot_timeline(timeline, png_path, title=printable(Path(job.path).name), root=root)
    except ModuleNotFoundError as exc:  # the serving install has no matplotlib: the CSV is the timeline
        record["timeline_png"] = None
        warnings.append(f"no timeline plot: {exc.name} is not installed (pip install 'moodlens[plots]')")
    if warnings:
        record["warning"] = "; ".join(warnings)
    return record


def run_jobs(jobs: list[Job], settings: Settings, workers: int) -> Iterator[dict]:
    """Records for `jobs`, in order, from this process or from a pool of `workers` processes."""
    _init_state(settings)  # also validates the model before any work starts
    workers = max(1, min(workers, len(jobs)))
    _STATE["frame_bar"] = workers == 1  # videos analyzed here show a bar by frames; in a pool, only by files
    if workers == 1:
        yield from map(analyze_job, jobs)
        return
    # fork: children inherit the loaded analyzer (copy-on-write) instead of loading models again
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunk = max(1, min(16, len(jobs) // (workers * 8)))
    done = 0
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(settings,)) as pool:
            for record in pool.map(analyze_job, jobs, chunksize=chunk):
                done += 1
                yield record
    except BrokenProcessPool:
        # a worker died (killed, out of memory, a native crash): which file did it is unknown, so every file not
        # yet answered gets an error line rather than a silent gap or a retry that could crash this process
        for j in jobs[done:]:
            yield {"path": j.path, "faces": [], "error": "BrokenProcessPool: a worker process died; not analyzed"}


def csv_rows(record: dict, classes: tuple[str, ...]) -> list[list]:
    """CSV rows of one image record: one per face, or one face-less row (no face, or the error)."""
    probs = [f"p_{c}" for c in classes]
    if not record["faces"]:
        rows = [[record["path"], *[""] * (len(CSV_FACE_COLUMNS) + len(probs)), record["error"] or ""]]
    else:
        rows = [[record["path"], i, *f["box"], f["score"], f["expression"], int(f["uncertain"]), f["quality"],
                 *(f["scores"].get(c, "") for c in classes), ""] for i, f in enumerate(record["faces"])]
    return [[csv_cell(v) for v in row] for row in rows]  # names and errors can carry formulas and escapes


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "fmt", flag_value="json", default=True, help="One JSON object per image (default).")
@click.option("--csv", "fmt", flag_value="csv", help="One CSV row per face instead.")
@click.option("--annotate", type=click.Path(), metavar="DIR|VIDEO",
              help="Write annotated copies (photos, and videos with face ids) into this folder; or, for one video, "
                   "the annotated video's file name (.mp4 .avi .mov .mkv; never overwritten).")
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True, help="Class set.")
@click.option("--model", "model_path", type=ModelParam(), help=MODEL_HELP)
@click.option("--detector", type=click.Choice(DETECTORS), default="auto", show_default=True,
              help="Face detector: short range, full range, or auto (both as needed).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Videos: analyze every Nth frame.")
@click.option("--smooth/--no-smooth", default=True, show_default=True,
              help="Videos: average each face's scores over its last few analyzed frames (a moving average).")
@click.option("--explain", is_flag=True,
              help="Add an occlusion heatmap to each of a photo's first 16 faces, best detector score first (slower).")
@click.option("--min-face-score", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Leave out faces the detector scored lower (0.5 is the lowest the detectors report).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for video timelines (default: --annotate, else beside each video).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes, one analyzer each [default: CPU cores].")
@click.option("-q", "--quiet", is_flag=True,
              help="Only the results: no progress bar, summary, notes or native libraries' notices on stderr.")
@click.pass_context
def analyze_command(ctx: click.Context, paths: tuple[Path, ...], fmt: str, annotate: str | None, classes: str,
                    model_path: str | None, detector: str, every: int, smooth: bool, explain: bool,
                    min_face_score: float, out: str | None, workers: int | None, quiet: bool) -> None:
    """Find faces and read their expressions in photos and videos (files or folders, recursively).

    Photos: one JSON line per image on stdout, {"path", "faces": [{"box": [x, y, w, h], "score", "expression",
    "scores", "uncertain"}], "error"}, or with --csv one row per face. A file that cannot be read gets an error
    and the run goes on; the exit status is 1 when any input failed. Videos (mp4, avi, mov, mkv, webm): each
    face keeps an id across frames; a per-frame timeline CSV, a PNG plot of each face's scores over time and,
    with --annotate, an annotated copy of the video.
    """
    from moodlens.engine.errors import MoodlensError

    settings = Settings(classes, model_path, detector, explain, every, annotate, out, min_face_score, quiet, smooth)
    left_out: list[str] = []
    jobs = collect_jobs(paths, skip=(annotate, out), left_out=left_out)
    if left_out and not quiet:
        click.echo(left_out_note(left_out, IMAGE_SUFFIXES | VIDEO_SUFFIXES, "a photo or video moodlens reads"),
                   err=True)
    if not jobs:
        raise click.UsageError("no images or videos found in the given paths")
    check_annotate(annotate, jobs)
    check_outputs(jobs, settings)
    try:
        with quiet_native_output(quiet):
            _init_state(settings)
    except MoodlensError as exc:
        raise click.ClickException(printable(str(exc), lines=True)) from exc
    one_video = len(jobs) == 1 and is_video(jobs[0])  # its bar by frames is the progress; no bar by files
    counts = _print_records(run_jobs(jobs, settings, workers or default_workers()), len(jobs), fmt,
                            tuple(_STATE["analyzer"].classes), quiet or one_video, quiet)
    if not quiet:
        click.echo(f"{len(jobs) - counts['videos']} images ({counts['faces']} faces), {counts['videos']} videos, "
                   f"{counts['errors']} errors", err=True)
    ctx.exit(1 if counts["errors"] else 0)


def check_annotate(annotate: str | None, jobs: list[Job]) -> None:
    """`--annotate` is a folder, or the file name of one video's annotated copy in a container OpenCV writes."""
    if not annotate:
        return
    if annotates_one_file(annotate):
        if len(jobs) != 1 or not is_video(jobs[0]):
            raise click.UsageError(f"--annotate {printable(annotate)} names one video's annotated copy: give a "
                                   "folder to annotate several inputs or photos")
        if Path(annotate).suffix.lower() not in WRITABLE_SUFFIXES:
            raise click.UsageError(f"--annotate {printable(annotate)}: this OpenCV cannot write that container; "
                                   f"use {', '.join(sorted(WRITABLE_SUFFIXES))}")
    elif Path(annotate).exists() and not Path(annotate).is_dir():
        raise click.UsageError(f"--annotate {printable(annotate)}: exists and is not a folder")


def _print_records(records: Iterator[dict], total: int, fmt: str, classes: tuple[str, ...],
                   no_bar: bool, quiet: bool) -> dict[str, int]:
    """Print each record as it comes (JSON line or CSV rows), with a progress bar; counts faces, videos, errors."""
    from tqdm import tqdm

    writer = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writerow([csv_cell(c) for c in ["path", *CSV_FACE_COLUMNS, *(f"p_{c}" for c in classes), "error"]])
    counts = {"faces": 0, "videos": 0, "errors": 0}
    notes = []
    with tqdm(total=total, unit="file", file=sys.stderr, disable=no_bar, dynamic_ncols=True) as bar:
        for record in records:
            counts["errors"] += record["error"] is not None
            if record.get("video"):
                counts["videos"] += 1
                written = [record[k] for k in ("timeline_csv", "timeline_png", "annotated") if record.get(k)]
                found = (f"{record['faces_tracked']} face{'s' if record['faces_tracked'] != 1 else ''} tracked"
                         if record["faces_tracked"] else "no face found")
                notes.append(printable(f"{record['path']}: {record['frames_analyzed']} of {record['frames']} "
                                       f"frames -> {', '.join(written)} ({found})"))
            else:
                counts["faces"] += len(record["faces"])
                if writer:
                    writer.writerows(csv_rows(record, classes))
            if not writer:
                click.echo(json.dumps(record))  # ASCII-escaped: no control character reaches the terminal
            sys.stdout.flush()
            bar.update(1)
    for note in [] if quiet else notes:
        click.echo(note, err=True)
    return counts
