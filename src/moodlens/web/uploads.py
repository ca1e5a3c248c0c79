"""Reading an uploaded photo into memory, and never onto disk, within a time limit."""

from __future__ import annotations

import time
from io import BytesIO
from typing import IO, Any

from flask import Flask, Request, current_app, request
from werkzeug.exceptions import BadRequest, RequestTimeout

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


class GuardedInput:
    """gunicorn's `wsgi.input`, read within a deadline and with its framing errors answered as 400.

    A client that sends its headers and then trickles (or stalls) its body would otherwise hold a worker thread
    for as long as it likes: each read gets the socket timeout set to the time left before `deadline`
    (time.monotonic(); None: no limit), then restored so that writing the response is not affected, and gives a
    408 once it is passed. A malformed chunked body makes gunicorn raise a parse error, which is the client's
    fault (400), not the server's.
    """

    def __init__(self, stream: Any, sock: Any, deadline: float | None, seconds: float | None) -> None:
        self._stream, self._sock, self._deadline, self._seconds = stream, sock, deadline, seconds

    def _call(self, method: str, *args: Any) -> Any:
        from gunicorn.http.errors import ParseException

        prior = None
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout()
            prior = self._sock.gettimeout()
            self._sock.settimeout(remaining)
        try:
            return getattr(self._stream, method)(*args)
        except TimeoutError:
            raise self._timeout() from None
        except ParseException as exc:
            raise BadRequest(f"The request body is malformed ({type(exc).__name__}).") from None
        finally:
            if self._deadline is not None:
                try:
                    self._sock.settimeout(prior)
                except OSError:  # the client is gone
                    pass

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(f"The request body took more than {self._seconds:g} s to arrive.")

    def read(self, size: int = -1) -> bytes:
        return self._call("read", size)

    def readline(self, size: int = -1) -> bytes:
        return self._call("readline", size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._call("readlines", hint)

    def __iter__(self):
        return iter(self.readline, b"")


def guard_body() -> None:
    """`before_request` hook: read the body through `GuardedInput` (deadline: MOODLENS_BODY_TIMEOUT seconds).

    Only under gunicorn, whose environ carries the client socket; other servers (and Flask's test client) are
    left alone. Requests without a body are not touched.
    """
    env = request.environ
    sock = env.get("gunicorn.socket")
    if sock is None or not hasattr(sock, "settimeout") or request.content_length == 0:
        return
    if request.content_length is None and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return
    seconds = current_app.config.get("MOODLENS_BODY_TIMEOUT") or None
    deadline = time.monotonic() + float(seconds) if seconds else None
    env["wsgi.input"] = GuardedInput(env["wsgi.input"], sock, deadline, seconds)


def init_app(app: Flask) -> None:
    """Register `guard_body` before every other hook."""
    app.before_request_funcs.setdefault(None, []).insert(0, guard_body)
