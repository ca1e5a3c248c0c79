"""The website and API under gunicorn (`moodlens serve` is in moodlens.cli.serve), models loaded once in the master.

The app (and so every model) is created before gunicorn forks its workers; the workers share those pages of
memory copy-on-write instead of each loading its own copy, and a broken model stops the server at start-up.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from gunicorn.app.base import BaseApplication


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
    host: str, port: int, workers: int, threads: int, timeout: int = 60, access_log: bool = False
) -> dict[str, Any]:
    """The gunicorn settings `moodlens serve` uses."""
    bind = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    return {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "preload_app": True,
        "timeout": timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
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
