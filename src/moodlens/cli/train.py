"""`moodlens train`, `evaluate` and `export`: the command-line face of moodlens.training."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import click
import numpy as np

from moodlens.training.data import TARGETS


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
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--limit", type=int, help="Train on the first N rows only (smoke tests).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Start from this checkpoint (e.g. fine-tune a 7-class run into a 4-class model).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--stop-after", type=int, help="Stop after this many epochs in this call (resume later).")
def train_command(run_dir, fer2013, ferplus, shards, classes, targets, epochs, batch_size, optimizer, lr,
                  weight_decay, ema, dropout, stage_dropout, label_smoothing, warmup_epochs, class_weight, width,
                  seed, limit, init_from, resume, stop_after) -> None:
    """Train the expression classifier (Keras 3 on TensorFlow; needs `pip install 'moodlens[train]'`)."""
    from moodlens.training.train import TrainConfig, train

    if not resume and not (fer2013 or shards):
        raise click.UsageError("give --fer2013 (and optionally --ferplus) or --shards")
    cfg = TrainConfig(run_dir=run_dir, fer2013=fer2013, ferplus=ferplus, shards=shards, classes=classes,
                      targets=targets, epochs=epochs or 36, batch_size=batch_size, optimizer=optimizer,
                      lr=lr or (0.01 if optimizer == "sgd" else 2e-3),
                      weight_decay=weight_decay or (5e-4 if optimizer == "sgd" else 1e-4), ema=ema,
                      dropout=dropout, stage_dropout=stage_dropout, label_smoothing=label_smoothing,
                      warmup_epochs=warmup_epochs, class_weight=class_weight,
                      width=width, seed=seed, limit=limit, init_from=init_from)
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


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .tflite (card written beside).")
@click.option("--fer2013", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--ferplus", type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="PublicTest", show_default=True, help="Split to calibrate and measure on.")
@click.option("--uncertain-below", type=float, help="Top score under which a face is flagged uncertain.")
@click.option("--quantize", type=click.Choice(["none", "dynamic"]), default="dynamic", show_default=True,
              help="int8 weights (dynamic range): 4x smaller and faster; accuracy is measured after.")
@click.option("--flip-tta/--no-flip-tta", default=False, show_default=True,
              help="Average each face's logits with its mirror image's (2x the compute).")
def export_command(checkpoint, classes, out, fer2013, ferplus, split, uncertain_below, quantize, flip_tta) -> None:
    """Calibrate a checkpoint, export it to LiteRT, measure it and write its model card."""
    import keras
    from scipy.special import softmax

    from moodlens.engine.classify import ExpressionClassifier, ms_per_face
    from moodlens.models import DATA_TERMS, INTENDED_USE, LIMITATIONS
    from moodlens.training.calibrate import calibration_report
    from moodlens.training.data import load_fer, read_fer2013
    from moodlens.training.evaluate import evaluate, keras_model_classes
    from moodlens.training.export import columns_for, export_tflite, model_logits
    from moodlens.training.labels import class_set
    from moodlens.training.modelcard import write_card

    ckpt = Path(checkpoint)
    model = keras.models.load_model(ckpt, compile=False)
    trained = class_set(str(len(keras_model_classes(ckpt, model.output_shape[-1]))))
    target = class_set(classes)
    cols = columns_for(trained, target)
    frame = read_fer2013(fer2013)
    cal_set = load_fer(fer2013, split, target, frame=frame)
    logits = model_logits(model, cal_set.images, flip_tta)[:, cols]
    cal = calibration_report(logits, cal_set.y) | {"fitted_on": f"{split}, FER2013 labels"}
    out = export_tflite(model, out, cols, cal["temperature"], quantize=quantize, flip_tta=flip_tta)

    # round trip: the exported file must give what Keras gives
    probe = cal_set.images[:64]
    ref = softmax(model_logits(model, probe, flip_tta)[:, cols] / cal["temperature"], axis=1)
    got = ExpressionClassifier(out, num_threads=1).predict(probe)
    max_diff = float(np.abs(ref - got).max())

    card_path = out.with_suffix(".json")
    card_path.unlink(missing_ok=True)  # the card is rebuilt below from what was measured
    metrics = {}
    for dedup in (False, True):
        res = evaluate(fer2013, split, classes, ferplus, out, exclude_training_duplicates=dedup)
        suffix = ", without Training duplicates" if dedup else ""
        metrics[f"{split}_fer2013{'_dedup' if dedup else ''}"] = {
            "split": split + suffix, "labels": "FER2013", "n": res["n"], "accuracy": res["accuracy"],
            "macro_f1": res["macro_f1"], "per_class": res["per_class"]}
        if "ferplus" in res:
            metrics[f"{split}_ferplus{'_dedup' if dedup else ''}"] = {
                "split": split + suffix, "labels": "FER+ majority", "n": res["ferplus"]["n"],
                "accuracy": res["ferplus"]["accuracy"], "macro_f1": res["ferplus"]["macro_f1"],
                "per_class": res["ferplus"]["per_class"]}
    clf = ExpressionClassifier(out, num_threads=1)
    run_cfg = json.loads((ckpt.parent / "config.json").read_text()) if (ckpt.parent / "config.json").exists() else {}
    card = {
        "name": f"moodlens expression-{classes}",
        "summary": f"A {len(target)}-class facial-expression classifier ({', '.join(target.classes)}) for "
                   "48x48 grayscale aligned face crops, small enough to run in about a millisecond on one CPU core.",
        "classes": list(target.classes),
        "input": {"shape": [None, 48, 48, 1], "dtype": "float32", "channels": "grayscale", "range": "0..255",
                  "description": "(N, 48, 48, 1) float32 grayscale pixel values 0..255 (scaling to -1..1 is inside "
                                 "the model); faces rotated upright by the eye line and cropped square around the "
                                 "face as moodlens.engine.align does"},
        "output": "(N, C) calibrated class probabilities, rows sum to 1",
        "file": out.name, "file_bytes": out.stat().st_size, "quantization": quantize, "flip_tta": flip_tta,
        "architecture": {"name": "4-stage VGG-style CNN with batch norm, global average pooling",
                         "parameters": int(model.count_params()),
                         "trained_classes": list(trained.classes), "output_columns": cols},
        "temperature": cal["temperature"], "calibration": cal,
        "uncertain_below": uncertain_below if uncertain_below is not None else (0.5 if len(target) == 4 else 0.4),
        "metrics": metrics,
        "export_check": {"max_abs_diff_vs_keras": max_diff},
        "speed": {"ms_per_face_batch1": ms_per_face(clf, 1), "ms_per_face_batch32": ms_per_face(clf, 32),
                  "runtime": "LiteRT (ai-edge-litert), 1 thread", "machine": cpu_name()},
        "training": {
            "description": (
                f"Trained from scratch with `moodlens train` on the FER2013 Training split "
                f"({run_cfg.get('classes', trained.name)} classes, targets '{run_cfg.get('targets', '?')}': "
                "half the FER2013 label and half the FER+ vote distribution; rows FER+ marks not-a-face or "
                "without a majority left out), "
                f"{run_cfg.get('epochs', '?')} epochs, AdamW with warm-up and cosine decay, label smoothing "
                f"{run_cfg.get('label_smoothing', '?')}, augmentation: random rotation/scale/shift in one affine, "
                "horizontal flip, brightness/contrast jitter, random erasing. Checkpoint selected on "
                f"{split} (7-class FER2013-label accuracy)."
                + (f" Fine-tuned from {run_cfg['init_from']} (a run with its own config.json beside it)."
                   if run_cfg.get("init_from") else "")
                + (f" This {len(target)}-class model is that {len(trained)}-class network with its output restricted"
                   f" to {', '.join(target.classes)} (softmax over those logits)." if trained != target else "")),
            "config": run_cfg,
        },
        "data_terms": DATA_TERMS,
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "face_detector": "BlazeFace short- and full-range (Google MediaPipe, Apache-2.0); see face_detection.md",
    }
    json_path, md_path = write_card(card, card_path)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), {json_path}, {md_path}")
    click.echo(f"temperature {cal['temperature']}, export max abs diff {max_diff:.2e}")
    for m in metrics.values():
        click.echo(f"  {m['split']:<45} {m['labels']:<14} n={m['n']:<5} acc={m['accuracy']:.4f} "
                   f"macro-F1={m['macro_f1']:.4f}")


@click.command("evaluate")
@click.option("--fer2013", required=True, type=click.Path(exists=True, dir_okay=False),
              help="FER2013-format CSV (emotion,pixels,Usage), plain or .gz.")
@click.option("--ferplus", type=click.Path(exists=True, dir_okay=False),
              help="FER+ vote file aligned by line; adds a 'ferplus' block for FER+ majority labels.")
@click.option("--split", required=True, help="Usage value to evaluate, e.g. PublicTest.")
@click.option("--classes", type=click.Choice(["4", "7"]), default="4", show_default=True)
@click.option("--model", type=click.Path(exists=True, dir_okay=False),
              help="A .tflite or .keras model (default: the shipped model for --classes).")
@click.option("--exclude-training-duplicates", is_flag=True,
              help="Leave out rows whose image also appears in Training.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for the confusion-matrix PNG (table mode).")
def evaluate_command(fer2013, ferplus, split, classes, model, exclude_training_duplicates, as_json, out) -> None:
    """Evaluate a model on one split of a FER2013-format file."""
    try:
        from moodlens.training.evaluate import evaluate, format_table, plot_confusion

        result = evaluate(fer2013, split, classes, ferplus, model, exclude_training_duplicates)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    for key, label in (("", "FER2013 labels"), ("ferplus", "FER+ majority labels")):
        if key and key not in result:
            continue
        block = result[key] if key else result
        title = f"{split}, {classes} classes, {label}"
        click.echo(format_table(block, title))
        png = plot_confusion(block, title, Path(out) / f"confusion-{split}-{classes}{'-' + key if key else ''}.png")
        click.echo(f"  confusion matrix: {png}\n")
