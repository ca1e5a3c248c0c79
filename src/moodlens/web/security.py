"""Security headers on every response, cache headers, a per-client rate limit on the API, opt-in CORS,
X-Forwarded-* taken only from trusted proxies, and redirects that stay on this site.

The rate limit is a token bucket per client address, in shared memory made when the app is created:
`moodlens serve` creates the app in the gunicorn master, so every worker forked from it counts against the same
buckets (a client gets the configured rate, not N times it with N workers). Good enough to stop one client
from hogging a small server; it is no defence against a flood from many addresses (SECURITY.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import math
import mmap
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from flask import Flask, Response, current_app, redirect, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import RequestRedirect

from moodlens.web.problems import ApiProblem

#: Only this site's own scripts, styles, images and API; photos shown from blob: URLs, heatmaps from data:
#: URLs, the webcam from a MediaStream. No inline script or style, no plugins, never framed.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}

YEAR = 365 * 24 * 3600


_SLOT = np.dtype([("key", "<u8"), ("tokens", "<f8"), ("last", "<f8")])  # key 0: an empty slot


class TokenBucketLimiter:
    """`rate` requests per second per key, with bursts of up to `burst`, shared by every thread and by every
    process forked after it is made.

    The buckets live in a shared mapping of an in-memory file (memfd; never on disk): `sets` x `ways` slots of
    (key hash, tokens, last time); a key goes in one set, and a new key takes the set's empty or least recently
    used slot (so it remembers about sets x ways clients, the most active). A POSIX record lock on that file
    serialises the processes (the kernel releases it when a process dies, even one killed while holding it) and
    a thread lock the threads of one process. CLOCK_MONOTONIC, behind time.monotonic(), is the same clock in
    every process.
    """

    def __init__(self, rate: float, burst: int, sets: int = 4096, ways: int = 4) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        size = sets * ways * _SLOT.itemsize
        if hasattr(os, "memfd_create"):
            self._file = os.fdopen(os.memfd_create("moodlens-rate-limit", os.MFD_CLOEXEC), "r+b")
        else:  # pragma: no cover - not Linux
            self._file = tempfile.TemporaryFile(prefix="moodlens-rate-")
        self._file.truncate(size)
        self._map = mmap.mmap(self._file.fileno(), size)  # MAP_SHARED: forked workers see one table
        self._table = np.frombuffer(self._map, _SLOT).reshape(sets, ways)
        self._thread_lock = threading.Lock()
        ref = weakref.ref(self)
        # a thread lock copied while another thread of the parent held it would never open in the child
        os.register_at_fork(after_in_child=lambda: (me := ref()) is not None and me._new_thread_lock())

    def _new_thread_lock(self) -> None:
        self._thread_lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> tuple[bool, float, int]:
        """Spend one token of `key`: (allowed, seconds until the next token, tokens left)."""
        now = time.monotonic() if now is None else now
        h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "little") or 1
        row = self._table[h % len(self._table)]
        with self._thread_lock:
            fcntl.lockf(self._file, fcntl.LOCK_EX)
            try:
                hit = np.flatnonzero(row["key"] == h)
                if hit.size:
                    i = int(hit[0])
                    tokens = min(float(self.burst), float(row["tokens"][i]) + (now - float(row["last"][i])) * self.rate)
                else:  # a new client: an empty slot (last = 0) or the least recently used
                    i, tokens = int(np.argmin(row["last"])), float(self.burst)
                allowed = tokens >= 1.0
                if allowed:
                    tokens -= 1.0
                row[i] = (h, tokens, now)
            finally:
                fcntl.lockf(self._file, fcntl.LOCK_UN)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        return allowed, wait, int(tokens)


def rate_limit() -> None:
    """`before_request` hook for the API blueprint: raise a 429 problem when this client is over its rate."""
    limiter: TokenBucketLimiter | None = current_app.extensions.get("moodlens.limiter")
    if limiter is None or request.endpoint in EXEMPT or request.method == "OPTIONS":  # preflights are free
        return
    allowed, wait, left = limiter.take(request.remote_addr or "unknown")
    if not allowed:
        retry = max(1, math.ceil(wait))
        raise ApiProblem(
            429, "rate-limited",
            f"Over {limiter.rate:g} requests per second; wait {retry} s and try again.",
            headers={"Retry-After": str(retry)}, retry_after=retry)


#: Peers whose X-Forwarded-* headers `--proxies N` trusts unless told otherwise: a proxy on this machine.
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1")
_FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT",
              "HTTP_X_FORWARDED_PREFIX")


def proxy_networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or networks ("10.0.0.5", "10.0.0.0/8", "::1"); ValueError naming a bad one."""
    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"a trusted proxy is an IP address or network (10.0.0.0/8), not {part!r}") from None
    return tuple(out)


class TrustedProxyFix:
    """Werkzeug's ProxyFix for `proxies` hops, applied only to requests whose peer (REMOTE_ADDR) is a trusted
    proxy; from any other peer the X-Forwarded-* headers are removed and the peer is the client.

    ProxyFix takes the `proxies`-th X-Forwarded-For value from the right, the one the nearest proxy appended,
    so what a client writes further left cannot change who it is. But a client that reaches the server past
    the proxy writes the whole header itself: with ProxyFix alone it could pick any address, a fresh one per
    request, and never meet the rate limit.
    """

    def __init__(self, app: Any, proxies: int, trusted: Iterable[str] = DEFAULT_TRUSTED_PROXIES) -> None:
        self.app = app
        self.networks = proxy_networks(trusted)
        self.fixed = ProxyFix(app, x_for=proxies, x_proto=proxies, x_host=proxies)

    def trusts(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address((peer or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # a dual-stack socket's IPv4 peer
            address = address.ipv4_mapped
        return any(address in net for net in self.networks if net.version == address.version)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if self.trusts(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        for name in _FORWARDED:
            environ.pop(name, None)
        return self.app(environ, start_response)


def relative_redirect() -> Response | None:
    """`before_request` hook: Werkzeug's own redirects (`/static//app.js` -> `/static/app.js`, merged slashes)
    point at a path on this site, not at an absolute URL built from the request's Host header (which a client,
    or a cache key mix-up, controls: `Host: evil.example` was sent back as `http://evil.example/...`)."""
    exc = request.routing_exception
    if not isinstance(exc, RequestRedirect):
        return None
    target = urlsplit(exc.new_url)
    location = "/" + target.path.lstrip("/") + (f"?{target.query}" if target.query else "")  # never "//host"
    return redirect(location, exc.code)


#: Endpoints that are never rate-limited (health checks from monitors and load balancers).
EXEMPT = {"api.health"}

#: What a cross-origin page may do with the API when CORS is on (`MOODLENS_CORS_ORIGIN`, `serve --cors-origin`).
CORS_METHODS = "GET, POST"
CORS_REQUEST_HEADERS = "Content-Type"
CORS_EXPOSED_HEADERS = "Retry-After, Server-Timing"
CORS_MAX_AGE = 600


def cors_origin(value: str) -> str:
    """`value` as a web origin, `scheme://host[:port]` (lower-case; a trailing slash dropped); ValueError otherwise.

    One exact origin only: no `*`, no path, no user name.
    """
    text = (value or "").strip()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or "@" in parts.netloc
            or parts.path not in ("", "/") or parts.query or parts.fragment or "*" in text or " " in text):
        raise ValueError(f"a CORS origin is scheme://host[:port], like https://example.org, not {value!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _add_cors(resp: Response, origin: str) -> None:
    """CORS headers on an API response, for `origin` only; every API response varies on Origin."""
    if not request.path.startswith("/api/v1/"):
        return
    resp.vary.add("Origin")
    if request.headers.get("Origin") != origin:
        return
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        resp.headers["Access-Control-Allow-Headers"] = CORS_REQUEST_HEADERS
        resp.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE)


def init_app(app: Flask) -> None:
    """Create the limiter from the config and add headers to every response."""
    origin = app.config.get("MOODLENS_CORS_ORIGIN")
    if origin:
        origin = app.config["MOODLENS_CORS_ORIGIN"] = cors_origin(origin)
    app.before_request(relative_redirect)
    rate = app.config.get("MOODLENS_RATE_LIMIT")
    if rate:
        app.extensions["moodlens.limiter"] = TokenBucketLimiter(rate, app.config.get("MOODLENS_RATE_BURST", 1))
    versions: dict[str, str] = app.config.get("MOODLENS_STATIC_VERSIONS", {})

    @app.after_request
    def _headers(resp: Response) -> Response:
        for name, value in HEADERS.items():
            resp.headers.setdefault(name, value)
        if origin:
            _add_cors(resp, origin)
        if request.endpoint == "static":
            filename = (request.view_args or {}).get("filename", "")
            current = request.args.get("v") and request.args["v"] == versions.get(filename)
            if current and resp.status_code in (200, 304):
                resp.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable"
            else:
                resp.headers["Cache-Control"] = "no-cache"
        elif request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        else:
            resp.headers.setdefault("Cache-Control", "no-cache")
        return resp
