"""The bad-input corpus (tests/bad_inputs.py) through every front end: the API (Flask test client and a real
gunicorn server), `moodlens analyze` on a folder of it, and `moodlens batch`. Each case gets its precise 4xx
problem (or 200 for a valid-but-odd image), never a 500, and the server still answers afterwards."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bad_inputs import image_cases, multipart, request_cases, write_corpus
from moodlens.web import create_app

pytest.importorskip("skimage")

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options")
CASES = request_cases()
SIZES = {c.name: c.size for c in image_cases() if c.size}

# On disk as well: names a browser or a phone may produce
EXTRA_NAMES = ["фото 😀 写真 é.jpg", "x" * 200 + ".jpg", "spaces and 'quotes' \"here\".png", "-starts-with-dash.jpg"]


@pytest.fixture(scope="module")
def client():
    return create_app({"MOODLENS_RATE_LIMIT": 0}).test_client()


#: Words of the decoders (Pillow, libheif, zlib) that must never reach a user: each failure kind has its own
#: message in plain words, and what the decoder said goes to the server log only
DECODER_WORDS = ("cannot identify", "image file is truncated", "bytes not processed", "decompression bomb",
                 "DOS attack", "Security limit", "libheif", "MAX_TEXT_CHUNK", "broken data stream", "PIL", "Pillow",
                 "zlib", "cv2", "Traceback")


def decoder_says(data: bytes) -> str | None:
    """What Pillow itself says when it opens and loads `data` (None: it does not complain)."""
    import io

    from PIL import Image

    import moodlens.engine.decode  # noqa: F401  (the HEIF plugin)

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:
        return " ".join(str(exc).split())
    return None


def assert_plain_words(message: str, data: bytes) -> None:
    """`message` (an API detail, a CLI or batch error) carries none of the decoder's own text."""
    said = decoder_says(data)
    assert not said or said not in message, (message, said)
    assert not [w for w in DECODER_WORDS if w.lower() in message.lower()], message


def check_answer(case, status: int, content_type: str, body: bytes) -> dict:
    """The answer `case` must get: its status, and a complete problem+json for a 4xx (JSON result for a 200)."""
    assert status == case.status, (case.name, status, body[:300])
    doc = json.loads(body)
    if status == 200:
        assert content_type == "application/json"
        assert {"width", "height", "faces", "classes"} <= set(doc)
        stem = case.name.removeprefix("multipart-").removeprefix("raw-")
        if stem in SIZES:
            assert (doc["width"], doc["height"]) == SIZES[stem], case.name
    else:
        assert content_type == "application/problem+json", (case.name, content_type)
        assert PROBLEM_KEYS <= set(doc) and doc["status"] == status and doc["detail"], doc
        assert doc["type"] == f"/api#{case.slug}", (case.name, doc)
        assert "Traceback" not in doc["detail"] and 'File "' not in doc["detail"]
        assert not [w for w in DECODER_WORDS if w.lower() in doc["detail"].lower()], doc["detail"]
    return doc


BAD_IMAGES = [c for c in image_cases() if not c.ok]


def test_each_failure_kind_has_one_message_in_plain_words(client):
    """Issue 12: a corrupt file says so in words, not in the decoder's ("(image file is truncated (3 bytes not
    processed))"); every corrupt or cut-short file gets the same sentence, every non-image the same one."""
    details: dict[str, set[str]] = {}
    for case in BAD_IMAGES:
        resp = client.post("/api/v1/analyze", data=case.data, content_type="image/jpeg")
        detail = resp.get_json(force=True)["detail"]
        assert_plain_words(detail, case.data)
        details.setdefault(case.slug, set()).add(detail)
    assert len(details["truncated-image"]) == 1 and len(details["not-an-image"]) == 1, details
    assert len(details["image-too-small"]) <= 2 and len(details["too-large"]) <= 4  # sizes in numbers, no more


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_api_answers_each_bad_input_precisely(client, case):
    kwargs = {"data": case.body}
    if case.content_type is not None:
        kwargs["content_type"] = case.content_type
    resp = client.post("/api/v1/analyze", **kwargs)
    check_answer(case, resp.status_code, resp.mimetype, resp.get_data())
    for name in SECURITY_HEADERS:
        assert name in resp.headers, (case.name, name)


def test_corpus_is_broad():
    """What notes/hardening.md counts: every image case, both ways of sending it, and the request-level ones."""
    cases = image_cases()
    assert len(cases) >= 30 and len(CASES) >= 2 * len(cases) + 20
    assert {c.status for c in CASES} == {200, 400, 413, 415, 422}
    assert len({c.name for c in CASES}) == len(CASES)


# --- a real gunicorn server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from live_server import serve

    with serve("--workers", "1", "--threads", "2", "--rate-limit", "0",
               log_dir=tmp_path_factory.mktemp("serve")) as s:
        yield s


def test_live_server_answers_the_whole_corpus_and_stays_healthy(server):
    for case in CASES:
        status, headers, body = server.request("POST", "/api/v1/analyze", case.body, case.content_type)
        check_answer(case, status, headers.get("content-type", "").split(";")[0], body)
        assert "content-security-policy" in headers
    assert server.healthy()
    assert server.proc.poll() is None
    log = server.log.read_text()
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log, log[-3000:]


RAW_REQUESTS = {
    "garbage-request-line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "bad-content-length": b"POST /api/v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                          b"Content-Length: abc\r\n\r\n",
    "negative-content-length": b"POST /api/v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                               b"Content-Length: -5\r\n\r\n",
    "length-and-chunked": b"POST /api/v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                          b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST /api/v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "huge-header": b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "too-many-headers": b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n"
                        + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
    "long-url": b"GET /api/v1/health?" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul-in-path": b"GET /api/v1/\x00health HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", list(RAW_REQUESTS))
def test_live_server_refuses_malformed_http(server, name):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(RAW_REQUESTS[name])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"" or b" 4" in status_line, (name, status_line)  # refused or closed, never a 5xx
    assert server.healthy(), name


# --- the CLI and batch on a folder of the corpus ---------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("corpus")
    cases = write_corpus(folder)
    good = next(c for c in image_cases() if c.name == "png-named-jpg")
    for name in EXTRA_NAMES:
        (folder / name).write_bytes(good.data)
        cases[name] = good
    return folder, cases


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_analyze_reports_each_bad_file_and_completes(corpus, workers):
    folder, cases = corpus
    if workers == 1:
        from moodlens.cli import main

        result = CliRunner().invoke(main, ["analyze", "--workers", "1", "-q", str(folder)], catch_exceptions=False)
        code, stdout, stderr = result.exit_code, result.stdout, ""
    else:  # for real, with a process pool
        proc = subprocess.run([sys.executable, "-m", "moodlens", "analyze", "--workers", str(workers), str(folder)],
                              capture_output=True, text=True, timeout=300)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        assert f"{len(cases)} images" in stderr and "Traceback" not in stderr
    assert code == 1  # some inputs failed; the run still went through all of them
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert sorted(by_name) == sorted(cases) and len(records) == len(cases)
    for name, case in cases.items():
        r = by_name[name]
        if case.error:
            assert r["error"] and r["error"].split(":")[0] == case.error, (name, r["error"])
            assert r["faces"] == [] and "\n" not in r["error"]
            assert_plain_words(r["error"], case.data)
        else:
            assert r["error"] is None, (name, r["error"])


def test_batch_gives_an_error_row_per_bad_image(corpus, tmp_path):
    pytest.importorskip("pyarrow")
    from moodlens.jobs.batch import run_batch

    folder, cases = corpus
    out = tmp_path / "out.jsonl"
    summary = run_batch(str(folder), str(out), workers=1, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_name: dict[str, list] = {}
    for r in rows:
        by_name.setdefault(Path(r["path"]).name, []).append(r)
    assert sorted(by_name) == sorted(cases)
    bad = {n for n, c in cases.items() if c.error}
    for name in bad:
        (row,) = by_name[name]
        assert row["error"].split(":")[0] == cases[name].error and row["face_index"] is None, (name, row)
        assert_plain_words(row["error"], cases[name].data)
    for name in set(cases) - bad:
        assert all(r["error"] is None for r in by_name[name]), name
    assert summary.images == len(cases) and summary.errors == len(bad)


def test_odd_multipart_through_the_live_server(server):
    """Several files, a missing field and a 20 kB filename, sent for real (no test-client shortcuts)."""
    good = next(c for c in image_cases() if c.name == "png-named-jpg").data
    for parts, status in [([("image", "a.png", good), ("image", "b.png", good)], 400),
                          ([("file", "a.png", good)], 400),
                          ([("image", "é" * 10000 + ".png", good)], 200)]:
        body, ctype = multipart(parts)
        got, _, _ = server.request("POST", "/api/v1/analyze", body, ctype)
        assert got == status
    assert server.healthy()
