"""The website and API under gunicorn (`moodlens serve` is in moodlens.cli.serve), models loaded once in the master.

The app (and so every model) is created before gunicorn forks its workers; the workers share those pages of
memory copy-on-write instead of each loading its own copy, and a broken model stops the server at start-up.

The workers are `BufferingWorker`s: gunicorn's gthread worker, except that each request is read whole in the
worker's event loop before a thread sees it, so idle and slow clients (trickled headers or bodies) never hold
a thread; see SECURITY.md and docs/hardening.md for the measurements. They give memory back after large
requests and restart themselves, gracefully, when it stays high (`MemoryGuard`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import selectors
import socket
import subprocess
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.app.base import BaseApplication
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker


class StandaloneApplication(BaseApplication):
    """Gunicorn serving an already-created WSGI app with the given settings (no config file, no argv)."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:  # settings an older gunicorn lacks are skipped
                self.cfg.set(key.lower(), value)

    def load(self) -> Any:
        return self.application


def default_workers() -> int:
    """One worker per CPU, at most 4 (each worker runs inference on one core)."""
    return max(1, min(4, os.cpu_count() or 1))


def gunicorn_options(
    host: str, port: int, workers: int, threads: int, timeout: int = 60, access_log: bool = False,
    max_requests: int = 0,
) -> dict[str, Any]:
    """The gunicorn settings `moodlens serve` uses. `max_requests`: restart a worker after about that many
    requests (0: never; each worker draws up to 10% more, so they do not all restart at once)."""
    bind = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    return {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": "moodlens.web.serve.BufferingWorker",  # gthread, with slow clients kept out of threads
        "preload_app": True,
        "timeout": timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
        "max_requests": max_requests,
        "max_requests_jitter": max_requests // 10,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "moodlens",
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        # gunicorn >= 25 opens a control socket at one fixed path per user; two servers would fight over it.
        "control_socket_disable": True,
    }


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop a `moodlens serve` process: SIGTERM (gunicorn's graceful shutdown), SIGKILL after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- memory: give freed memory back, restart a worker whose memory stays high --------------------------------------

#: Default of `moodlens serve --max-worker-rss`: a worker still using more than this many MiB after a request, and
#: after giving its freed memory back, restarts gracefully (its requests in flight are answered first).
MAX_WORKER_RSS_MB = 300  # what a worker should be back under after any request (issue 13)
#: A worker that grew by this much since it last gave memory back does so again after its next request.
TRIM_STEP = 32 * 2**20
#: glibc's mallopt() parameters (malloc.h) and the values moodlens serve sets (see `tune_allocator`).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 4 * 2**20
TRIM_THRESHOLD = 32 * 2**20
ARENA_MAX = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (malloc_trim and mallopt are glibc's), else None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - AttributeError where the C library is not glibc
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def tune_allocator() -> bool:
    """Make glibc's malloc give large freed blocks back to the kernel; False where it is not glibc.

    By default glibc serves a block of up to 32 MB from its heap once a block that size has been freed (its mmap
    threshold rises to match) and keeps one heap per thread-ish (8 x cores): the 16 MB pixel blocks of a large
    image then stay in the process after the request. A fixed threshold puts every block of MMAP_THRESHOLD or
    more in its own mapping, unmapped when freed, and ARENA_MAX heaps are enough for a worker's few threads.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
    return True


def release_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim; nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (0 where /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryGuard:
    """What a worker does after each request: give freed memory back when it grew, and say when its resident
    memory stays over `limit` bytes even so (None: never), so that it restarts.

    Memory is given back (malloc_trim, 0.4-0.7 ms) when the worker grew by `step` since it last did, and, at most
    every `retrim_after` seconds, while it stays `step` over the least it has used: a request that freed its
    memory while another held the heap leaves holes that only a later trim returns.
    """

    def __init__(self, limit: int | None, step: int = TRIM_STEP, retrim_after: float = 5.0) -> None:
        self.limit = limit
        self.step = step
        self.retrim_after = retrim_after
        self._lock = threading.Lock()
        self._settled = self._floor = rss_bytes()
        self._trimmed_at = time.monotonic()

    def after_request(self) -> int | None:
        """The resident bytes when they are over the limit (restart), else None."""
        rss = rss_bytes()
        over = self.limit is not None and rss > self.limit
        grew = rss > self._settled + self.step
        lingers = rss > self._floor + self.step and time.monotonic() - self._trimmed_at >= self.retrim_after
        if (over or grew or lingers) and self._lock.acquire(blocking=over):  # one trim at a time is enough
            try:
                release_memory()
                rss = rss_bytes()
                self._trimmed_at = time.monotonic()
            finally:
                self._lock.release()
        self._settled = rss if grew else min(self._settled, rss)
        self._floor = min(self._floor, rss)
        return rss if self.limit is not None and rss > self.limit else None


# --- the worker: gunicorn's gthread, with whole requests buffered in its event loop ------------------------------

#: Seconds a connection may take to send a request's head (request line and headers) from when it was accepted
#: or, kept alive, sent its first byte; then it is closed. Idle kept-alive connections close after `keepalive`.
HEAD_TIMEOUT = 10.0
#: Largest request head; a bigger one gets 431 and the connection is closed.
MAX_HEAD = 64 * 1024
#: Bytes of request bodies one worker buffers at once, at least; past that it stops reading from the
#: connections still sending until memory is freed (their deadlines keep running).
BUFFER_BUDGET = 64 * 1024 * 1024
#: Seconds a closed connection may take to read the rest of its data before its socket is closed.
LINGER = 2.0

_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
                   b"Content-Length: 32\r\nConnection: close\r\n\r\nRequest header fields too large\n")
_MORE, _DONE, _HAND_OFF, _GONE = "more", "done", "hand-off", "gone"


class _BufferedUnreader(SocketUnreader):
    """gunicorn's socket reader, serving bytes the event loop already read before reading the socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.pending: deque[bytes] = deque()
        self.expired = False  # the body timeout has passed: reading past `pending` times out at once


    def feed(self, data: bytes, piece: int = 256 * 1024) -> None:
        view = memoryview(data)  # in pieces: gunicorn's Unreader copies what is left of a chunk on every read
        self.pending.extend(bytes(view[i:i + piece]) for i in range(0, len(view), piece))

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.pending:
            return self.pending.popleft()
        if self.expired:  # moodlens.web.uploads.GuardedInput turns this into the app's 408
            raise TimeoutError("the request body took longer than the body timeout")
        return super().chunk(size_hint)


class _Wait:
    """A connection whose request is still arriving: its bytes so far, and what is known of its framing."""

    __slots__ = ("buf", "deadline", "head_end", "length", "chunked", "pos", "decoded", "continued", "body_deadline",
                 "registered")

    def __init__(self, deadline: float) -> None:
        self.buf = bytearray()
        self.deadline = deadline
        self.head_end = -1  # index just past the blank line that ends the head; -1 until it arrived
        self.length = 0  # Content-Length
        self.chunked = False
        self.pos = 0  # where the next chunk-size line starts (chunked)
        self.decoded = 0  # chunk data bytes so far (chunked)
        self.continued = False  # "100 Continue" sent
        self.body_deadline: float | None = None
        self.registered = False  # on the worker's poller


def _head_framing(head: bytes) -> tuple[str, int, bool, bool] | None:
    """(framing, Content-Length, chunked, expects 100-continue) of a request head; None: let gunicorn judge it."""
    length, chunked, expect, lengths = 0, False, False, 0
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            lengths += 1
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True  # gunicorn accepts only chunked (last); anything odd it refuses once handed over
        elif name == b"expect" and value == b"100-continue":
            expect = True
    if lengths > 1 or (lengths and chunked):
        return None
    return "chunked" if chunked else "length", length, chunked, expect


def _chunks(w: _Wait, cap: int) -> str:
    """Follow a chunked body from `w.pos`: _DONE once its last chunk and trailers are in, _HAND_OFF when it is
    malformed or over `cap` (the app answers 400 or 413), else _MORE."""
    buf = w.buf
    while True:
        eol = buf.find(b"\r\n", w.pos)
        if eol < 0:
            return _MORE if len(buf) - w.pos <= 1024 else _HAND_OFF
        size_text = bytes(buf[w.pos:eol]).split(b";", 1)[0].strip()
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            return _HAND_OFF
        size = int(size_text, 16)
        if size == 0:
            if buf[eol + 2:eol + 4] == b"\r\n" or buf.find(b"\r\n\r\n", eol) >= 0:
                return _DONE
            return _MORE if len(buf) - eol <= MAX_HEAD else _HAND_OFF
        if w.decoded + size > cap:
            return _HAND_OFF
        if len(buf) < eol + 2 + size + 2:
            return _MORE
        if buf[eol + 2 + size:eol + 4 + size] != b"\r\n":
            return _HAND_OFF
        w.decoded += size
        w.pos = eol + 4 + size


class BufferingWorker(ThreadWorker):
    """gunicorn's gthread worker whose threads only ever see whole requests.

    In gthread a connection takes a thread as soon as its first byte arrives (after up to 5 s of waiting in the
    thread, for an idle one) and keeps it while the headers and body arrive, so a few slow clients hold every
    thread. Here the worker's event loop reads each request, head and body, without blocking, and hands it to
    a thread only once it is all in memory (or is one the app refuses unread: a body over the upload limit).
    A head must arrive within HEAD_TIMEOUT, a body within the app's MOODLENS_BODY_TIMEOUT (then the app answers
    408 and the connection is closed); closed connections linger in the event loop, not in a thread.
    """

    def init_process(self) -> None:
        self.waiting: dict[TConn, _Wait] = {}
        self.paused: dict[TConn, _Wait] = {}
        self.lingering: dict[TConn, float] = {}
        self.buffered = 0
        tune_allocator()  # inherited from `moodlens serve`'s master; set again for workers started otherwise
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        config = getattr(self.wsgi, "config", {})
        self.max_body = int(config.get("MAX_CONTENT_LENGTH") or 16 * 1024 * 1024)
        rss_mb = config.get("MOODLENS_MAX_WORKER_RSS_MB", MAX_WORKER_RSS_MB)
        self.memory = MemoryGuard(int(rss_mb * 2**20) if rss_mb else None)
        self.body_timeout = float(config.get("MOODLENS_BODY_TIMEOUT") or 0) or None
        self.budget = max(BUFFER_BUDGET, 4 * self.max_body)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        try:
            return super().handle_request(req, conn)
        finally:
            over = self.memory.after_request()
            if over is not None and self.alive:
                self.log.warning("worker %s: %d MiB resident after a request, over the limit of %d MiB: "
                                 "restarting once its requests in flight are answered", self.pid, over >> 20,
                                 self.memory.limit >> 20)
                self.alive = False  # gunicorn's graceful exit; the master forks a fresh worker

    # new and kept-alive connections: wait for a whole request in the event loop
    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, addr, listener.getsockname())  # non-blocking
        conn.parser = http.get_parser(self.cfg, client, addr)
        conn.parser.unreader = _BufferedUnreader(client)
        self._wait(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait(conn)

    def _wait(self, conn: TConn, leftover: bytes = b"") -> None:
        """Read the next request of `conn` (after `leftover`, bytes of it already read), without blocking: at
        once (a kept-alive connection is readable now), then whenever the poller says it is readable."""
        w = _Wait(time.monotonic() + HEAD_TIMEOUT)
        self.waiting[conn] = w
        self._take(conn, w, leftover) if leftover else self._read(conn, w)

    def _on_readable(self, conn: TConn, client: socket.socket) -> None:
        self._read(conn, self.waiting[conn])

    def _read(self, conn: TConn, w: _Wait) -> None:
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        if data == b"":  # the client went away
            self._forget(conn)
            self._close(conn)
        elif data is None:
            self._register(conn, w)
        else:
            self._take(conn, w, data)

    def _take(self, conn: TConn, w: _Wait, data: bytes) -> None:
        w.buf += data
        self.buffered += len(data)
        state = self._state(conn, w)
        if state == _GONE:
            return
        if state == _MORE and self.buffered > self.budget:
            if w.registered:
                self.poller.unregister(conn.sock)
                w.registered = False
            del self.waiting[conn]
            self.paused[conn] = w
        elif state == _MORE:
            self._register(conn, w)
        else:
            self._dispatch(conn, w, complete=state == _DONE)

    def _register(self, conn: TConn, w: _Wait) -> None:
        if not w.registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            w.registered = True

    def _state(self, conn: TConn, w: _Wait) -> str:
        if w.head_end < 0:
            end = w.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(w.buf) > MAX_HEAD:
                    self._forget(conn)
                    with contextlib.suppress(OSError):
                        conn.sock.send(_HEAD_TOO_LARGE)
                    self._linger(conn)
                    return _GONE
                return _MORE
            w.head_end = w.pos = end + 4
            framing = _head_framing(bytes(w.buf[:end]))
            if framing is None:
                return _HAND_OFF
            _, w.length, w.chunked, expect = framing
            if w.length > self.max_body:
                return _HAND_OFF  # the app answers 413 without reading the body
            if w.length or w.chunked:
                w.body_deadline = time.monotonic() + self.body_timeout if self.body_timeout else None
            w.deadline = w.body_deadline or float("inf")
            if expect and not w.continued and len(w.buf) == w.head_end:
                w.continued = True
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if w.chunked:
            return _chunks(w, self.max_body + 1024 * 1024)
        return _DONE if len(w.buf) - w.head_end >= w.length else _MORE

    def _dispatch(self, conn: TConn, w: _Wait, complete: bool = False, expired: bool = False) -> None:
        self.waiting.pop(conn, None)
        self.paused.pop(conn, None)
        if w.registered:
            self.poller.unregister(conn.sock)
            w.registered = False
        self.buffered -= len(w.buf)
        self._resume()
        conn.parser.unreader.feed(bytes(w.buf))
        conn.complete = complete
        conn.parser.unreader.expired = expired
        conn.data_ready = True
        self.enqueue_req(conn)

    def _forget(self, conn: TConn) -> None:
        w = self.waiting.pop(conn, None) or self.paused.pop(conn, None)
        if w is not None:
            if w.registered:
                self.poller.unregister(conn.sock)
                w.registered = False
            self.buffered -= len(w.buf)
            self._resume()

    def _resume(self) -> None:
        while self.paused and self.buffered <= self.budget:
            conn, w = self.paused.popitem()
            self.waiting[conn] = w
            self._register(conn, w)

    def _close(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for table in (self.waiting, self.paused):
            for conn, w in [(c, w) for c, w in table.items() if w.deadline <= now]:
                if w.body_deadline is not None:  # the app answers 408
                    self._dispatch(conn, w, expired=True)
                else:
                    self._forget(conn)
                    self._close(conn)
        for conn in [c for c, t in self.lingering.items() if t <= now]:
            self._end_linger(conn)

    # after a request: a connection that will not be reused lingers in the event loop, not in a thread
    def _keepalive_after(self, conn: TConn, keepalive: bool) -> bool:
        if not getattr(conn, "complete", True):  # 408, 413: the rest of the body is not worth waiting for
            return False
        return super()._keepalive_after(conn, keepalive)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = False
        if not result or not self.alive:
            super().finish_request(conn, fs) if result else self._linger(conn)
            return
        # kept alive: a pipelined request already read goes through the event loop like any other
        unreader = conn.parser.unreader
        leftover = unreader.take_buffered() + b"".join(unreader.pending)
        unreader.pending.clear()
        if not leftover:
            super().finish_request(conn, fs)
            return
        conn.sock.setblocking(False)
        self._wait(conn, leftover)

    def _linger(self, conn: TConn) -> None:
        """Send FIN and read what the client still sends for up to LINGER s, then close (RFC 9112 9.6), so
        the kernel does not reset the connection and cut the response short."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger_readable, conn))
        except (OSError, ValueError, KeyError):
            self._close(conn)
            return
        self.lingering[conn] = time.monotonic() + LINGER

    def _on_linger_readable(self, conn: TConn, client: socket.socket) -> None:
        try:
            if client.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(conn)

    def _end_linger(self, conn: TConn) -> None:
        self.lingering.pop(conn, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.poller.unregister(conn.sock)
        self._close(conn)
