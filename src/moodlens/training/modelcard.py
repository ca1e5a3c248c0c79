"""Model cards for the shipped classifiers: a JSON file the app reads and a Markdown file people read."""

from __future__ import annotations

import json
from pathlib import Path

from moodlens.models import DATA_TERMS, INTENDED_USE, LIMITATIONS


def training_description(run_cfg: dict, trained_name: str, split: str) -> str:
    """What the run did, in a sentence or three, from its config.json."""
    aug = ("augmentation: random rotation/scale/shift in one affine, horizontal flip, brightness/contrast "
           "jitter, random erasing")
    optimizer = "SGD with Nesterov momentum" if run_cfg.get("optimizer") == "sgd" else "AdamW"
    ema = f", an exponential moving average of the weights (decay {run_cfg['ema']})" if run_cfg.get("ema") else ""
    if run_cfg.get("targets") == "heads":
        what = ("two heads on one trunk: a FER2013 head (the 7 FER2013 labels, every Training row, label "
                f"smoothing {run_cfg.get('label_smoothing', '?')}) and a FER+ head (cross-entropy on the FER+ vote "
                "distribution over its 8 emotions, as microsoft/FERPlus does; rows whose votes go to 'unknown' or "
                "'not a face' have no FER+ target)")
        if run_cfg.get("ferplus_weight", 1.0) != 1.0:
            what += f", the FER+ head's loss weighted {run_cfg['ferplus_weight']}"
    else:
        what = (f"{run_cfg.get('classes', trained_name)} classes, targets '{run_cfg.get('targets', '?')}', label "
                f"smoothing {run_cfg.get('label_smoothing', '?')}")
    depth = depth_words(run_cfg) + (" (the convolutions the starting net lacks begin as the identity)"
                                    if run_cfg.get("depth") and run_cfg.get("init_from") else "")
    taught = distill_words(run_cfg)
    recipe = (f"{what}{taught}; {run_cfg.get('epochs', '?')} epochs, {optimizer} with warm-up and cosine decay{ema}, "
              f"width {run_cfg.get('width', 32)}{depth}, {aug}. Checkpoint selected on {split} (7-class FER2013-label "
              "accuracy).")
    if run_cfg.get("arch") == "faceapi":
        return (f"{FACEAPI_ORIGIN} Fine-tuned with `moodlens train --arch faceapi` on the FER2013 Training split, "
                f"faces upscaled from 48x48 grey to 112x112 and copied to RGB{taught}: {what}; "
                f"{run_cfg.get('epochs', '?')} epochs, {optimizer} with warm-up and cosine decay{ema}, {aug}.")
    if not run_cfg.get("init_from"):
        return f"Trained from scratch with `moodlens train` on the FER2013 Training split: {recipe}"
    return (f"Fine-tuned with `moodlens train` on the FER2013 Training split, starting from "
            f"{init_source(run_cfg['init_from'])}: {recipe}")


def training_stages(run_cfg: dict, trained_name: str, split: str) -> list[str]:
    """The training of a file, one entry per stage, oldest first: the stages on the card of the shipped file the
    run started from (a card without a list counts as one stage), then this run's."""
    card = shipped_card(run_cfg.get("init_from") or "")
    training = card.get("training", {}) if card else {}
    before = training.get("stages") or ([training["description"]] if "description" in training else [])
    return [*before, training_description(run_cfg, trained_name, split)]


def shipped_card(path: str) -> dict | None:
    """The card beside a shipped-style .tflite file, or None for a checkpoint or a file without one."""
    card = Path(path).with_suffix(".json") if path.endswith(".tflite") else None
    return json.loads(card.read_text()) if card and card.exists() else None


def stages_words(stages: list[str]) -> str:
    """The stages as one description: the one stage, or 'In N stages, ...: (1) ... (2) ...'."""
    if len(stages) == 1:
        return stages[0]
    return f"{stages_intro(stages)} " + " ".join(f"({i}) {stage}" for i, stage in enumerate(stages, start=1))


def stages_intro(stages: list[str]) -> str:
    return f"In {len(stages)} stages, each starting from the one before:"


def distill_words(run_cfg: dict) -> str:
    """", each target mixed with ..." for a run with --distill, naming the teacher train.make_train_stream used:
    the --teacher file, else (--arch faceapi) the original net; nothing for a run without one."""
    weight = run_cfg.get("distill")
    if weight and run_cfg.get("teacher"):
        mirror = " and its mirror image (the two averaged)" if run_cfg.get("teacher_flip") else ""
        return (f", each target mixed (weight {weight}) with the output of a teacher on the same augmented face"
                f"{mirror} (knowledge distillation): {teacher_words(run_cfg['teacher'])}")
    if weight and run_cfg.get("arch") == "faceapi":
        return (f", each target mixed with the original net's own output on the same view (weight {weight}) so "
                "that it keeps what it knew of real photos")
    return ""


def teacher_words(teacher: str) -> str:
    """A distillation teacher in words: a model file (or shipped name) and what its card says of it."""
    from moodlens.engine.classify import model_file

    path = model_file(teacher)
    card = path.with_suffix(".json")
    if not card.exists():
        return f"{path.name} (no card beside it)"
    info = json.loads(card.read_text())
    flip = ", averaged over each face and its mirror image" if info.get("flip_tta") else ""
    acc = info.get("metrics", {}).get("PublicTest_fer2013", {}).get("accuracy")
    measured = f"; {acc:.1%} on PublicTest's FER2013 labels" if acc is not None else ""
    return f"{path.parent.name}/{path.name} ({info['architecture']['name']}{flip}{measured})"


def depth_words(run_cfg: dict) -> str:
    """", 2/3/3/3 convolutions per stage" for a run that set --depth, else nothing."""
    depth = run_cfg.get("depth")
    return f", {'/'.join(map(str, depth))} convolutions per stage" if depth else ""


FACEAPI_ORIGIN = (
    "Starts from face-api.js's FaceExpressionNet (Vincent Muehler's face-api.js, as packaged by "
    "@vladmandic/face-api 1.7.15, MIT license, models/LICENSE-faceapi; depthwise-separable dense blocks, "
    "112x112 RGB input, 7 classes), ported to Keras (moodlens.training.faceapi). Its own training data is not "
    "documented beyond public and web face images; it may include FER2013 and photos from the face-api.js and "
    "Human repositories (photos-dev figures are also given without those).")


def init_source(path: str) -> str:
    """What a run started from: a shipped file (whose card's stages come before the run's) or a checkpoint."""
    if shipped_card(path) is not None:
        return f"the {Path(path).name} shipped before it (the stage before; its int8 weights recovered into Keras)"
    return f"{Path(path).parent.name}/{Path(path).name} (a run with its own config.json beside it)"


def build_card(*, classes, trained, head, head_choice: dict, cols: list[int], out: Path, quantize: str,
               flip_tta: bool, parameters: int, calibration: dict, uncertain_below: float, metrics: dict,
               max_diff: float, run_cfg: dict, split: str, speed: dict, components: list | None = None,
               inputs: list | None = None, ferplus_share: float | None = None) -> dict:
    """The model card `moodlens export` writes, from what it measured. `components`: the nets of a fused file
    (export.fuse_component); `inputs`: its input crops as [size, size, channels]; `ferplus_share`: the FER+
    head's weight in a blend of both heads, when one was given."""
    stages = training_stages(run_cfg, trained.name, split)
    description = stages[-1]
    if components:
        description = "A fusion (weighted geometric mean of the restricted probabilities, then calibration) of " \
            f"{len(components)} nets: " + " ".join(
                f"({i + 1}) {c['checkpoint']}, weight {c['weight']:g}, input {'x'.join(map(str, c['input']))}: "
                f"{c['training'] or 'no run config beside it.'}" for i, c in enumerate(components))
    measured = "; ".join(f"{h}: " + ", ".join(f"{k} {v:.2%}" for k, v in m.items()) for h, m in head_choice.items())
    if head == "both":
        weights = "" if ferplus_share is None else \
            f", weighted {1 - ferplus_share:g} FER2013 head / {ferplus_share:g} FER+ head"
        description += (" This file blends both heads (the geometric mean of their probabilities restricted to "
                        f"{', '.join(classes.classes)}{weights}; one trunk, the cost of one head); on {split}: "
                        f"{measured}.")
    elif head is not None:
        description += (f" This file is the {head} head" + (
            f", chosen over the other by the mean of its FER2013- and FER+-label accuracy on {split}: {measured}"
            if len(classes) == 4 and head_choice else "") + ".")
    if tuple(trained.classes) != tuple(classes.classes):
        description += (f" Its {len(trained)} outputs are restricted to {', '.join(classes.classes)} "
                        "(softmax over those logits).")
    stages = [*stages[:-1], description]
    return {
        "name": f"moodlens {out.stem}",
        "summary": f"A {len(classes)}-class facial-expression classifier ({', '.join(classes.classes)}) for "
                   f"aligned face crops ({input_words(inputs)}), small enough to run in about a millisecond or two "
                   "on one CPU core.",
        "classes": list(classes.classes),
        "input": input_card(inputs),
        "output": "(N, C) calibrated class probabilities, rows sum to 1",
        "file": out.name, "file_bytes": out.stat().st_size, "quantization": quantize, "flip_tta": flip_tta,
        "architecture": {"name": "fusion of " + " and ".join(
                             f"face-api.js FaceExpressionNet ({'published' if c.get('published') else 'fine-tuned'})"
                             if c["input"] == [112, 112, 3]
                             else "4-stage VGG-style CNN" for c in components) if components
                         else "4-stage VGG-style CNN with batch norm, global average pooling"
                         + depth_words(run_cfg),
                         "components": components or [],
                         "parameters": parameters, "head": head, "head_choice": head_choice,
                         "trained_classes": list(trained.classes),
                         "output_columns": cols},
        "temperature": calibration["temperature"], "calibration": calibration,
        "uncertain_below": uncertain_below,
        "metrics": metrics,
        "export_check": {"max_abs_diff_vs_keras": max_diff},
        "speed": speed,
        "training": {"description": stages_words(stages), "stages": stages, "config": run_cfg},
        "data_terms": DATA_TERMS,
        "intended_use": INTENDED_USE,
        "limitations": limitations(inputs),
        "face_detector": ("BlazeFace short range (Google MediaPipe, Apache-2.0) and YuNet (OpenCV Zoo, MIT); "
                          "see face_detection.md"),
    }


def limitations(inputs: list | None) -> list[str]:
    """The shared limitations; a file with an RGB input reads more than the 48x48 grey crop, and part of it
    was trained on data nobody documented."""
    if not any(s[2] == 3 for s in inputs or []):
        return LIMITATIONS
    crops = input_words(inputs)
    return [RGB_LIMITATION.format(crops=crops) if x.startswith("48x48 grayscale input") else x
            for x in LIMITATIONS] + [UNDOCUMENTED_DATA]


RGB_LIMITATION = ("Input {crops} crops of each face: glasses, masks, hands, profile views, strong lighting and "
                  "motion blur lower accuracy. Faces smaller than about 24 pixels are not reliably detected.")
UNDOCUMENTED_DATA = ("Part of this file is face-api.js's expression net, whose training data is not documented: "
                     "its biases are unknown, and it may have seen FER2013 and some of the photos it is measured on.")


def input_words(inputs: list | None) -> str:
    return " and ".join(f"{s[0]}x{s[1]} {'grayscale' if s[2] == 1 else 'RGB'}" for s in (inputs or [[48, 48, 1]]))


def input_card(inputs: list | None) -> dict:
    """The card's "input": the classic single 48x48 grey input, or every crop of a multi-input file."""
    inputs = inputs or [[48, 48, 1]]
    how = ("faces rotated upright by the eye line and cropped square around the face as moodlens.engine.align "
           "does, one crop per input from the same detection; pixel scaling is inside the model")
    if inputs == [[48, 48, 1]]:
        return {"shape": [None, 48, 48, 1], "dtype": "float32", "channels": "grayscale", "range": "0..255",
                "description": f"(N, 48, 48, 1) float32 grayscale pixel values 0..255; {how}"}
    return {"shapes": [[None, *s] for s in inputs], "dtype": "float32", "range": "0..255",
            "description": f"{len(inputs)} inputs, " + ", ".join(
                f"(N, {s[0]}, {s[1]}, {s[2]}) {'grayscale' if s[2] == 1 else 'RGB'}" for s in inputs) + f"; {how}"}


def write_card(card: dict, json_path: Path) -> tuple[Path, Path]:
    """Write `card` as JSON and as Markdown beside it."""
    json_path.write_text(json.dumps(card, indent=1) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(card_markdown(card))
    return json_path, md_path


def _metric_rows(metrics: dict) -> list[str]:
    rows = ["| split | labels | n | accuracy | macro-F1 | recall per class |", "|---|---|---|---|---|---|"]
    for m in metrics.values():
        recall = ", ".join(f"{c} {v['recall']:.2f}" for c, v in m.get("per_class", {}).items())
        rows.append(f"| {m['split']} | {m['labels']} | {m['n']} | {m['accuracy']:.2%} | {m['macro_f1']:.3f} "
                    f"| {recall} |")
    return rows


def _calibration_line(cal: dict) -> str:
    if "scale" in cal:
        return (f"Scores are calibrated by vector scaling (a scale and a bias per class, fitted on "
                f"{cal.get('fitted_on', 'PublicTest')}): NLL {cal.get('nll_before')} -> {cal.get('nll_after')}, "
                f"ECE {cal.get('ece_before')} -> {cal.get('ece_after')} (a single temperature, T = "
                f"{cal.get('temperature')}, gives ECE {cal.get('ece_temperature')}).")
    return (f"Scores are temperature-scaled (T = {cal.get('temperature')}) on {cal.get('fitted_on', 'PublicTest')}: "
            f"NLL {cal.get('nll_before')} -> {cal.get('nll_after')}, "
            f"ECE {cal.get('ece_before')} -> {cal.get('ece_after')}.")


def training_lines(training: dict) -> list[str]:
    stages = training.get("stages") or [training["description"]]
    if len(stages) == 1:
        return stages
    return [stages_intro(stages), "", *[f"{i}. {stage}" for i, stage in enumerate(stages, start=1)]]


def card_markdown(card: dict) -> str:
    """The card as readable Markdown."""
    cal = card.get("calibration", {})
    weights = "int8 (dynamic-range)" if card.get("quantization") == "dynamic" else "float32"
    lines = [
        f"# Model card: {card['name']}",
        "",
        card.get("summary", ""),
        "",
        "## Classes",
        ", ".join(card["classes"]),
        "",
        "## Input and output",
        f"- Input: {card['input']['description']}",
        f"- Output: {card['output']}",
        f"- File: `{card['file']}` ({card['file_bytes'] / 1e6:.2f} MB, LiteRT/TFLite, weights {weights}), "
        f"{card['architecture']['parameters']:,} parameters ({card['architecture']['name']})",
        f"- Speed (LiteRT, 1 thread, {card['speed'].get('machine', '')}): "
        f"{card['speed']['ms_per_face_batch1']:.2f} ms per face at batch 1, "
        f"{card['speed']['ms_per_face_batch32']:.2f} ms per face at batch 32",
        "",
        "## Calibration",
        _calibration_line(cal) + f" A face is flagged `uncertain` when its top score is below "
        f"{card['uncertain_below']}.",
        "",
        "## Metrics (measured with `moodlens evaluate`)",
        *_metric_rows(card["metrics"]),
        "",
        "## Training",
        *training_lines(card["training"]),
        "",
        "## Data and terms",
        *[f"- **{k}**: {v}" for k, v in card["data_terms"].items()],
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Limitations",
        *[f"- {x}" for x in card["limitations"]],
        "",
    ]
    return "\n".join(lines)
