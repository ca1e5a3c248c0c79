"""Slow and idle clients never hold `moodlens serve` (issue 13 item 2): raw sockets against a real server.

Each attack runs while /api/v1/health is probed once a second on a fresh connection; every probe must answer
200 within 1 s. The server runs as in production (gunicorn, 2 workers x 2 threads, real models).
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from live_server import Server

pytestmark = pytest.mark.slow

BODY_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from live_server import serve

    with serve("--workers", "2", "--threads", "2", "--body-timeout", str(BODY_TIMEOUT), "--rate-limit", "0",
               log_dir=tmp_path_factory.mktemp("serve")) as s:
        yield s


def probe(server: Server) -> float:
    """Seconds one GET /api/v1/health took (inf when it failed or took over 1 s)."""
    start = time.monotonic()
    try:
        status, _, _ = server.request("GET", "/api/v1/health", timeout=1)
    except OSError:
        return float("inf")
    return time.monotonic() - start if status == 200 else float("inf")


def connect(server: Server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=30)


def probes_during(server: Server, seconds: float, step=None) -> list[float]:
    """Probe once a second for `seconds`, calling `step()` (the attack's next move) before each probe."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if step is not None:
            step()
        times.append(probe(server))
        time.sleep(max(0.0, 1 - (times[-1] if times[-1] < 1 else 1)))
    return times


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def test_200_idle_sockets_do_not_hold_the_server(server):
    socks = [connect(server) for _ in range(200)]
    try:
        times = probes_during(server, 8)
    finally:
        close_all(socks)
    assert max(times) < 1, times


def test_8_clients_trickling_headers_do_not_hold_the_server(server):
    socks = [connect(server) for _ in range(8)]
    for s in socks:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n")
    n = iter(range(10_000))

    def trickle() -> None:
        i = next(n)
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(f"X-Slow-{i}: {'a' * 10}\r\n".encode())

    try:
        times = probes_during(server, 8, trickle)
    finally:
        close_all(socks)
    assert max(times) < 1, times


def test_trickled_body_gets_408_after_the_body_timeout(server):
    """One byte every 0.5 s never lets a socket timeout fire; the body timeout (3 s) is for the whole body."""
    sock = connect(server)
    sock.sendall(b"POST /api/v1/analyze HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    start = time.monotonic()
    sock.settimeout(0.5)
    answer = b""
    try:
        while time.monotonic() - start < BODY_TIMEOUT + 5:
            try:
                sock.sendall(b"\xff")
            except OSError:
                pass
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            answer += data
            if b"\r\n\r\n" in answer and b"}" in answer:
                break
    finally:
        sock.close()
    took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"/api#request-timeout" in answer
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + 2.5, took


def test_8_trickled_bodies_do_not_hold_the_server(server):
    socks = [connect(server) for _ in range(8)]
    for s in socks:
        s.sendall(b"POST /api/v1/analyze HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 100000\r\n\r\n")

    def trickle() -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(b"\xff")

    try:
        times = probes_during(server, BODY_TIMEOUT + 3, trickle)
    finally:
        close_all(socks)
    assert max(times) < 1, times
