"""The OpenAPI 3.1 document of `/api/v1`, built from the app's real settings (limits, defaults, problems).

The tests check it is a valid OpenAPI 3.1 document, that its paths are exactly the API's routes, and that
real responses validate against its schemas.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from moodlens import __version__
from moodlens.web.engines import CLASS_SETS
from moodlens.web.problems import MEDIA_TYPE, PROBLEM_TYPES

#: What the API accepts, exactly (schemathesis checks that anything else is refused): `classes` 4 or 7, empty
#: for the default; `explain` a boolean word in any case (moodlens.web.api.bool_option), empty for false.
CLASSES_SCHEMA: dict[str, Any] = {"type": "string", "enum": [*CLASS_SETS, ""]}
EXPLAIN_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^(|[01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff])$",
    "examples": ["0", "1"],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {MEDIA_TYPE: {"schema": _ref("Problem")}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _slugs(status: int) -> str:
    return ", ".join(f"`{s}`" for s, (st, _t) in PROBLEM_TYPES.items() if st == status)


SCHEMAS: dict[str, Any] = {
    "AnalysisResult": {
        "type": "object",
        "required": ["width", "height", "classes", "faces", "timings_ms"],
        "properties": {
            "width": {"type": "integer", "minimum": 1, "description": "Image width in pixels (after EXIF rotation)."},
            "height": {"type": "integer", "minimum": 1},
            "classes": {"type": "array", "items": {"type": "string"}, "description": "The model's classes, in order."},
            "faces": {"type": "array", "items": _ref("Face"), "description": "Empty when no face was found."},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"},
                           "description": "Milliseconds spent in each stage."},
        },
    },
    "Face": {
        "type": "object",
        "required": ["box", "score", "keypoints", "expression", "scores", "uncertain", "quality"],
        "properties": {
            "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                    "description": "[x, y, width, height] in image pixels, from the top-left corner."},
            "score": {"type": "number", "minimum": 0, "maximum": 1, "description": "Face detector confidence."},
            "keypoints": {"type": "array",
                          "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                          "description": "The detector's landmarks (x, y): BlazeFace gives right eye, left eye, "
                                         "nose tip, mouth, right ear, left ear; YuNet right eye, left eye, nose "
                                         "tip, right and left mouth corners."},
            "expression": {"type": "string", "description": "The most probable class."},
            "scores": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                       "description": "Calibrated probability of every class; they sum to 1."},
            "uncertain": {"type": "boolean", "description": "True when the top score is below the model's threshold."},
            "quality": {"type": "string", "enum": ["ok", "small", "blurred", "profile"],
                        "description": "ok, or why the face reads poorly: under 40 px, blurred, or turned away."},
            "heatmap": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                        "description": "With explain=1: a grid of 0..1 over the face box, top row "
                                       "first; how much hiding each region lowers the top class's score."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "default_classes", "loaded"],
        "properties": {
            "status": {"const": "ok"},
            "version": {"type": "string"},
            "default_classes": {"type": "string", "enum": list(CLASS_SETS)},
            "loaded": {"type": "array", "items": {"type": "string", "enum": list(CLASS_SETS)},
                       "description": "Class sets whose model is loaded."},
        },
    },
    "ModelCard": {
        "type": "object",
        "required": ["classes"],
        "additionalProperties": True,
        "description": "The model card: name, classes, input, output, metrics, training, data_terms, "
                       "intended_use, limitations... Fields other than `classes` may be absent.",
        "properties": {
            "name": {"type": "string"},
            "classes": {"type": "array", "items": {"type": "string"}},
            "intended_use": {"type": "string"},
            "limitations": {"type": "array", "items": {"type": "string"}},
            "metrics": {"type": "object"},
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference",
                     "enum": [f"/api#{s}" for s in PROBLEM_TYPES]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri-reference"},
            "max_bytes": {"type": "integer", "description": "On 413: the upload limit in bytes."},
            "retry_after": {"type": "integer", "description": "On 429: seconds to wait."},
        },
    },
}


def openapi_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `app`'s API."""
    max_bytes = app.config.get("MAX_CONTENT_LENGTH")
    rate = app.config.get("MOODLENS_RATE_LIMIT")
    default = app.extensions["moodlens"].default
    classes = {"name": "classes", "in": "query", "required": False,
               "description": f"Class set: 4 (angry, happy, neutral, sad) or 7 (FER2013's). Default {default} "
                              "(also when empty).",
               "schema": CLASSES_SCHEMA | {"default": default}}
    explain = {"name": "explain", "in": "query", "required": False,
               "description": "1: add a heatmap per face (slower). Also true/false, yes/no, on/off, any case; "
                              "empty means 0.",
               "schema": EXPLAIN_SCHEMA | {"default": "0"}}
    floor = app.config.get("MOODLENS_MIN_FACE_SCORE", 0.5)
    min_score = {"name": "min_face_score", "in": "query", "required": False,
                 "description": f"Leave out faces the detector scored under this (0..1). Default {floor}; values "
                                "under 0.5 act as 0.5.",
                 "schema": {"type": "string", "pattern": r"^(0(\.\d+)?|1(\.0+)?)?$", "default": str(floor)}}
    limits = f"Bodies over {max_bytes} bytes get 413 before they are read. " if max_bytes else ""
    if rate:
        limits += f"At most {rate:g} requests per second per client (429 with Retry-After when over). "
    rate_limited = {"429": _problem("Too many requests; wait Retry-After seconds.")} if rate else {}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "moodlens API",
            "version": __version__,
            "summary": "Find the faces in a photo and read their facial expressions.",
            "description": "Reads facial *expressions* (what a face shows), not feelings. Photos are processed "
                           "in memory and never stored. " + limits,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/analyze": {
                "post": {
                    "operationId": "analyze",
                    "summary": "Find faces and read their expressions",
                    "description": "Send one photo (JPEG, PNG, WebP, GIF, BMP, HEIC) as the multipart field "
                                   "`image`, or as the raw body with an image/* Content-Type. Options go in the "
                                   "query string (or, with multipart, as form fields).",
                    "parameters": [classes, explain, min_score],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {"type": "string", "contentMediaType": "application/octet-stream",
                                                  "description": "The photo, one file."},
                                        "classes": CLASSES_SCHEMA,
                                        "explain": EXPLAIN_SCHEMA,
                                        "min_face_score": {"type": "string"},
                                    },
                                },
                            },
                            "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
                        },
                    },
                    "responses": {
                        "200": _json("The faces found (possibly none) and their expressions.", "AnalysisResult"),
                        "400": _problem(f"Malformed request: {_slugs(400)}."),
                        "408": _problem("The body took longer than the server's body timeout to arrive."),
                        "413": _problem("The body is over the upload limit, or the image over the pixel limit."),
                        "415": _problem(f"Not an image, or a Content-Type the API does not take: {_slugs(415)}."),
                        "422": _problem(f"An image that cannot be used: {_slugs(422)}."),
                        **rate_limited,
                    },
                },
            },
            "/api/v1/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness check (never rate-limited)",
                    "responses": {"200": _json("The server is up and its default model loaded.", "Health")},
                },
            },
            "/api/v1/model": {
                "get": {
                    "operationId": "model",
                    "summary": "The model card",
                    "parameters": [classes],
                    "responses": {
                        "200": _json("The model card of the chosen class set.", "ModelCard"),
                        "400": _problem("Invalid `classes`."),
                        **rate_limited,
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **rate_limited},
                },
            },
        },
        "components": {"schemas": SCHEMAS},
    }
