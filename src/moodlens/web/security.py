"""Security headers on every response, cache headers, and a per-client rate limit on the API.

The rate limit is a token bucket per client address, in memory, per process: with N gunicorn workers a client
can get up to N times the configured rate. Good enough to stop one client from hogging a small server; put a
reverse proxy with a shared limit in front for more.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

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
    if limiter is None or request.endpoint in EXEMPT:
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


def init_app(app: Flask) -> None:
    """Create the limiter from the config and add headers to every response."""
    rate = app.config.get("MOODLENS_RATE_LIMIT")
    if rate:
        app.extensions["moodlens.limiter"] = TokenBucketLimiter(rate, app.config.get("MOODLENS_RATE_BURST", 1))
    versions: dict[str, str] = app.config.get("MOODLENS_STATIC_VERSIONS", {})

    @app.after_request
    def _headers(resp: Response) -> Response:
        for name, value in HEADERS.items():
            resp.headers.setdefault(name, value)
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
