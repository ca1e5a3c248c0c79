"""The website: upload page, webcam page, model page, API page and API docs page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from moodlens.web.engines import CLASS_SETS, MODEL_NAMES, analyzers
from moodlens.web.modelpage import readable_card
from moodlens.web.problems import PROBLEM_TYPES

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    """Upload one or many photos (pick, drop or paste) and see each face's expression drawn on it."""
    return render_template("index.html", page="index")


@bp.get("/webcam")
def webcam() -> str:
    """Live expressions on webcam frames."""
    return render_template("webcam.html", page="webcam")


#: The model page's tabs: (key, the query that picks it, its name in words)
MODEL_TABS = [(c, {"classes": c}, f"{c} classes") for c in CLASS_SETS] + [
    (name, {"model": name}, f"4 classes, for real {name}") for name in MODEL_NAMES]


@bp.get("/model")
def model() -> str:
    """The model card in words: classes, accuracy, what it is for and not for, data and terms."""
    key = request.args.get("model", "") or request.args.get("classes", "")
    if key not in CLASS_SETS + MODEL_NAMES:
        key = analyzers().default
    analyzer = analyzers().get(key)
    card: dict[str, Any] = dict(getattr(analyzer, "model_card", None) or {})
    names = [str(c) for c in card.get("classes") or analyzer.classes]
    view = readable_card(card, names, getattr(analyzer, "uncertain_below", None))
    tab = next(t for t in MODEL_TABS if t[0] == key)
    return render_template("model.html", page="model", card=view, has_card=bool(card), current=tab, tabs=MODEL_TABS)


@bp.get("/api")
def api_docs() -> str:
    """How to call the API, and what each problem type means."""
    return render_template("api.html", page="api", problems=PROBLEM_TYPES)


@bp.get("/api/docs")
def openapi_docs() -> str:
    """The OpenAPI document rendered by Swagger UI (vendored in static/, see swagger-ui.PROVENANCE.md)."""
    return render_template("api_docs.html", page="api")
