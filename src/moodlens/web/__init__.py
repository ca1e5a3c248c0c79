"""The moodlens website and JSON API, as a Flask app factory.

    >>> from moodlens.web import create_app
    >>> app = create_app({"MOODLENS_CLASSES": "7"})

Models are loaded once, here, when the app is created (never per request); `moodlens serve` creates the app
in the gunicorn master so every worker shares the loaded models. Uploaded photos stay in memory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from flask import Flask

from moodlens import __version__
from moodlens.web.engines import AnalyzerPool
from moodlens.web.uploads import InMemoryRequest

#: Every setting the app reads, with its default. Pass overrides to `create_app(config)`.
DEFAULTS: dict[str, Any] = {
    "MOODLENS_CLASSES": "4",  # class set used when a request does not say ("4" or "7")
    "MOODLENS_MODEL_PATH": None,  # a .tflite file for the default class set (None: the shipped model)
    "MOODLENS_DETECTOR": "auto",
    "MOODLENS_MIN_FACE_SCORE": 0.5,  # faces the detector scored lower are left out (a request may raise it)
    "MOODLENS_PRELOAD": None,  # class sets loaded at start-up (None: only the default; others on first use)
    "MOODLENS_RATE_LIMIT": 20.0,  # API requests per second per client (0 or None: no limit)
    "MOODLENS_RATE_BURST": 40,  # requests a client may make at once before the rate applies
    "MOODLENS_PROXIES": 0,  # reverse proxies in front of the app whose X-Forwarded-* headers are trusted
    # ...when the request comes from one of these addresses or networks (the nearest proxy); from others not
    "MOODLENS_TRUSTED_PROXIES": ("127.0.0.0/8", "::1"),
    "MOODLENS_CORS_ORIGIN": None,  # one origin ("https://example.org") whose pages may call the API (None: none)
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,  # bytes; larger bodies get 413 before they are read
    "MOODLENS_ANALYSIS_TIMEOUT": 20.0,  # seconds one analysis may take, then 503 + Retry-After; 0: no limit
    "MOODLENS_BODY_TIMEOUT": 60.0,  # seconds a body may take to arrive under gunicorn (then 408); 0: no limit
    "MAX_FORM_MEMORY_SIZE": 500_000,  # bytes of a text field in a form (keep over Werkzeug's 64 kB read size)
    "MAX_FORM_PARTS": 16,
}


def create_app(config: dict[str, Any] | None = None, analyzer: Any = None) -> Flask:
    """Build the app. `analyzer`, when given, serves its own class set; other class sets load on first use."""
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(config or {})
    app.config["DEBUG"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep class order in `scores`

    if app.config["MOODLENS_PROXIES"]:
        from moodlens.web.security import TrustedProxyFix

        app.wsgi_app = TrustedProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, int(app.config["MOODLENS_PROXIES"]), app.config["MOODLENS_TRUSTED_PROXIES"])

    pool = AnalyzerPool(
        default=str(app.config["MOODLENS_CLASSES"]),
        model_path=app.config["MOODLENS_MODEL_PATH"],
        detector=app.config["MOODLENS_DETECTOR"],
        analyzer=analyzer,
        max_bytes=app.config["MAX_CONTENT_LENGTH"],  # the engine's own byte limit follows the upload limit
    )
    pool.load(*(app.config["MOODLENS_PRELOAD"] or ()))
    app.extensions["moodlens"] = pool

    _version_static_files(app)

    from moodlens.web import api, pages, problems, security, uploads

    problems.init_app(app)
    security.init_app(app)
    uploads.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"version": __version__, "default_classes": pool.default}

    return app


def _version_static_files(app: Flask) -> None:
    """Add `?v=<content hash>` to every `url_for("static", ...)`, so static files can be cached for a year."""
    folder = app.static_folder or ""
    versions: dict[str, str] = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            with open(path, "rb") as f:
                versions[rel] = hashlib.sha256(f.read()).hexdigest()[:12]
    app.config["MOODLENS_STATIC_VERSIONS"] = versions

    @app.url_defaults
    def _static_version(endpoint: str, values: dict[str, Any]) -> None:
        if endpoint == "static" and "filename" in values and "v" not in values:
            v = versions.get(values["filename"])
            if v:
                values["v"] = v


__all__ = ["DEFAULTS", "create_app"]
