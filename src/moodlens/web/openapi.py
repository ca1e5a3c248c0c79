"""The OpenAPI 3.1 document of `/api/v1`, built from the app's real settings (limits, defaults, problems).

The tests check it is a valid OpenAPI 3.1 document, that its paths are exactly the API's routes, and that
real responses validate against its schemas.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from moodlens import __version__
from moodlens.engine.analyzer import MAX_EXPLAIN_FACES
from moodlens.engine.decode import CORRUPT, NOT_AN_IMAGE
from moodlens.web.engines import CLASS_SETS, MODEL_NAMES
from moodlens.web.problems import MEDIA_TYPE, PROBLEM_TYPES

#: What the API accepts, exactly (schemathesis checks that anything else is refused): `classes` 4 or 7, empty
#: for the default; `model` a shipped alternative's name ("photos"), empty for the class set's model; `explain` a
#: boolean word in any case (moodlens.web.api.bool_option), empty for false.
CLASSES_SCHEMA: dict[str, Any] = {"type": "string", "enum": [*CLASS_SETS, ""]}
MODEL_SCHEMA: dict[str, Any] = {"type": "string", "enum": [*MODEL_NAMES, ""]}
#: What /api/v1/health lists as loaded or failed: class sets and model names
LOADED_SCHEMA: dict[str, Any] = {"type": "string", "enum": [*CLASS_SETS, *MODEL_NAMES]}
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
            "uncertain_below": {"type": "number", "minimum": 0, "maximum": 1,
                                "description": "The model's threshold: a face whose top score is under this is "
                                               "`uncertain`."},
            "preview": {"type": "string", "pattern": "^data:image/jpeg;base64,",
                        "description": "With preview=1: the photo as analysed (upright, longer side at most "
                                       "2048 px) as a JPEG data URL, for clients that cannot show the format sent "
                                       "(a browser and a TIFF)."},
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
            "heatmap_skipped": {"type": "string", "enum": ["face-limit"],
                                "description": "With explain=1, on a face without a heatmap: why. face-limit: only the "
                                               f"first {MAX_EXPLAIN_FACES} faces of an image (best detector score "
                                               "first) get one."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "default_classes", "loaded"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "error"]},
            "version": {"type": "string"},
            "default_classes": {"type": "string", "enum": list(CLASS_SETS)},
            "loaded": {"type": "array", "items": LOADED_SCHEMA,
                       "description": "Class sets and model names whose model is loaded."},
            "failed": {"type": "array", "items": LOADED_SCHEMA,
                       "description": "With status error: class sets whose engine failed its last self-test."},
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


#: Operation groups, in the order the docs page shows them.
TAGS: list[dict[str, str]] = [
    {"name": "analysis", "description": "Find the faces in a photo and read each one's expression."},
    {"name": "model", "description": "What the model is, how well it does and where it fails."},
    {"name": "service", "description": "Liveness and this document."},
]

#: A real answer for a 512x512 photo with one face (scikit-image's astronaut), 4 classes.
ANALYSIS_EXAMPLE: dict[str, Any] = {
    "width": 512, "height": 512,
    "classes": ["angry", "happy", "neutral", "sad"],
    "faces": [{
        "box": [173.4, 72.9, 103.0, 103.3],
        "score": 0.9323,
        "keypoints": [[204.0, 101.9], [247.7, 104.4], [224.9, 129.7], [223.6, 149.7], [180.2, 107.8],
                      [269.4, 112.8]],
        "expression": "happy",
        "scores": {"angry": 0.0188, "happy": 0.9349, "neutral": 0.0305, "sad": 0.0158},
        "uncertain": False,
        "quality": "ok",
    }],
    "timings_ms": {"decode": 1.1, "detect": 1.5, "align": 0.1, "classify": 0.3, "total": 3.0},
    "uncertain_below": 0.5,
}

CURL_EXAMPLES = """Examples:

```
curl -F image=@photo.jpg 'http://127.0.0.1:8000/api/v1/analyze?classes=7'
curl -F image=@photo.jpg -F model=photos http://127.0.0.1:8000/api/v1/analyze
curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/api/v1/analyze
```"""


def _problem_example(status: int, slug: str, detail: str, **extensions: Any) -> dict[str, Any]:
    return {"summary": PROBLEM_TYPES[slug][1], "value": {
        "type": f"/api#{slug}", "title": PROBLEM_TYPES[slug][1], "status": status, "detail": detail,
        "instance": "/api/v1/analyze", **extensions}}


def _with_examples(response: dict[str, Any], media_type: str, examples: dict[str, Any]) -> dict[str, Any]:
    response["content"][media_type]["examples"] = examples
    return response


def openapi_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `app`'s API."""
    max_bytes = app.config.get("MAX_CONTENT_LENGTH")
    rate = app.config.get("MOODLENS_RATE_LIMIT")
    default = app.extensions["moodlens"].default
    classes = {"name": "classes", "in": "query", "required": False,
               "description": f"Class set: 4 (angry, happy, neutral, sad) or 7 (FER2013's). Default {default} "
                              "(also when empty).",
               "schema": CLASSES_SCHEMA | {"default": default}}
    model = {"name": "model", "in": "query", "required": False,
             "description": "A shipped alternative model instead of the class set's: `photos`, the 4-class net fused "
                            "with face-api.js's (better on real photos, worse on FER2013, about 2.7x slower). With "
                            "it, `classes` may be left out or must be 4. Empty: the class set's model.",
             "schema": MODEL_SCHEMA | {"default": ""}}
    explain = {"name": "explain", "in": "query", "required": False,
               "description": "1: add a heatmap to each of the first 16 faces, best detector score first (slower). "
                              "Also true/false, yes/no, on/off, any case; "
                              "empty means 0.",
               "schema": EXPLAIN_SCHEMA | {"default": "0"}}
    preview = {"name": "preview", "in": "query", "required": False,
               "description": "1: add `preview`, the photo as analysed as a JPEG data URL (for formats a browser "
                              "cannot show, such as TIFF). Same words as `explain`.",
               "schema": EXPLAIN_SCHEMA | {"default": "0"}}
    floor = app.config.get("MOODLENS_MIN_FACE_SCORE", 0.5)
    min_score = {"name": "min_face_score", "in": "query", "required": False,
                 "description": f"Leave out faces the detector scored under this (0..1). Default {floor}; values "
                                "under 0.5 act as 0.5.",
                 "schema": {"type": "string", "pattern": r"^(0(\.\d+)?|1(\.0+)?)?$", "default": str(floor)}}
    limits = f"Bodies over {max_bytes} bytes get 413 before they are read. " if max_bytes else ""
    if rate:
        limits += f"At most {rate:g} requests per second per client (429 with Retry-After when over). "
    rate_limited = {"429": _with_examples(
        _problem("Too many requests; wait Retry-After seconds."), MEDIA_TYPE,
        {"rate-limited": _problem_example(429, "rate-limited", f"Over {rate:g} requests per second; wait 1 s and "
                                          "try again.", retry_after=1)})} if rate else {}
    mb = f"{max_bytes / 1024 / 1024:.3g}" if max_bytes else "16"
    p = MEDIA_TYPE
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
        "tags": TAGS,
        "paths": {
            "/api/v1/analyze": {
                "post": {
                    "operationId": "analyze",
                    "tags": ["analysis"],
                    "summary": "Find faces and read their expressions",
                    "description": "Send one photo (JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF, HEIC) as the multipart "
                                   "field `image`, or as the raw body with an image/* Content-Type. Options go in the "
                                   "query string (or, with multipart, as form fields).\n\n" + CURL_EXAMPLES,
                    "parameters": [classes, model, explain, preview, min_score],
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
                                        "model": MODEL_SCHEMA,
                                        "explain": EXPLAIN_SCHEMA,
                                        "preview": EXPLAIN_SCHEMA,
                                        "min_face_score": {"type": "string"},
                                    },
                                },
                            },
                            "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
                        },
                    },
                    "responses": {
                        "200": _with_examples(
                            _json("The faces found (possibly none) and their expressions.", "AnalysisResult"),
                            "application/json", {
                                "one-face": {"summary": "One face", "value": ANALYSIS_EXAMPLE},
                                "no-face": {"summary": "No face", "value": {
                                    **ANALYSIS_EXAMPLE, "width": 600, "height": 400, "faces": [],
                                    "timings_ms": {"decode": 0.9, "detect": 30.2, "total": 31.1}}},
                            }),
                        "400": _with_examples(_problem(f"Malformed request: {_slugs(400)}."), p, {
                            "missing-image": _problem_example(
                                400, "missing-image", "Send the photo in the multipart field `image`."),
                            "bad-option": _problem_example(400, "bad-option", "`classes` must be 4 or 7, not '5'."),
                        }),
                        "408": _problem("The body took longer than the server's body timeout to arrive."),
                        "413": _with_examples(
                            _problem("The body is over the upload limit, or the image over the pixel limit."), p,
                            {"too-large": _problem_example(
                                413, "too-large", f"The upload is over the {mb} MB limit; send a smaller photo.",
                                **({"max_bytes": int(max_bytes)} if max_bytes else {}))}),
                        "415": _with_examples(
                            _problem(f"Not an image, or a Content-Type the API does not take: {_slugs(415)}."), p,
                            {"not-an-image": _problem_example(
                                415, "not-an-image",
                                NOT_AN_IMAGE)}),
                        "422": _with_examples(
                            _problem(f"An image that cannot be used: {_slugs(422)}."), p,
                            {"truncated-image": _problem_example(
                                422, "truncated-image", CORRUPT)}),
                        **rate_limited,
                        "503": _with_examples(
                            _problem("The analysis took longer than the server's time limit; try again after "
                                     "Retry-After seconds, or with a smaller photo or without `explain`."), p,
                            {"analysis-timeout": _problem_example(
                                503, "analysis-timeout", "the photo took more than 20 s to analyse and was stopped; "
                                "try a smaller photo, fewer faces or no explanation", time_limit_s=20)}),
                    },
                },
            },
            "/api/v1/health": {
                "get": {
                    "operationId": "health",
                    "tags": ["service"],
                    "summary": "Liveness check (never rate-limited)",
                    "responses": {
                        "200": _with_examples(
                            _json("The server is up, its default model loaded, and the engine passed its last "
                                  "self-test.", "Health"), "application/json",
                            {"ok": {"summary": "Up", "value": {"status": "ok", "version": __version__,
                                                               "default_classes": default,
                                                               "loaded": list(CLASS_SETS)}}}),
                        "503": _with_examples(
                            _json("The engine failed its self-test (run at start-up and after an unexpected error): "
                                  "analyze fails; restart the server. Why is in the server log.", "Health"),
                            "application/json",
                            {"error": {"summary": "Engine broken", "value": {
                                "status": "error", "version": __version__, "default_classes": default,
                                "loaded": [default], "failed": [default]}}}),
                    },
                },
            },
            "/api/v1/model": {
                "get": {
                    "operationId": "model",
                    "tags": ["model"],
                    "summary": "The model card",
                    "description": "The model card as JSON; the Model page (`/model`) shows it in words.",
                    "parameters": [classes, model],
                    "responses": {
                        "200": _with_examples(
                            _json("The model card of the chosen class set or model.", "ModelCard"), "application/json",
                            {"abridged": {"summary": "Abridged", "value": {
                                "name": "moodlens expression-4", "classes": ["angry", "happy", "neutral", "sad"],
                                "uncertain_below": 0.5,
                                "metrics": {"PublicTest_fer2013": {"split": "PublicTest", "labels": "FER2013",
                                                                   "n": 2622, "accuracy": 0.7124}},
                                "intended_use": "Reading the facial expression (the configuration of the face) "
                                                "of people in ordinary photos and webcam frames..."}}}),
                        "400": _problem("Invalid `classes` or `model`."),
                        **rate_limited,
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "tags": ["service"],
                    "summary": "This document",
                    "description": "The docs page (`/api/docs`) renders it.",
                    "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **rate_limited},
                },
            },
        },
        "components": {"schemas": SCHEMAS},
    }
