"""Errors as RFC 9457 problem details (`application/problem+json`) on the API, as a plain page elsewhere.

Every problem has a `type` that points at its entry on the API page (`/api#<slug>`), a `title` that is the
same for every problem of that type, the HTTP `status`, and a `detail` that says what to do. Bad input never
gives a 500, and no response ever carries a stack trace.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, json, render_template, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from moodlens.engine.errors import (
    AnalysisTimeout,
    ImageError,
    ImageTooComplexError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    TruncatedImageError,
)

log = logging.getLogger("moodlens.web")

MEDIA_TYPE = "application/problem+json"

#: slug -> (status, title). The API page lists them; openapi.py documents them.
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "missing-image": (400, "No photo in the request"),
    "several-images": (400, "More than one photo in the request"),
    "empty-image": (400, "The photo is empty"),
    "bad-option": (400, "Invalid option"),
    "bad-request": (400, "Malformed request"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "request-timeout": (408, "Request body too slow"),
    "too-large": (413, "Photo too large"),
    "not-an-image": (415, "Not an image"),
    "unsupported-media-type": (415, "Unsupported Content-Type"),
    "truncated-image": (422, "Truncated or corrupt image"),
    "image-too-small": (422, "Image too small"),
    "too-complex": (422, "Image too costly to decode"),
    "unusable-image": (422, "Unusable image"),
    "rate-limited": (429, "Too many requests"),
    "analysis-timeout": (503, "Analysis took too long"),
    "internal-error": (500, "Internal error"),
    "unavailable": (503, "Service unavailable"),
}

RETRY_AFTER_TIMEOUT = 10  # seconds, in the Retry-After of an analysis-timeout answer

_IMAGE_ERRORS: list[tuple[type[ImageError], str]] = [
    (NotAnImageError, "not-an-image"),
    (TruncatedImageError, "truncated-image"),
    (ImageTooLargeError, "too-large"),
    (ImageTooSmallError, "image-too-small"),
    (ImageTooComplexError, "too-complex"),
]

_HTTP_SLUGS = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 408: "request-timeout",
               413: "too-large", 415: "unsupported-media-type", 429: "rate-limited", 503: "unavailable"}


class ApiProblem(Exception):
    """Raise to answer with a problem: `ApiProblem(400, "bad-option", "classes must be 4 or 7")`."""

    def __init__(
        self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **extensions: Any
) -> Response:
    """A `application/problem+json` response."""
    title = PROBLEM_TYPES[slug][1] if slug in PROBLEM_TYPES else HTTPStatus(status).phrase
    body = {"type": f"/api#{slug}", "title": title, "status": status, "detail": detail,
            "instance": request.path, **extensions}
    return Response(json.dumps(body), status=status, mimetype=MEDIA_TYPE, headers=headers)


def _wants_problem() -> bool:
    """Problems on the API; HTML for pages unless the client asks for JSON."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json", MEDIA_TYPE])
    return best in ("application/json", MEDIA_TYPE)


def _answer(status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **ext: Any):
    if _wants_problem():
        return problem_response(status, slug, detail, headers=headers, **ext)
    title = PROBLEM_TYPES.get(slug, (status, HTTPStatus(status).phrase))[1]
    html = render_template("error.html", status=status, title=title, detail=detail)
    return Response(html, status=status, mimetype="text/html", headers=headers)


def _max_bytes_detail(app_max: int | None) -> str:
    if not app_max:
        return "The upload is too large."
    return f"The upload is over the {app_max / 1024 / 1024:.3g} MB limit; send a smaller photo."


def init_app(app: Flask) -> None:
    """Register the error handlers."""

    @app.errorhandler(ApiProblem)
    def _api_problem(exc: ApiProblem):
        return _answer(exc.status, exc.slug, exc.detail, headers=exc.headers, **exc.extensions)

    @app.errorhandler(AnalysisTimeout)
    def _analysis_timeout(exc: AnalysisTimeout):
        # the server is fine and the photo may be too: another try, when it is less busy, may get through
        return _answer(503, "analysis-timeout", str(exc), headers={"Retry-After": str(RETRY_AFTER_TIMEOUT)},
                       time_limit_s=exc.seconds)

    @app.errorhandler(ImageError)
    def _image_error(exc: ImageError):
        slug = next((s for cls, s in _IMAGE_ERRORS if isinstance(exc, cls)), "unusable-image")
        status = int(getattr(exc, "status", 422))
        if exc.__cause__ is not None:  # the decoder's own words: for the server log, never for the client
            log.info("%s on %s %s: %s: %s", slug, request.method, request.path, type(exc.__cause__).__name__,
                     " ".join(str(exc.__cause__).split())[:300])
        return _answer(status, slug, str(exc) or PROBLEM_TYPES[slug][1])

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        slug = _HTTP_SLUGS.get(status, "bad-request" if status < 500 else "internal-error")
        headers: dict[str, str] = {}
        detail = exc.description or HTTPStatus(status).description
        ext: dict[str, Any] = {}
        if isinstance(exc, RequestEntityTooLarge):
            max_bytes = app.config.get("MAX_CONTENT_LENGTH")
            detail = _max_bytes_detail(max_bytes)
            if max_bytes and request.content_length and request.content_length <= max_bytes:
                detail = "A text field of the form is too large, or the form has too many parts."
            if max_bytes:
                ext["max_bytes"] = int(max_bytes)
        elif isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
            usable = [m for m in exc.valid_methods if m not in ("HEAD", "OPTIONS")]
            detail = f"{request.method} is not allowed here; use {' or '.join(usable)}."
        elif status == 404:
            detail = f"Nothing at {request.path}."
        return _answer(status, slug, detail, headers=headers, **ext)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _answer(500, "internal-error", "Something went wrong on the server; it has been logged.")
