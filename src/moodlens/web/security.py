"""Security headers on every response, cache headers, a per-client rate limit on the API, and opt-in CORS.

The rate limit is a token bucket per client address, in memory, per process: with N gunicorn workers a client
can get up to N times the configured rate. Good enough to stop one client from hogging a small server; put a
reverse proxy with a shared limit in front for more.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

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


class TokenBucketLimiter:
    """`rate` requests per second per key, with bursts of up to `burst`. Thread-safe; remembers `max_keys`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> tuple[bool, float, int]:
        """Spend one token of `key`: (allowed, seconds until the next token, tokens left)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
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
