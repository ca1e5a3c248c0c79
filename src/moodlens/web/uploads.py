"""Reading an uploaded photo into memory, and never onto disk."""

from __future__ import annotations

from io import BytesIO
from typing import IO

from flask import Request, request

from moodlens.web.problems import ApiProblem

FIELD = "image"


class InMemoryRequest(Request):
    """A request whose multipart file parts are kept in `BytesIO`, never spooled to a temporary file.

    Werkzeug's default spools parts over 500 kB to disk. The body is bounded by MAX_CONTENT_LENGTH (checked
    before anything is read), so memory use per request is bounded too.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return BytesIO()


def read_image() -> bytes:
    """The photo's bytes from the current request: multipart field `image`, or a raw `image/*` body.

    Raises `ApiProblem` (400 or 415) when the request does not carry exactly one non-empty photo.
    """
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist(FIELD)
        if not files:
            if FIELD in request.form:
                raise ApiProblem(400, "missing-image", f"The `{FIELD}` field must be a file, not text.")
            raise ApiProblem(400, "missing-image", f"Send the photo in the multipart field `{FIELD}`.")
        if len(files) > 1:
            raise ApiProblem(
                400, "several-images",
                f"The `{FIELD}` field holds {len(files)} files; send one photo per request.")
        data = files[0].stream.read()
    elif mimetype.startswith("image/"):
        data = request.stream.read()
        if request.content_length is None:
            # A chunked body has no Content-Length to refuse up front; Werkzeug's stream stops quietly at
            # MAX_CONTENT_LENGTH, and reading past it raises 413 rather than passing on a cut-off photo.
            request.stream.read(1)
    else:
        shown = mimetype or "no Content-Type"
        raise ApiProblem(
            415, "unsupported-media-type",
            f"Got {shown}. Send multipart/form-data with the photo in the field `{FIELD}`, "
            "or the photo itself as the body with an image/* Content-Type.")
    if not data:
        raise ApiProblem(400, "empty-image", "The photo is empty (0 bytes).")
    return data
