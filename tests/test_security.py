"""The promises of SECURITY.md, tested: uploads never touch the disk, size and time limits are enforced before and
while the body is read, per-client rate limit with Retry-After, security headers on every response, no debug
mode or stack trace in any answer, and batch/CLI paths that never escape their folder, list or bucket."""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bad_inputs import image_case, multipart
from moodlens.jobs import storage
from moodlens.web import create_app

pytest.importorskip("skimage")

_addresses = itertools.count(1)


def client_address() -> dict[str, str]:
    """A fresh client address for the live server (it trusts one proxy), so rate limits never mix tests."""
    n = next(_addresses)
    return {"X-Forwarded-For": f"10.9.{n // 250}.{n % 250 + 1}"}


def good_photo() -> bytes:
    return image_case("png-named-jpg").data


def big_jpeg() -> bytes:
    """A real photo over Werkzeug's 500 kB spooling threshold (it would go to a temporary file by default)."""
    import numpy as np
    from PIL import Image

    from bad_inputs import photo

    rgb = np.kron(photo(512), np.ones((3, 3, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=97)
    assert len(buf.getvalue()) > 600_000
    return buf.getvalue()


# --- a live server: 1 MB uploads, 1.5 s to send a body, 2 requests/s per client, an empty TMPDIR ---------------


@pytest.fixture(scope="module")
def tmpdir_for_server(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tmpdir_for_server):
    from live_server import serve

    with serve("--workers", "1", "--threads", "2", "--max-upload-mb", "2", "--body-timeout", "1.5",
               "--rate-limit", "2", "--burst", "3", "--proxies", "1",
               env={"TMPDIR": str(tmpdir_for_server)}, log_dir=tmp_path_factory.mktemp("serve")) as s:
        yield s


def process_tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for c in children for p in process_tree(int(c))]


def open_files_under(pids: list[int], folder: Path) -> list[str]:
    """Files the processes hold open under `folder`, unlinked ones included ("/dir/#123 (deleted)")."""
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(folder)):
                found.append(target)
    return found


def raw_connection(server, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=20)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def head(path: str, content_type: str, length: int | None, extra: str = "") -> str:
    xff = client_address()["X-Forwarded-For"]
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {xff}\r\nContent-Type: {content_type}\r\n"
            f"{size}{extra}")


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    header, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in header.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(header.split(b" ")[1]), header + b"\r\n\r\n" + rest


def test_uploads_never_touch_the_disk(server, tmpdir_for_server):
    """Mid-upload (1 MB of 1.6 MB sent) no server process holds a file in TMPDIR, not even an unlinked one (which
    is what Werkzeug's default spooling makes, invisible to `ls`); afterwards TMPDIR is still empty."""
    photo = big_jpeg()
    body, ctype = multipart([("image", "../../../etc/cron.d/x.jpg", photo)])
    for content_type, payload in [(ctype, body), ("image/jpeg", photo)]:
        sock = raw_connection(server, head("/api/v1/analyze", content_type, len(payload)), payload[:1_000_000])
        time.sleep(0.4)  # the server is reading the body now
        assert open_files_under(process_tree(server.proc.pid), tmpdir_for_server) == []
        sock.sendall(payload[1_000_000:])
        status, answer = read_response(sock)
        sock.close()
        assert status == 200, answer[-300:]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["width"] == 1536
    for case in ("truncated-jpeg", "bomb-30000", "zip", "cmyk-jpeg"):
        b, t = multipart([("image", f"{case}.jpg", image_case(case).data)])
        server.request("POST", "/api/v1/analyze", b, t, headers=client_address())
    assert os.listdir(tmpdir_for_server) == []


def test_the_file_part_is_a_bytesio():
    app = create_app({"MOODLENS_RATE_LIMIT": 0})
    body, ctype = multipart([("image", "big.jpg", big_jpeg())])
    with app.test_request_context("/api/v1/analyze", method="POST", data=body, content_type=ctype):
        from flask import request

        assert type(request.files["image"].stream) is io.BytesIO


@pytest.mark.parametrize("content_type", ["image/jpeg", f"multipart/form-data; boundary={'b' * 20}"])
def test_oversize_body_gets_413_before_it_is_read(server, content_type):
    """Content-Length says 100 MB, 1 kB arrives, then nothing: the 413 comes at once, not after a timeout."""
    sock = raw_connection(server, head("/api/v1/analyze", content_type, 100 * 2**20), b"\xff\xd8\xff" + b"x" * 1000)
    start = time.monotonic()
    status, answer = read_response(sock)
    assert status == 413 and time.monotonic() - start < 1.0
    assert b"application/problem+json" in answer and b'"max_bytes": 2097152' in answer
    assert server.healthy()  # while that client still holds its connection
    sock.close()


def test_stalled_bodies_get_408_and_never_hold_the_server(server):
    """Three clients send headers and a few bytes of a body, then stall (more than the server's 2 threads):
    each gets 408 after the 1.5 s body timeout, and the server keeps answering."""
    photo = good_photo()
    socks = [raw_connection(server, head("/api/v1/analyze", "image/png", len(photo)), photo[:100]),
             raw_connection(server, head("/api/v1/analyze", "multipart/form-data; boundary=x", 50_000), b"--x\r\n"),
             raw_connection(server, head("/api/v1/analyze", "image/png", None), b"64\r\n" + photo[:100])]
    start = time.monotonic()
    time.sleep(0.2)
    assert server.healthy(timeout=15)
    for sock in socks:
        status, answer = read_response(sock)
        sock.close()
        assert status == 408, answer[:200]
        assert b"/api#request-timeout" in answer
    assert time.monotonic() - start < 15
    ok, _, _ = server.request("POST", "/api/v1/analyze", photo, "image/png", headers=client_address())
    assert ok == 200


def test_malformed_chunked_body_is_a_400(server):
    sock = raw_connection(server, head("/api/v1/analyze", "image/png", None), b"zz\r\nabc\r\n0\r\n\r\n")
    status, answer = read_response(sock)
    sock.close()
    assert status == 400 and b"/api#bad-request" in answer


def test_rate_limit_per_client_with_retry_after(server):
    me, other = client_address(), client_address()
    statuses = [server.request("GET", "/api/v1/model", headers=me)[0] for _ in range(3)]
    assert statuses[:3] == [200, 200, 200]
    status, headers, body = server.request("GET", "/api/v1/model", headers=me)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "/api#rate-limited"
    assert server.request("GET", "/api/v1/model", headers=other)[0] == 200  # per client
    assert all(server.request("GET", "/api/v1/health", headers=me)[0] == 200 for _ in range(5))  # never limited


def test_rate_limit_is_configurable():
    # a slow refill (one token per 20 s), so how long the six requests take cannot change the count
    app = create_app({"MOODLENS_RATE_LIMIT": 0.05, "MOODLENS_RATE_BURST": 5})
    client = app.test_client()
    assert [client.get("/api/v1/model").status_code for _ in range(6)].count(429) == 1
    unlimited = create_app({"MOODLENS_RATE_LIMIT": 0}, analyzer=app.extensions["moodlens"].get()).test_client()
    assert all(unlimited.get("/api/v1/model").status_code == 200 for _ in range(60))


# --- one rate limit for all workers; only the configured proxy hop is trusted --------------------------------


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two workers, 4 requests a client at once then one every 20 s (so the test's own pace cannot refill)."""
    from live_server import serve

    with serve("--workers", "2", "--threads", "2", "--rate-limit", "0.05", "--burst", "4", "--proxies", "1",
               log_dir=tmp_path_factory.mktemp("serve")) as s:
        yield s


def concurrently(server, n: int, headers_for) -> list[int]:
    """Statuses of `n` GET /api/v1/model sent at once, each on its own connection (so both workers take some)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: server.request("GET", "/api/v1/model", headers=headers_for(i))[0], range(n)))


def test_rate_limit_is_one_for_all_workers(two_workers):
    """Was a bucket per worker: with 2 workers a client got twice its burst and twice the rate."""
    me = client_address()
    statuses = concurrently(two_workers, 16, lambda i: me)
    assert statuses.count(200) == 4 and statuses.count(429) == 12, statuses
    assert concurrently(two_workers, 4, lambda i: client_address()) == [200] * 4  # others are not affected


def test_a_forged_leftmost_forwarded_for_does_not_change_who_the_client_is(two_workers):
    """The proxy appends the address it sees; what the client wrote before it is not who the client is."""
    real = client_address()["X-Forwarded-For"]
    statuses = concurrently(two_workers, 12, lambda i: {"X-Forwarded-For": f"198.51.100.{i + 1}, {real}"})
    assert statuses.count(200) == 4, statuses


def test_forwarded_headers_only_from_the_trusted_proxy():
    """A client that reaches the server past its proxy cannot pick a fresh address per request."""
    app = create_app({"MOODLENS_RATE_LIMIT": 0.05, "MOODLENS_RATE_BURST": 2, "MOODLENS_PROXIES": 1,
                      "MOODLENS_TRUSTED_PROXIES": ["10.0.0.5", "192.168.0.0/16"]})
    client = app.test_client()
    direct = [client.get("/api/v1/model", environ_base={"REMOTE_ADDR": "203.0.113.7"},
                         headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(4)]
    assert direct == [200, 200, 429, 429]
    for proxy in ("10.0.0.5", "192.168.3.4"):  # through a trusted proxy: one bucket per forwarded client
        via = [client.get("/api/v1/model", environ_base={"REMOTE_ADDR": proxy},
                          headers={"X-Forwarded-For": f"203.0.113.7, 198.51.100.{i}"}).status_code for i in range(4)]
        assert via == [200] * 4, proxy
    from moodlens.web.security import TrustedProxyFix

    fix = TrustedProxyFix(None, 1)  # the default: loopback only, IPv4-mapped IPv6 too
    assert [fix.trusts(p) for p in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "::ffff:10.0.0.1", "", None,
                                    "unix")] == [True, True, True, False, False, False, False, False]
    with pytest.raises(ValueError, match="not 'proxy.example'"):
        create_app({"MOODLENS_PROXIES": 1, "MOODLENS_TRUSTED_PROXIES": ["proxy.example"]},
                   analyzer=app.extensions["moodlens"].get())


def test_limiter_buckets_are_shared_with_forked_processes():
    from moodlens.web.security import TokenBucketLimiter

    limiter = TokenBucketLimiter(rate=0.001, burst=3)
    assert limiter.take("a", now=100.0)[0]
    pid = os.fork()
    if pid == 0:  # the child spends the rest of a's burst
        code = 0 if [limiter.take("a", now=100.0)[0] for _ in range(2)] == [True, True] else 1
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert limiter.take("a", now=100.0)[0] is False and limiter.take("b", now=100.0)[0] is True


# --- redirects stay on this site -------------------------------------------------------------------------------


@pytest.mark.parametrize("path, location", [("/static//style.css", "/static/style.css"),
                                            ("/api//docs?x=1", "/api/docs?x=1"), ("/api/v1//health", "/api/v1/health")])
def test_merged_slash_redirects_are_relative(path, location):
    app = create_app({"MOODLENS_RATE_LIMIT": 0, "MOODLENS_PROXIES": 1})
    base, _, query = path.partition("?")
    for headers in ({"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example"}):
        resp = app.test_client().get("/", environ_overrides={"PATH_INFO": base, "QUERY_STRING": query},
                                     headers=headers)
        assert resp.status_code == 308 and resp.headers["Location"] == location
        assert "evil" not in resp.get_data(as_text=True)


def test_live_redirects_never_name_the_host_header(server):
    for path in ("/api//docs", "//api//docs", "/static//style.css"):
        status, headers, body = server.request("GET", path, headers={"Host": "evil.example", **client_address()})
        assert status in (308, 404), (path, status)
        if status == 308:
            assert headers["location"].startswith("/") and not headers["location"].startswith("//")
        assert b"evil" not in body and "evil" not in headers.get("location", ""), path


def test_live_responses_carry_security_headers(server):
    for method, path, body, ctype in [("GET", "/", None, None), ("GET", "/api/v1/health", None, None),
                                      ("GET", "/missing", None, None), ("POST", "/api/v1/analyze", b"x", "text/plain"),
                                      ("DELETE", "/api/v1/analyze", None, None)]:
        _, headers, _ = server.request(method, path, body, ctype, headers=client_address())
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


# --- headers, debug mode, internal errors (test client) --------------------------------------------------------


class ExplodingAnalyzer:
    classes = ("angry", "happy", "neutral", "sad")
    model_card: dict = {}

    def analyze(self, data, explain=False):
        raise RuntimeError("secret-token-123 at /srv/moodlens/config.py line 7")


@pytest.fixture()
def exploding_app():
    app = create_app({"MOODLENS_RATE_LIMIT": 1, "MOODLENS_RATE_BURST": 1, "MAX_CONTENT_LENGTH": 1000,
                      "DEBUG": True, "PROPAGATE_EXCEPTIONS": True, "TESTING": False}, analyzer=ExplodingAnalyzer())

    @app.get("/boom")
    def boom():
        raise KeyError("secret-token-123")

    return app


def every_kind_of_response(app):
    """One response of each kind the app gives: pages, static, JSON, 4xx problems of each kind, 429, 500."""
    c = app.test_client()
    env = {"REMOTE_ADDR": "10.0.0.1"}
    yield "page", c.get("/")
    yield "static", c.get("/static/style.css")
    yield "health", c.get("/api/v1/health")
    yield "openapi", c.get("/api/v1/openapi.json", environ_base=env)
    yield "429", c.get("/api/v1/model", environ_base=env)
    yield "404 page", c.get("/nope")
    yield "404 api", c.get("/api/v1/nope", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    yield "405", c.put("/api/v1/analyze", environ_base={"REMOTE_ADDR": "10.0.0.3"})
    yield "413", c.post("/api/v1/analyze", data=b"x" * 2000, content_type="image/png",
                        environ_base={"REMOTE_ADDR": "10.0.0.4"})
    yield "415", c.post("/api/v1/analyze", data=b"x", content_type="text/plain",
                        environ_base={"REMOTE_ADDR": "10.0.0.5"})
    yield "500 api", c.post("/api/v1/analyze", data=good_photo()[:900], content_type="image/png",
                            environ_base={"REMOTE_ADDR": "10.0.0.6"})
    yield "500 page", c.get("/boom")
    yield "HEAD", c.head("/")
    yield "OPTIONS", c.options("/api/v1/analyze", environ_base={"REMOTE_ADDR": "10.0.0.7"})


def test_security_headers_on_every_kind_of_response(exploding_app):
    seen = set()
    for kind, resp in every_kind_of_response(exploding_app):
        h = resp.headers
        csp = h.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, kind
        assert h.get("X-Content-Type-Options") == "nosniff", kind
        assert h.get("Referrer-Policy") == "no-referrer", kind
        assert h.get("X-Frame-Options") == "DENY", kind
        seen.add(resp.status_code)
        resp.close()
    assert {200, 404, 405, 413, 415, 429, 500} <= seen


def test_no_debug_mode_and_no_stack_traces(exploding_app):
    assert not exploding_app.debug and not exploding_app.config["PROPAGATE_EXCEPTIONS"]
    for kind, resp in every_kind_of_response(exploding_app):
        text = resp.get_data(as_text=True)
        for leak in ("Traceback", "secret-token", "RuntimeError", "KeyError", "/srv/moodlens", "Werkzeug Debugger",
                     'File "'):
            assert leak not in text, (kind, leak)
        if kind.startswith("500"):
            assert resp.status_code == 500
        if kind == "500 api":
            body = resp.get_json(force=True)
            assert resp.mimetype == "application/problem+json" and body["type"] == "/api#internal-error"
            assert body["detail"] == "Something went wrong on the server; it has been logged."
        resp.close()


# --- batch and CLI paths stay inside their folder / list / bucket ------------------------------------------------


@pytest.mark.parametrize("entry", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "file:///etc/passwd",
                                   "C:\\Windows\\win.ini", "..\\outside.jpg", "s3://bucket/a/../../b.jpg",
                                   "  ../outside.jpg  "])
def test_batch_list_file_entries_cannot_escape(tmp_path, entry):
    pytest.importorskip("pyarrow")
    from moodlens.cli import main

    (tmp_path / "outside.jpg").write_bytes(good_photo())
    (tmp_path / "list").mkdir()
    listing = tmp_path / "list" / "photos.txt"
    listing.write_text(f"ok.jpg\n{entry}\n")
    dest = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(listing), str(dest), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1 and "line 2" in result.output and "Traceback" not in result.output
    assert not dest.exists() and not Path(str(dest) + ".parts").exists()


def test_batch_folder_never_reads_outside_or_blocks(tmp_path):
    """Symlinks out of the folder are skipped; a FIFO, a device or a 30 MB file posing as photos are error rows,
    read without blocking and without reading past the byte limit. Run as a subprocess: a hang is a failure."""
    pytest.importorskip("pyarrow")
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(good_photo())
    (tmp_path / "secret.jpg").write_bytes(good_photo())
    (root / "link-out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "dir-out").symlink_to(tmp_path)
    (root / "sub" / "link-in.png").symlink_to(root / "ok.png")
    os.mkfifo(root / "pipe.jpg")
    with open(root / "huge.jpg", "wb") as f:  # sparse: 30 MB on paper, nothing on disk
        f.truncate(30 * 2**20)
    listing = root / "list.txt"
    (root / "zero.jpg").symlink_to("/dev/zero")  # leads outside: the folder skips it, a list naming it is refused
    listing.write_text("ok.png\npipe.jpg\nhuge.jpg\n")
    for src, expected in [(root, {"ok.png", "pipe.jpg", "huge.jpg", "sub/link-in.png"}),
                          (listing, {"ok.png", "pipe.jpg", "huge.jpg"})]:
        dest = tmp_path / f"{Path(src).stem}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "moodlens", "batch", str(src), str(dest), "--workers", "1",
                               "--no-progress"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr[-2000:]  # some images failed: their rows say why
        rows = {os.path.relpath(r["path"], root): r for r in map(json.loads, dest.read_text().splitlines())}
        assert set(rows) == expected
        assert rows["ok.png"]["error"] is None
        assert rows["pipe.jpg"]["error"].startswith("OSError") and "not a regular file" in rows["pipe.jpg"]["error"]
        assert rows["huge.jpg"]["error"].startswith("ImageTooLargeError")


def test_read_bytes_is_bounded_and_regular_files_only(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(50 * 2**20)
    assert len(storage.read_bytes(str(big), max_bytes=1000)) == 1001  # enough to tell it is over the limit
    assert len(storage.read_bytes(str(big))) == 50 * 2**20
    os.mkfifo(tmp_path / "fifo")
    for special in (tmp_path / "fifo", Path("/dev/zero"), tmp_path):
        with pytest.raises(OSError, match="not a regular file|Is a directory"):
            storage.read_bytes(str(special))


def test_cli_annotate_writes_only_inside_its_folder(tmp_path):
    from moodlens.cli import main

    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "p.png").write_bytes(good_photo())
    (root / "q.jpg").write_bytes(good_photo())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "r.png").write_bytes(good_photo())
    out = tmp_path / "annotated"
    before = {p for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(main, ["analyze", "--workers", "1", "-q", "--annotate", str(out), str(root),
                                       str(root / "a" / ".." / ".." / "elsewhere" / "r.png")])
    assert result.exit_code == 0, result.output
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new), sorted(map(str, new))
    assert {str(p.relative_to(out)) for p in new if p.is_file()} == {"a/b/p.png", "q.jpg", "r.png"}


def test_reflected_paths_are_escaped(exploding_app):
    client = exploding_app.test_client()
    page = client.get("/%3Cscript%3Ealert(1)%3C/script%3E")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "<script>alert" not in page.get_data(as_text=True)
    api = client.get("/api/v1/%3Cimg%20src=x%3E", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert api.mimetype == "application/problem+json" and api.headers["X-Content-Type-Options"] == "nosniff"
