"""Model cards for the shipped classifiers: a JSON file the app reads and a Markdown file people read."""

from __future__ import annotations

import json
from pathlib import Path

INTENDED_USE = (
    "Reading the facial expression (the configuration of the face) of people in ordinary photos and webcam "
    "frames, for demos, research, user-studies with consent, and aggregate analysis of photo collections."
)
LIMITATIONS = [
    "It reads facial expressions, not feelings: a smile is not happiness, a frown is not anger. Do not use it "
    "to infer anyone's emotional state, mental health, honesty, or intent, or to make decisions about people "
    "(hiring, policing, education, credit, insurance).",
    "Trained on FER2013: 48x48 grayscale web images, mostly posed or exaggerated expressions, with noisy labels "
    "(FER+ relabelled the same images; the two label sets often disagree). Expressions in the wild are subtler.",
    "FER2013's demographics are undocumented and skewed (mostly adult, light-skinned faces from image search); "
    "accuracy for children, older people, darker skin tones and non-Western expression norms is not measured "
    "and is likely lower.",
    "48x48 grayscale input: colour and fine detail are lost; glasses, masks, hands, profile views, strong "
    "lighting and motion blur lower accuracy. Faces smaller than about 24 pixels are not reliably detected.",
    "PublicTest is the validation split the model was selected on, so its figures are optimistic; 279 "
    "PublicTest images also appear in Training (see the de-duplicated figures).",
    "The 4-class model forces every face into angry, happy, neutral or sad; surprise, fear and disgust faces "
    "get one of those four. Use the `uncertain` flag.",
]
DATA_TERMS = {
    "FER2013": "Kaggle ICML 2013 'Challenges in Representation Learning' dataset (Carrier & Courville). No "
               "license is stated; research data. Cite Goodfellow et al., 2013 (arXiv:1307.0414). No image "
               "from it is shipped with moodlens.",
    "FER+": "Microsoft FER+ crowd labels (fer2013new.csv), MIT License, Copyright (c) Microsoft Corporation. "
            "Cite Barsoum et al., ICMI 2016 (arXiv:1608.01041).",
}


def write_card(card: dict, json_path: Path) -> tuple[Path, Path]:
    """Write `card` as JSON and as Markdown beside it."""
    json_path.write_text(json.dumps(card, indent=1) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(card_markdown(card))
    return json_path, md_path


def _metric_rows(metrics: dict) -> list[str]:
    rows = ["| split | labels | n | accuracy | macro-F1 |", "|---|---|---|---|---|"]
    for m in metrics.values():
        rows.append(f"| {m['split']} | {m['labels']} | {m['n']} | {m['accuracy']:.2%} | {m['macro_f1']:.3f} |")
    return rows


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
        f"Scores are temperature-scaled (T = {cal.get('temperature')}) on {cal.get('fitted_on', 'PublicTest')}: "
        f"NLL {cal.get('nll_before')} -> {cal.get('nll_after')}, "
        f"ECE {cal.get('ece_before')} -> {cal.get('ece_after')}. "
        f"A face is flagged `uncertain` when its top score is below {card['uncertain_below']}.",
        "",
        "## Metrics (measured with `moodlens evaluate`)",
        *_metric_rows(card["metrics"]),
        "",
        "## Training",
        card["training"]["description"],
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
