"""The model page's content: a model card (the JSON `/api/v1/model` serves) turned into plain sentences and tables.

Everything shown comes from the card; what a card lacks is left out (or, for what is true of every moodlens model,
taken from moodlens.models). No JSON key, file path or developer command reaches the page.
"""

from __future__ import annotations

import re
from typing import Any

from moodlens.models import DATA_TERMS, INTENDED_USE, LIMITATIONS

#: How the card's label sets read in words, long (in the accuracy table) and short.
LABEL_SETS = {
    "FER2013": "the original FER2013 labels (one per photo)",
    "FER+ majority": "the FER+ labels (the majority vote of ten people per photo)",
    "photo labels": "the expression a person labelled each photo with",
}
LABEL_SETS_SHORT = {"FER2013": "original FER2013 labels", "FER+ majority": "FER+ majority labels"}


def pct(p: float, digits: int = 1) -> str:
    """0.7124 -> "71.2%"."""
    return f"{100 * float(p):.{digits}f}%"


def plain(text: str) -> str:
    """Card text for people: no `code` marks, no "see some-file.md" pointers, no paths."""
    text = re.sub(r";?\s*\(?see [\w./-]+\.(md|json|txt)\)?", "", str(text))
    text = re.sub(r"\s*\([\w./-]+\.(csv|json|md|txt|gz)\)", "", text)
    return text.replace("`", "").strip()


def real_photos(split: str) -> bool:
    """Whether a card's metric was measured on real photos (export.photo_metrics), not a FER2013 split."""
    return "(real photos" in str(split)


def split_name(split: str) -> str:
    """ "PublicTest" -> "FER2013 PublicTest split"; "PublicTest, without Training duplicates" -> in words; a set of
    real photos ("photos-dev (real photos, end to end, ...)", export.photo_metrics) -> in words."""
    if real_photos(split):
        name, _, rest = str(split).partition(" (real photos, end to end")
        return f"Real photos ({name}), read by the whole engine from the photo" + rest.rstrip(")")
    base, _, rest = str(split).partition(",")
    name = f"FER2013 {base.strip()} split"
    if "duplicate" in rest:
        name += ", without the photos that also appear in the Training split"
    elif rest.strip():
        name += f", {rest.strip()}"
    return name


def _accuracy_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for m in metrics.values():
        if not isinstance(m, dict) or "accuracy" not in m:
            continue
        labels = str(m.get("labels", ""))
        rows.append({
            "test": split_name(m.get("split", "a held-out split")),
            "labels": LABEL_SETS.get(labels, labels.replace("_", " ")),
            "faces": f"{int(m['n']):,}" if "n" in m else "",
            "accuracy": pct(m["accuracy"]),
        })
    return rows


def _recall_rows(metrics: dict[str, Any], classes: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """Per-class recall of the first metric with per-class figures: (what it was measured on, [(class, %)])."""
    for m in metrics.values():
        per_class = m.get("per_class") if isinstance(m, dict) else None
        if per_class:
            labels = str(m.get("labels", ""))
            where = f"{split_name(m.get('split', ''))}, {LABEL_SETS_SHORT.get(labels, labels)}"
            rows = [(c, pct(per_class[c]["recall"], 0)) for c in classes if "recall" in per_class.get(c, {})]
            return where, rows
    return "", []


def _calibration(card: dict[str, Any]) -> str:
    cal = card.get("calibration")
    if not isinstance(cal, dict):
        return ""
    fitted = str(cal.get("fitted_on", "")).split(",")[0].strip()
    where = f"the {split_name(fitted)}" if fitted else "a held-out split"
    text = (f"The percentages are calibrated: they were adjusted on {where} so that, there, faces given 70% were "
            f"read right about 70% of the time")
    if "ece_after" in cal:
        text += f" (on average within {100 * float(cal['ece_after']):.1f} percentage points)"
    return text + "."


def _made(card: dict[str, Any], classes: list[str]) -> list[str]:
    """How the model was made, in a few sentences."""
    out = []
    arch = card.get("architecture") if isinstance(card.get("architecture"), dict) else {}
    params = arch.get("parameters")
    if arch.get("name"):
        size = f" with {params / 1e6:.1f} million parameters" if params else ""
        out.append(f"A small convolutional network ({plain(arch['name'])}){size}.")
    config = (card.get("training") or {}).get("config") or {}
    if config:
        epochs = config.get("epochs")
        split = config.get("train_split", "Training")
        val = config.get("val_split")
        how = "Fine-tuned from an earlier moodlens model" if config.get("init_from") else "Trained from scratch"
        text = f"{how} on the FER2013 {split} split"
        text += f" for {epochs} epochs" if epochs else ""
        text += f"; the best checkpoint was chosen on the {val} split" if val else ""
        out.append(text + ".")
    trained = arch.get("trained_classes")
    if trained and list(trained) != list(classes):
        out.append(f"It is the {len(trained)}-class network ({', '.join(trained)}) with its answer restricted to "
                   f"{', '.join(classes[:-1])} and {classes[-1]}.")
    if card.get("quantization") in ("dynamic", "int8"):
        out.append("Its weights are stored as 8-bit integers.")
    if card.get("file_bytes"):
        out.append(f"The model file is {card['file_bytes'] / 1e6:.1f} MB and ships inside moodlens: nothing is "
                   "downloaded and no photo leaves this server.")
    speed = card.get("speed") if isinstance(card.get("speed"), dict) else {}
    if speed.get("ms_per_face_batch1"):
        out.append(f"Reading one face takes about {float(speed['ms_per_face_batch1']):.1f} ms on one CPU core.")
    if card.get("face_detector"):
        out.append(f"Faces are found first by a separate detector: {plain(card['face_detector'])}.")
    return out


def _other_model(text: str, classes: list[str]) -> bool:
    """A limitation about "the N-class model" shown for a model with another number of classes."""
    found = re.match(r"The (\d+)-class model", text)
    return bool(found) and int(found.group(1)) != len(classes)


def readable_card(card: dict[str, Any], classes: list[str], uncertain_below: float | None) -> dict[str, Any]:
    """What the model page shows, from `card` (possibly empty: a model shipped without its card)."""
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    recall_where, recall = _recall_rows(metrics, classes)
    threshold = card.get("uncertain_below", uncertain_below)
    terms = card.get("data_terms") if isinstance(card.get("data_terms"), dict) else DATA_TERMS
    limitations = [str(x) for x in card.get("limitations") or LIMITATIONS]
    not_for = next((x for x in limitations if "feelings" in x), LIMITATIONS[0])
    return {
        "summary": plain(card["summary"]) if card.get("summary") else "",
        "classes": classes,
        "accuracy": _accuracy_rows(metrics),
        "real_photos": any(real_photos(m.get("split", "")) for m in metrics.values() if isinstance(m, dict)),
        "recall_where": recall_where,
        "recall": recall,
        "uncertain": (f"A face is marked uncertain when its most likely expression scores under {pct(threshold, 0)}: "
                      "the model is then close to guessing between two or more expressions."
                      if threshold is not None else ""),
        "calibration": _calibration(card),
        "intended_use": plain(card.get("intended_use") or INTENDED_USE),
        "not_for": plain(not_for),
        "limitations": [plain(x) for x in limitations if x != not_for and not _other_model(x, classes)],
        "data_terms": [(name, plain(text)) for name, text in terms.items()],
        "made": _made(card, classes),
    }
