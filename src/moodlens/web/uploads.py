"""Reading an uploaded photo into memory, and never onto disk, within a time limit."""

from __future__ import annotations

import time
from io import BytesIO
from typing import IO, Any

from flask import Flask, Request, current_app, request
from werkzeug.exceptions import BadRequest, RequestTimeout
from werkzeug.formparser import FormDataParser

from moodlens.web.problems import ApiProblem

FIELD = "image"


#: How much of a multipart body is looked at for part headers that are not UTF-8 (the photo's own part comes
#: first, or after a few short text fields).
PEEK_BYTES = 64 * 1024


class _FormParser(FormDataParser):
    """Werkzeug's form parser, but a multipart body whose part headers are not UTF-8 is still read.

    Werkzeug decodes each part's headers as strict UTF-8 and, when that fails, quietly drops the whole form, so
    a file name in Latin-1 (an older client, a shell in a Latin-1 locale: `caf\xe9.jpg`) got 400 missing-image.
    Such headers are read as Latin-1 instead (which decodes any bytes; it is also HTTP's historical header
    charset). Only the first PEEK_BYTES are looked at, and a body is read whole (it is bounded by
    MAX_CONTENT_LENGTH) only when one of them needs it: other bodies stream through as before.
    """

    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        boundary = options.get("boundary", "").encode("utf-8", "replace")
        head = _read_up_to(stream, PEEK_BYTES)
        fixed = latin1_part_headers(head, boundary) if boundary else head
        if fixed is head:
            return super()._parse_multipart(_Prefixed(head, stream), mimetype, content_length, options)
        body = latin1_part_headers(head + stream.read(), boundary)
        return super()._parse_multipart(BytesIO(body), mimetype, content_length, options)


def latin1_part_headers(body: bytes, boundary: bytes) -> bytes:
    """`body` (multipart) with each part's header block that is not UTF-8 re-encoded from Latin-1 to UTF-8;
    `body` itself (the same object) when every complete header block in it is UTF-8 already."""
    delimiter = b"--" + boundary
    pieces = body.split(delimiter)
    changed = False
    for i in range(1, len(pieces)):
        end = pieces[i].find(b"\r\n\r\n")
        head = pieces[i][:end]
        if end < 0 or head.isascii():
            continue
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pieces[i] = head.decode("latin-1").encode("utf-8") + pieces[i][end:]
            changed = True
    return delimiter.join(pieces) if changed else body


def _read_up_to(stream: IO[bytes], n: int) -> bytes:
    """Up to `n` bytes of `stream` (fewer only at its end): one read may return less."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class _Prefixed:
    """`head`, then the rest of `stream`: all that Werkzeug's multipart parser calls is `read(size)`."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head, self._stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size is None or size < 0:
            out, self._head = self._head + self._stream.read(), b""
            return out
        out, self._head = self._head[:size], self._head[size:]
        return out


class InMemoryRequest(Request):
    """A request whose multipart file parts are kept in `BytesIO`, never spooled to a temporary file.

    Werkzeug's default spools parts over 500 kB to disk. The body is bounded by MAX_CONTENT_LENGTH (checked
    before anything is read), so memory use per request is bounded too. Part headers that are not UTF-8 are
    read as Latin-1 (`_FormParser`).
    """

    form_data_parser_class = _FormParser

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
