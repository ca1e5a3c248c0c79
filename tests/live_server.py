"""`moodlens serve` (gunicorn, real models) as a subprocess on a free loopback port, and a raw HTTP client for it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moodlens.web.serve import stop_process
from web_helpers import free_port


@dataclass
class Server:
    host: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = dict(headers or {})
            if content_type is not None:
                h["Content-Type"] = content_type
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def healthy(self, timeout: float = 5) -> bool:
        try:
            status, _, body = self.request("GET", "/api/v1/health", timeout=timeout)
        except OSError:
            return False
        return status == 200 and json.loads(body)["status"] == "ok"


@contextlib.contextmanager
def serve(*args: str, env: dict[str, str] | None = None, log_dir: Path, start_timeout: float = 90) -> Iterator[Server]:
    """`python -m moodlens serve --host 127.0.0.1 --port <free> *args` until the block ends."""
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moodlens", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    server = Server("127.0.0.1", port, proc, log)
    try:
        deadline = time.monotonic() + start_timeout
        while not server.healthy(timeout=2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moodlens serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        stop_process(proc)
