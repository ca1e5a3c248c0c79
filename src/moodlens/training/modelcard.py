"""Model cards for the shipped classifiers: a JSON file the app reads and a Markdown file people read."""

from __future__ import annotations

import json
from pathlib import Path


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
