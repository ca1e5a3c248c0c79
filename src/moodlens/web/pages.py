"""The website: upload page, webcam page, model card page, API page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from moodlens.models import DATA_TERMS, INTENDED_USE, LIMITATIONS
from moodlens.web.engines import CLASS_SETS, analyzers
from moodlens.web.problems import PROBLEM_TYPES

bp = Blueprint("pages", __name__)

#: Model card keys shown in their own section, in this order; any other key is shown after them as it is.
CARD_SECTIONS: list[tuple[str, str]] = [
    ("summary", "Summary"),
    ("classes", "Classes"),
    ("input", "Input"),
    ("output", "Output"),
    ("metrics", "Metrics"),
    ("calibration", "Calibration"),
    ("uncertain_below", "Uncertain below"),
    ("training", "Training"),
    ("data_terms", "Training data and terms"),
    ("intended_use", "Intended use"),
    ("limitations", "Limitations"),
    ("architecture", "Architecture"),
    ("speed", "Speed"),
]
_NOT_SHOWN = {"name"}


@bp.app_template_filter("columns")
def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of `rows`, in first-seen order (the columns of a table of dicts)."""
    return list(dict.fromkeys(k for row in rows for k in row))


@bp.get("/")
def index() -> str:
    """Upload one or many photos (pick, drop or paste) and see each face's expression drawn on it."""
    return render_template("index.html", page="index")


@bp.get("/webcam")
def webcam() -> str:
    """Live expressions on webcam frames."""
    return render_template("webcam.html", page="webcam")


@bp.get("/model")
def model() -> str:
    """The model card in readable form."""
    classes = request.args.get("classes", "")
    if classes not in CLASS_SETS:
        classes = analyzers().default
    analyzer = analyzers().get(classes)
    shipped: dict[str, Any] = dict(getattr(analyzer, "model_card", None) or {})
    card = dict(shipped)
    card.setdefault("classes", list(analyzer.classes))
    # What is true of every moodlens model is shown even when a model ships without its card.
    for key, value in (("intended_use", INTENDED_USE), ("limitations", LIMITATIONS), ("data_terms", DATA_TERMS)):
        card.setdefault(key, value)
    known = {k for k, _ in CARD_SECTIONS} | _NOT_SHOWN
    ordered = [(title, key) for key, title in CARD_SECTIONS if key in card]
    ordered += [(key.replace("_", " ").capitalize(), key) for key in card if key not in known]
    # Numbers and flags go together in one list of facts; text, lists and tables get a section each.
    facts = [(title, card[key]) for title, key in ordered if isinstance(card[key], int | float | bool)]
    sections = [(title, key, card[key]) for title, key in ordered if not isinstance(card[key], int | float | bool)]
    return render_template(
        "model.html", page="model", card=card, has_card=bool(shipped), sections=sections, facts=facts,
        classes=classes, class_sets=CLASS_SETS)


@bp.get("/api")
def api_docs() -> str:
    """How to call the API, and what each problem type means."""
    return render_template("api.html", page="api", problems=PROBLEM_TYPES)
