"""`moodlens serve`: the website and API under gunicorn (moodlens.web.serve), with the models loaded once in
the master before the workers fork."""

from __future__ import annotations

import errno
import ipaddress
import socket

import click

from moodlens.cli import MODEL_HELP, ModelParam
from moodlens.engine.detect import DETECTORS
from moodlens.engine.errors import MoodlensError
from moodlens.web.engines import CLASS_SETS, MODEL_NAMES
from moodlens.web.serve import (
    MAX_WORKER_RSS_MB,
    StandaloneApplication,
    default_workers,
    gunicorn_options,
    tune_allocator,
)


def _trusted_proxies(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from moodlens.web.security import DEFAULT_TRUSTED_PROXIES, proxy_networks

    try:
        return tuple(str(n) for n in proxy_networks(value)) if value else DEFAULT_TRUSTED_PROXIES
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _cors_origin(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from moodlens.web.security import cors_origin

    try:
        return None if value is None else cors_origin(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", "-w", type=click.IntRange(1, 64), default=None,
              help="Worker processes.  [default: one per CPU, at most 4]")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads per worker; they only ever see whole requests (moodlens.web.serve.BufferingWorker).")
@click.option("--classes", type=click.Choice(CLASS_SETS), default="4", show_default=True,
              help="Class set used when a request does not choose one.")
@click.option("--model", "model_path", type=ModelParam(), default=None, help=MODEL_HELP + " Serves --classes.")
@click.option("--detector", type=click.Choice(DETECTORS), default="auto", show_default=True,
              help="Face detector: BlazeFace short range (selfies, webcams), full range, YuNet (groups, small "
                   "faces), or auto (short range, then YuNet where short range cannot vouch for the photo).")
@click.option("--min-face-score", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Leave out faces the detector scored lower (a request's min_face_score may raise it).")
@click.option("--max-upload-mb", type=click.FloatRange(0.1, 100), default=16, show_default=True,
              help="Largest upload; bigger bodies get 413 before they are read.")
@click.option("--rate-limit", type=click.FloatRange(0), default=20, show_default=True,
              help="API requests per second per client, all workers together (0: no limit).")
@click.option("--burst", type=click.IntRange(1), default=40, show_default=True,
              help="Requests a client may send at once before --rate-limit applies.")
@click.option("--proxies", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Reverse proxies in front whose X-Forwarded-For/-Proto/-Host to trust.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDR", callback=_trusted_proxies,
              help="With --proxies: the nearest proxy's address or network (repeatable); X-Forwarded-* from other "
                   "peers is ignored.  [default: 127.0.0.0/8 and ::1]")
@click.option("--cors-origin", metavar="ORIGIN", default=None, callback=_cors_origin,
              help="Let pages of this one origin (https://example.org) call the API from the browser (CORS). "
                   "[default: none]")
@click.option("--timeout", type=click.IntRange(5), default=60, show_default=True,
              help="Seconds a worker may spend on one request before it is restarted.")
@click.option("--analysis-timeout", type=click.FloatRange(0), default=20, show_default=True,
              help="Seconds one photo's analysis may take; then 503 with Retry-After (0: no limit; keep it under "
                   "--timeout, which restarts the worker).")
@click.option("--body-timeout", type=click.FloatRange(0), default=60, show_default=True,
              help="Seconds a whole request body may take to arrive; slower clients get 408 (0: no limit).")
@click.option("--max-worker-rss", "max_worker_rss", type=click.IntRange(0), default=MAX_WORKER_RSS_MB,
              show_default=True, metavar="MB",
              help="Restart a worker (gracefully) whose resident memory stays over this after a request (0: never).")
@click.option("--max-requests", type=click.IntRange(0), default=0, show_default=True,
              help="Restart each worker after about this many requests, up to 10% more (0: never).")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
def serve_command(
    host: str, port: int, workers: int | None, threads: int, classes: str, model_path: str | None,
    detector: str, min_face_score: float, max_upload_mb: float, rate_limit: float, burst: int, proxies: int,
    trusted_proxies: tuple[str, ...],
    cors_origin: str | None, timeout: int, analysis_timeout: float, body_timeout: float, max_worker_rss: int,
    max_requests: int,
    access_log: bool,
) -> None:
    """Serve the website (photos, webcam, model card) and the JSON API."""
    from moodlens.web import create_app

    warn_if_reachable(host)
    check_can_listen(host, port)  # before the models load: a taken port is one line now, not 5 s of retries

    config = {
        "MOODLENS_CLASSES": classes,
        "MOODLENS_MODEL_PATH": model_path,
        "MOODLENS_DETECTOR": detector,
        "MOODLENS_MIN_FACE_SCORE": min_face_score,
        # Every shipped model (both class sets, photos) loads now, in the master, so every worker shares them and
        # none loads on a request.
        "MOODLENS_PRELOAD": CLASS_SETS + MODEL_NAMES if model_path is None else (classes,),
        "MOODLENS_RATE_LIMIT": rate_limit,
        "MOODLENS_RATE_BURST": burst,
        "MOODLENS_PROXIES": proxies,
        "MOODLENS_TRUSTED_PROXIES": trusted_proxies,
        "MOODLENS_CORS_ORIGIN": cors_origin,
        "MAX_CONTENT_LENGTH": int(max_upload_mb * 1024 * 1024),
        "MOODLENS_BODY_TIMEOUT": body_timeout,
        "MOODLENS_ANALYSIS_TIMEOUT": analysis_timeout,
        "MOODLENS_MAX_WORKER_RSS_MB": max_worker_rss,
    }
    tune_allocator()  # before the models load, so the master and the workers it forks allocate alike
    try:
        app = create_app(config)
    except (MoodlensError, OSError, ValueError) as exc:  # a missing or broken model: say so, no traceback
        raise click.ClickException(f"could not start: {exc}") from exc
    workers = workers or default_workers()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"moodlens: http://{shown}:{port}/  ({workers} worker{'s' if workers > 1 else ''} x {threads} "
               f"thread{'s' if threads > 1 else ''}, "
               f"default classes {classes}; Ctrl+C stops)", err=True)
    options = gunicorn_options(host, port, workers, threads, timeout, access_log, max_requests)
    StandaloneApplication(app, options).run()


def warn_if_reachable(host: str) -> None:
    """One line on stderr when `host` is not a loopback address: anyone on the network can then use the API,
    which has no authentication or TLS (SECURITY.md)."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only localhost is known to stay on this machine
        loopback = host == "localhost"
    if not loopback:
        click.echo(f"moodlens: warning: listening on {host} is reachable from the network, with no "
                   "authentication or TLS; see SECURITY.md (a reverse proxy in front, --proxies 1)", err=True)


def check_can_listen(host: str, port: int) -> None:
    """Bind (host, port) once the way gunicorn will (SO_REUSEADDR), so that a port in use, or an address not on
    this machine, is a one-line error at once; gunicorn would retry for 5 s, logging each attempt. Port 0
    (any free port) cannot be taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:  # socket.gaierror (an unknown host name) included
            why = ("the port is in use (another server? choose another --port)" if exc.errno == errno.EADDRINUSE
                   else exc.strerror or str(exc))
            raise click.ClickException(f"cannot listen on {host} port {port}: {why}") from None
