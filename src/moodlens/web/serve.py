"""`moodlens serve`: the website and API under gunicorn, with the models loaded once in the master.

The app (and so every model) is created before gunicorn forks its workers; the workers share those pages of
memory copy-on-write instead of each loading its own copy, and a broken model stops the server at start-up.
"""

from __future__ import annotations

import os
from typing import Any

import click
from gunicorn.app.base import BaseApplication

from moodlens.errors import MoodlensError
from moodlens.web.engines import CLASS_SETS


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


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", "-w", type=click.IntRange(1, 64), default=None,
              help="Worker processes.  [default: one per CPU, at most 4]")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads per worker (more than 1: gthread workers).")
@click.option("--classes", type=click.Choice(CLASS_SETS), default="4", show_default=True,
              help="Class set used when a request does not choose one.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A .tflite expression model to use instead of the shipped one (for --classes).")
@click.option("--detector", type=click.Choice(["auto", "short", "full"]), default="auto", show_default=True,
              help="Face detector: short range (selfies, webcams), full range (smaller faces) or both.")
@click.option("--max-upload-mb", type=click.FloatRange(0.1, 100), default=16, show_default=True,
              help="Largest upload; bigger bodies get 413 before they are read.")
@click.option("--rate-limit", type=click.FloatRange(0), default=20, show_default=True,
              help="API requests per second per client, per worker (0: no limit).")
@click.option("--burst", type=click.IntRange(1), default=40, show_default=True,
              help="Requests a client may send at once before --rate-limit applies.")
@click.option("--proxies", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Reverse proxies in front whose X-Forwarded-For/-Proto/-Host to trust.")
@click.option("--timeout", type=click.IntRange(5), default=60, show_default=True,
              help="Seconds a worker may spend on one request before it is restarted.")
@click.option("--body-timeout", type=click.FloatRange(0), default=60, show_default=True,
              help="Seconds a request body may take to arrive; slower clients get 408 (0: no limit).")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
def serve_command(
    host: str, port: int, workers: int | None, threads: int, classes: str, model_path: str | None,
    detector: str, max_upload_mb: float, rate_limit: float, burst: int, proxies: int, timeout: int,
    body_timeout: float, access_log: bool,
) -> None:
    """Serve the website (photos, webcam, model card) and the JSON API."""
    from moodlens.web import create_app

    config = {
        "MOODLENS_CLASSES": classes,
        "MOODLENS_MODEL_PATH": model_path,
        "MOODLENS_DETECTOR": detector,
        # Both class sets load now, in the master, so every worker shares them and none loads on a request.
        "MOODLENS_PRELOAD": CLASS_SETS if model_path is None else (classes,),
        "MOODLENS_RATE_LIMIT": rate_limit,
        "MOODLENS_RATE_BURST": burst,
        "MOODLENS_PROXIES": proxies,
        "MAX_CONTENT_LENGTH": int(max_upload_mb * 1024 * 1024),
        "MOODLENS_BODY_TIMEOUT": body_timeout,
    }
    try:
        app = create_app(config)
    except (MoodlensError, OSError, ValueError) as exc:  # a missing or broken model: say so, no traceback
        raise click.ClickException(f"could not start: {exc}") from exc
    workers = workers or default_workers()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"moodlens: http://{shown}:{port}/  ({workers} worker{'s' if workers > 1 else ''} x {threads} "
               f"thread{'s' if threads > 1 else ''}, "
               f"default classes {classes}; Ctrl+C stops)", err=True)
    StandaloneApplication(app, gunicorn_options(host, port, workers, threads, timeout, access_log)).run()
