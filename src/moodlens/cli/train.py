"""`moodlens train`, `evaluate` and `export`: the command-line face of moodlens.training."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import click

from moodlens.cli import ModelParam
from moodlens.training.data import TARGETS


def parse_depth(value: str | None) -> tuple[int, ...] | None:
    """--depth "2,3,3,3" as (2, 3, 3, 3): one positive count of convolutions per stage."""
    if value is None:
        return None
    try:
        depth = tuple(int(d) for d in value.split(","))
    except ValueError:
        depth = ()
    if len(depth) != 4 or min(depth) < 1:
        raise click.BadParameter(f"takes four positive counts, e.g. 2,3,3,3, not {value!r}")
    return depth


@click.command("train")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for checkpoints, config, history.csv and curves.png.")
@click.option("--fer2013", type=click.Path(exists=True, dir_okay=False), help="FER2013-format CSV (.csv/.csv.gz).")
@click.option("--ferplus", type=click.Path(exists=True, dir_okay=False), help="FER+ vote file (fer2013new.csv).")
@click.option("--shards", help="Parquet face-crop shards from `moodlens spark-prepare` (path or s3:// URL).")
@click.option("--classes", type=click.Choice(["4", "7"]), default="7", show_default=True)
@click.option("--targets", type=click.Choice(TARGETS), default="mixed", show_default=True,
              help="FER2013 labels, FER+ majority, FER+ vote distribution, a 50/50 mix of FER2013 and FER+, or "
                   "'heads': a FER2013 head and a FER+ head on one trunk (needs --ferplus and --classes 7).")
@click.option("--epochs", type=int, help="Epochs in the run [default: 36]; with --resume, a new length.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="AdamW, or SGD with Nesterov momentum 0.9.")
@click.option("--lr", type=float, help="Peak learning rate [default: 2e-3 for adamw, 0.01 for sgd].")
@click.option("--weight-decay", type=float, help="Decoupled weight decay [default: 1e-4 for adamw, 5e-4 for sgd].")
@click.option("--ema", type=float, default=0.0, show_default=True,
              help="Keep an exponential moving average of the weights with this decay per step (e.g. 0.999); "
                   "validation and best.keras use it.")
@click.option("--dropout", type=float, default=0.4, show_default=True, help="Dropout before the logits.")
@click.option("--stage-dropout", type=float, default=0.1, show_default=True,
              help="Dropout after conv stage k is k times this.")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--warmup-epochs", type=int, default=2, show_default=True)
@click.option("--class-weight", type=click.Choice(["none", "sqrt", "balanced"]), default="none", show_default=True)
@click.option("--width", type=int, default=32, show_default=True, help="Channels of the first stage.")
@click.option("--depth", callback=lambda ctx, param, value: parse_depth(value),
              help="Convolutions per stage, e.g. 2,3,3,3 (default 2,2,2,2). Deeper than --init-from: the new "
                   "convolutions start as the identity.")
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--limit", type=int, help="Train on the first N rows only (smoke tests).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Start from this checkpoint (e.g. fine-tune a 7-class run into a 4-class model).")
@click.option("--arch", type=click.Choice(["moodlens", "faceapi"]), default="moodlens", show_default=True,
              help="moodlens's 48x48 grey net, or face-api.js's 112x112 RGB net fine-tuned from its weights "
                   "(FER faces upscaled; needs --faceapi-dir).")
@click.option("--faceapi-dir", type=click.Path(exists=True, file_okay=False),
              help="face-api's model/ folder (`make faceapi` puts it in .cache/faceapi).")
@click.option("--distill", type=float, default=0.0, show_default=True,
              help="Weight of the teacher's output (on the same augmented face) mixed into every target: "
                   "--teacher's, or with --arch faceapi the original net's own.")
@click.option("--teacher", type=ModelParam(),
              help="A .tflite model file, or a shipped model's name (photos), to distil from (with --distill).")
@click.option("--teacher-flip", is_flag=True,
              help="Average the teacher's output over each view and its mirror image.")
@click.option("--ferplus-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="--targets heads: the FER+ head's share of the loss (the FER2013 head's is 1).")
@click.option("--photos", type=click.Path(exists=True),
              help="Labelled real photos (photos-dev labels.csv) scored every epoch: validation only.")
@click.option("--keep-epochs", is_flag=True,
              help="Keep every epoch's (averaged) weights as epoch-NNN.keras, to choose on more than one probe.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--stop-after", type=int, help="Stop after this many epochs in this call (resume later).")
def train_command(run_dir, fer2013, ferplus, shards, classes, targets, epochs, batch_size, optimizer, lr,
                  weight_decay, ema, dropout, stage_dropout, label_smoothing, warmup_epochs, class_weight, width,
                  depth, seed, limit, init_from, arch, faceapi_dir, distill, teacher, teacher_flip, ferplus_weight,
                  photos, keep_epochs, resume, stop_after) -> None:
    """Train the expression classifier (Keras 3 on TensorFlow; needs `pip install 'moodlens[train]'`)."""
    from moodlens.training.train import TrainConfig, train

    if not resume and not (fer2013 or shards):
        raise click.UsageError("give --fer2013 (and optionally --ferplus) or --shards")
    if arch == "faceapi" and not (faceapi_dir or resume):
        raise click.UsageError("--arch faceapi needs --faceapi-dir (face-api's model/ folder)")
    if teacher and not distill:
        raise click.UsageError("--teacher needs --distill W: the weight of its output in every target")
    if teacher_flip and not (teacher or resume):
        raise click.UsageError("--teacher-flip needs --teacher: it averages that model's output over mirror images")
    if ferplus_weight != 1.0 and targets != "heads" and not resume:
        raise click.UsageError("--ferplus-weight needs --targets heads: only a two-head run has a FER+ head")
    cfg = TrainConfig(run_dir=run_dir, fer2013=fer2013, ferplus=ferplus, shards=shards, classes=classes,
                      targets=targets, epochs=epochs or 36, batch_size=batch_size, optimizer=optimizer,
                      lr=lr or (0.01 if optimizer == "sgd" else 2e-3),
                      weight_decay=weight_decay or (5e-4 if optimizer == "sgd" else 1e-4), ema=ema,
                      dropout=dropout, stage_dropout=stage_dropout, label_smoothing=label_smoothing,
                      warmup_epochs=warmup_epochs, class_weight=class_weight,
                      width=width, depth=depth, seed=seed, limit=limit, init_from=init_from, arch=arch,
                      faceapi_dir=faceapi_dir, distill=distill,
                      teacher=teacher, teacher_flip=teacher_flip, ferplus_weight=ferplus_weight, photos=photos,
                      extra={"keep_epochs": True} if keep_epochs else {})
    try:
        run = train(cfg, resume=resume, stop_after=stop_after, epochs=epochs if resume else None)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"run folder: {run} (best.keras, last.keras, history.csv, curves.png)")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_weights(text: str | None, n: int) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"not numbers: {text!r}", param_hint="--fuse-weights") from exc
    if len(weights) != n:
        raise click.BadParameter(f"{len(weights)} weights for {n} nets", param_hint="--fuse-weights")
    return weights


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .tflite (card written beside).")
@click.option("--fer2013", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--ferplus", type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="PublicTest", show_default=True, help="Split to calibrate and measure on.")
@click.option("--head", type=click.Choice(["auto", "fer2013", "ferplus", "both"]), default="auto", show_default=True,
              help="Head of a two-head checkpoint. auto: FER2013's for 7 classes; for 4, the head with the higher "
                   "mean of its FER2013- and FER+-label accuracy on --split. both: the geometric mean of both "
                   "heads' restricted probabilities (one trunk: the cost of one head).")
@click.option("--calibration", type=click.Choice(["vector", "temperature"]), default="vector", show_default=True,
              help="A scale and a bias per class, or one temperature.")
@click.option("--uncertain-below", type=float,
              help="Top score under which a face is flagged uncertain [default: derived on --split].")
@click.option("--quantize", type=click.Choice(["none", "dynamic", "int8"]), default="dynamic", show_default=True,
              help="dynamic: int8 weights (dynamic range), 4x smaller and faster; int8: weights and activations "
                   "(full-integer, ranges from 1,000 Training faces). Accuracy is measured after.")
@click.option("--flip-tta/--no-flip-tta", default=False, show_default=True,
              help="Average each face's logits with its mirror image's (2x the compute).")
@click.option("--fuse", "fuse_with", multiple=True, type=click.Path(exists=True),
              help="Fuse another checkpoint into the same file (repeatable); each input shape is one input crop. "
                   "A folder: face-api.js's model folder, its expression net as published.")
@click.option("--photos", type=click.Path(exists=True),
              help="Also score the file end to end on labelled real photos (as `evaluate --photos`) for its card.")
@click.option("--fuse-weights", help="Comma-separated weights, CHECKPOINT's first [default: equal].")
@click.option("--calibrate-on", type=click.Choice(["auto", "fer2013", "ferplus"]), default="auto", show_default=True,
              help="Labels the calibration is fitted to (auto: FER+ majority for the FER+ head, else FER2013's).")
@click.option("--ferplus-share", type=click.FloatRange(0, 1),
              help="--head both: the FER+ head's weight in the blend (the FER2013 head's is the rest) "
                   "[default: 0.5, equal weights].")
def export_command(checkpoint, classes, out, fer2013, ferplus, split, head, calibration, uncertain_below, quantize,
                   flip_tta, fuse_with, photos, fuse_weights, calibrate_on, ferplus_share) -> None:
    """Calibrate a checkpoint, export it to LiteRT, measure it and write its model card."""
    from moodlens.training.export import export_model

    try:
        card, paths = export_model(checkpoint, classes, out, fer2013, ferplus, split, head=head,
                                   calibration=calibration, uncertain_below=uncertain_below, quantize=quantize,
                                   flip_tta=flip_tta, machine=cpu_name(), fuse_with=fuse_with,
                                   fuse_weights=parse_weights(fuse_weights, len(fuse_with) + 1),
                                   calibrate_on=calibrate_on, photos=photos, ferplus_share=ferplus_share)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")
    cal = card["calibration"]
    click.echo(f"head {card['architecture'].get('head') or '-'}, {cal['method']}: ECE {cal['ece_before']} -> "
               f"{cal['ece_after']}, uncertain below {card['uncertain_below']}; "
               f"export max abs diff {card['export_check']['max_abs_diff_vs_keras']:.2e}")
    for m in card["metrics"].values():
        click.echo(f"  {m['split']:<45} {m['labels']:<14} n={m['n']:<5} acc={m['accuracy']:.4f} "
                   f"macro-F1={m['macro_f1']:.4f}")


@click.command("evaluate")
@click.option("--fer2013", type=click.Path(exists=True, dir_okay=False),
              help="FER2013-format CSV (emotion,pixels,Usage), plain or .gz.")
@click.option("--ferplus", type=click.Path(exists=True, dir_okay=False),
              help="FER+ vote file aligned by line; adds a 'ferplus' block for FER+ majority labels.")
@click.option("--split", help="Usage value to evaluate, e.g. PublicTest.")
@click.option("--photos", type=click.Path(exists=True),
              help="Real photos instead: a labels.csv (file,label,...; photos-dev's format) or a folder whose "
                   "subfolder or file-name prefix is the label. Scored end to end, largest face; no face = wrong.")
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True)
@click.option("--model", type=ModelParam((".tflite", ".keras")),
              help="A .tflite or .keras model, or 'photos' (default: the shipped model for --classes; --photos: "
                   ".tflite only).")
@click.option("--head", type=click.Choice(["fer2013", "ferplus"]), default=None,
              help="Head of a two-head .keras checkpoint [default: fer2013].")
@click.option("--exclude-training-duplicates", is_flag=True,
              help="Leave out rows whose image also appears in Training.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for the confusion-matrix PNG (table mode).")
def evaluate_command(fer2013, ferplus, split, photos, classes, model, head, exclude_training_duplicates, as_json,
                     out) -> None:
    """Evaluate a model on one split of a FER2013-format file, or end to end on labelled photos."""
    from moodlens.training.evaluate import evaluate, evaluate_photos, format_table, plot_confusion

    if photos is None and not (fer2013 and split):
        raise click.UsageError("give --fer2013 and --split, or --photos")
    try:
        if photos is not None:
            result = evaluate_photos(photos, classes, model)
        else:
            result = evaluate(fer2013, split, classes, ferplus, model, exclude_training_duplicates, head)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    name = Path(photos).parent.name if photos and Path(photos).is_file() else Path(photos or split).name
    blocks = [("", f"{name}, {classes} classes, " + ("photos end to end" if photos else "FER2013 labels")),
              ("ferplus", f"{name}, {classes} classes, FER+ majority labels"),
              ("excluding_repos", f"{name}, {classes} classes, without photos from "
                                  f"{', '.join(result.get('excluding_repos', {}).get('repos', []))}")]
    for key, title in blocks:
        if key and key not in result:
            continue
        block = result[key] if key else result
        click.echo(format_table(block, title) + (f"\n  faces not found: {block['faces_not_found']}"
                                                 if "faces_not_found" in block else ""))
        png = plot_confusion(block, title, Path(out) / f"confusion-{name}-{classes}{'-' + key if key else ''}.png")
        click.echo(f"  confusion matrix: {png}\n")
