"""The JSON API, `/api/v1`: analyze a photo, health, the model card, and the OpenAPI document."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from moodlens import __version__
from moodlens.engine.errors import AnalysisTimeout, ImageError
from moodlens.web.engines import CLASS_SETS, MODEL_NAMES, analyzers
from moodlens.web.preview import decode_for_preview, preview_data_url
from moodlens.web.problems import ApiProblem
from moodlens.web.security import rate_limit
from moodlens.web.uploads import read_image

log = logging.getLogger("moodlens.web")
bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(rate_limit)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _option(name: str) -> str | None:
    """An option from the query string, else from the multipart form."""
    value = request.args.get(name)
    if value is None and request.mimetype == "multipart/form-data":
        value = request.form.get(name)
    return value


def classes_option() -> str:
    """The `classes` option ("4" or "7"), the app's default when absent."""
    value = _option("classes")
    if value is None or value == "":
        return analyzers().default
    if value not in CLASS_SETS:
        raise ApiProblem(400, "bad-option", f"`classes` must be 4 or 7, not {value[:20]!r}.")
    return value


def model_option() -> str:
    """Which analyzer answers: the `model` option (a shipped model's name, "photos"), else the class set
    (classes_option). A `classes` the named model does not read is refused rather than ignored."""
    name = _option("model")
    if name is None or name == "":
        return classes_option()
    if name not in MODEL_NAMES:
        names = " or ".join(MODEL_NAMES)
        raise ApiProblem(400, "bad-option", f"`model` must be {names} (or empty: the default), not {name[:20]!r}.")
    asked = _option("classes")
    n = str(len(analyzers().get(name).classes))
    if asked and asked != n:
        raise ApiProblem(400, "bad-option", f"The {name} model reads {n} classes: give `classes={n}` or leave "
                                            "`classes` out.")
    return name


def bool_option(name: str) -> bool:
    """A 0/1 option (also true/false, yes/no, on/off); False when absent."""
    value = _option(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ApiProblem(400, "bad-option", f"`{name}` must be 0 or 1, not {value[:20]!r}.")


def score_option(name: str = "min_face_score") -> float:
    """A 0..1 number option; the app's MOODLENS_MIN_FACE_SCORE when absent or empty."""
    value = _option(name)
    if value is None or value == "":
        return float(current_app.config["MOODLENS_MIN_FACE_SCORE"])
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 <= number <= 1:
        raise ApiProblem(400, "bad-option", f"`{name}` must be a number from 0 to 1, not {value[:20]!r}.")
    return number


@bp.post("/analyze")
def analyze() -> Response:
    """Find the faces in one photo and read each one's expression."""
    key = model_option()
    explain = bool_option("explain")
    min_face_score = score_option()
    preview = bool_option("preview")
    data = read_image()
    analyzer = analyzers().get(key)
    start = time.perf_counter()
    if preview:  # decoded once: analysed, and sent back for a page whose browser cannot show the file (TIFF)
        data = decode_for_preview(data, analyzer)
    try:
        result = analyzer.analyze(data, explain=explain, min_face_score=min_face_score,
                                  time_limit=current_app.config.get("MOODLENS_ANALYSIS_TIMEOUT") or None)
    except (ImageError, HTTPException, AnalysisTimeout):
        raise
    except Exception:
        _check_engine(analyzer)  # the photo's fault, or a broken engine? (a broken one fails health from now on)
        raise
    elapsed_ms = (time.perf_counter() - start) * 1000
    body = result.to_dict()
    if preview:
        body["preview"] = preview_data_url(data)
    threshold = getattr(analyzer, "uncertain_below", None)
    if threshold is not None:
        body["uncertain_below"] = float(threshold)  # a face is `uncertain` when its top score is under this
    resp = jsonify(body)
    resp.headers["Server-Timing"] = f"analyze;dur={elapsed_ms:.1f}"
    return resp


def _check_engine(analyzer: Any) -> None:
    """After an unexpected error: run the classifier's self-test (a blank face), which sets its `failure` when
    the engine itself no longer works, so that health stops saying ok."""
    test = getattr(getattr(analyzer, "classifier", None), "self_test", None)
    if test is None:
        return
    try:
        test()
    except Exception:  # ModelError, or worse: either way `failure` says what, and health reports it
        log.error("the engine failed its self-test after an error: %s",
                  getattr(analyzer.classifier, "failure", None) or "unknown")


def engine_failures() -> list[str]:
    """The loaded class sets whose engine failed its last self-test (why is in the server log, not here: it names
    server paths)."""
    pool = analyzers()
    return [c for c in pool.loaded if getattr(getattr(pool.get(c), "classifier", None), "failure", None)]


@bp.get("/health")
def health() -> Response:
    """Liveness and readiness: the app is up, its models are loaded, and their engine passed its last self-test
    (503 with `status: "error"` once it failed: a broken engine must not look healthy while analyze fails)."""
    pool = analyzers()
    failures = engine_failures()
    resp = jsonify(status="error" if failures else "ok", version=__version__, default_classes=pool.default,
                   loaded=pool.loaded, **({"failed": failures} if failures else {}))
    if failures:
        resp.status_code = 503
    return resp


@bp.get("/model")
def model() -> Response:
    """The model card of the `model` or `classes` model (default: the app's)."""
    analyzer = analyzers().get(model_option())
    card = dict(getattr(analyzer, "model_card", None) or {})
    card.setdefault("classes", list(analyzer.classes))
    return jsonify(card)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    from moodlens.web.openapi import openapi_document

    doc = current_app.extensions.get("moodlens.openapi")
    if doc is None:
        doc = current_app.extensions["moodlens.openapi"] = openapi_document(current_app)
    return jsonify(doc)
