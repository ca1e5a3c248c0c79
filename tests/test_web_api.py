"""The web app through Flask's test client, with the real analyzer and real images: every endpoint, every
error, the headers, the OpenAPI document, and that uploads never touch the disk."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest

from moodlens.web import create_app
from web_helpers import astronaut, coffee, jpeg, png

pytest.importorskip("skimage")

CLASSES_4 = ["angry", "happy", "neutral", "sad"]
PROBLEM_KEYS = {"type", "title", "status", "detail"}


@pytest.fixture(scope="module")
def app():
    return create_app({"MOODLENS_RATE_LIMIT": 0})


@pytest.fixture(scope="module")
def analyzer(app):
    return app.extensions["moodlens"].get("4")


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    return jpeg(astronaut())


@pytest.fixture(scope="module")
def no_face_jpeg() -> bytes:
    return jpeg(coffee())


def post_file(client, data: bytes, name: str = "photo.jpg", query: str = "", **fields):
    return client.post(f"/api/v1/analyze{query}", data={"image": (io.BytesIO(data), name), **fields})


def post_raw(client, data: bytes, content_type: str = "image/jpeg", query: str = ""):
    return client.post(f"/api/v1/analyze{query}", data=data, content_type=content_type)


def assert_problem(resp, status: int, slug: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json(force=True)
    assert PROBLEM_KEYS <= set(body), body
    assert body["status"] == status
    assert body["detail"] and "Traceback" not in resp.get_data(as_text=True)
    if slug:
        assert body["type"] == f"/api#{slug}", body
    return body


# --- analyze -----------------------------------------------------------------------------------------------


def assert_one_face(body: dict, classes: list[str] = CLASSES_4) -> dict:
    assert body["width"] == 512 and body["height"] == 512
    assert body["classes"] == classes
    assert len(body["faces"]) >= 1
    face = max(body["faces"], key=lambda f: f["score"])
    x, y, w, h = face["box"]
    assert 0 <= x < 512 and 0 <= y < 512 and 20 < w < 400 and 20 < h < 400
    assert 120 < x + w / 2 < 330 and 40 < y + h / 2 < 260  # the astronaut's face, upper middle
    assert face["expression"] in classes
    assert list(face["scores"]) == classes
    assert sum(face["scores"].values()) == pytest.approx(1, abs=1e-3)
    assert face["expression"] == max(face["scores"], key=face["scores"].get)
    assert isinstance(face["uncertain"], bool)
    assert "heatmap" not in face
    return face


def test_analyze_multipart(client, face_jpeg):
    resp = post_file(client, face_jpeg)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Server-Timing"].startswith("analyze;dur=")
    assert_one_face(resp.get_json())


def test_analyze_raw_body_same_as_multipart(client, face_jpeg):
    a, b = post_raw(client, face_jpeg), post_file(client, face_jpeg)
    assert a.status_code == 200
    fa, fb = a.get_json()["faces"], b.get_json()["faces"]
    assert [f["box"] for f in fa] == [f["box"] for f in fb]
    assert [f["scores"] for f in fa] == [f["scores"] for f in fb]


def test_analyze_png_and_declared_type_is_not_trusted(client):
    resp = post_file(client, png(astronaut()), name="photo.txt")
    assert resp.status_code == 200
    assert_one_face(resp.get_json())


def test_no_face(client, no_face_jpeg):
    resp = post_file(client, no_face_jpeg)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["faces"] == [] and (body["width"], body["height"]) == (600, 400)


def test_explain_adds_heatmap(client, face_jpeg):
    resp = post_file(client, face_jpeg, query="?explain=1")
    assert resp.status_code == 200
    face = max(resp.get_json()["faces"], key=lambda f: f["score"])
    grid = np.asarray(face["heatmap"], dtype=float)
    assert grid.ndim == 2 and min(grid.shape) >= 2
    assert grid.min() >= 0 and grid.max() <= 1


@pytest.mark.parametrize("how", ["query", "form"])
def test_seven_classes(app, client, face_jpeg, how):
    pool = app.extensions["moodlens"]
    resp = post_file(client, face_jpeg, query="?classes=7") if how == "query" else \
        post_file(client, face_jpeg, classes="7")
    assert resp.status_code == 200
    assert_one_face(resp.get_json(), ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])
    seven = pool.get("7")
    post_file(client, face_jpeg, query="?classes=7")
    assert pool.get("7") is seven and "7" in pool.loaded  # built once, then reused


@pytest.mark.parametrize("how", ["query", "form"])
def test_photos_model_on_request(app, client, face_jpeg, how):
    """`model=photos` answers from the photos model (4 classes), built once beside the default."""
    pool = app.extensions["moodlens"]
    resp = post_file(client, face_jpeg, query="?model=photos") if how == "query" else \
        post_file(client, face_jpeg, model="photos")
    assert resp.status_code == 200
    photos = pool.get("photos")
    assert photos is not pool.get("4") and photos.model_card["name"] == "moodlens expression-4-photos"
    face = assert_one_face(resp.get_json())
    default = assert_one_face(post_file(client, face_jpeg).get_json())
    assert face["box"] == default["box"] and face["scores"] != default["scores"]  # same face, the other net
    assert post_file(client, face_jpeg, query="?model=photos&classes=4").status_code == 200
    assert post_file(client, face_jpeg, query="?model=&classes=7").get_json()["classes"][1] == "disgust"
    assert pool.get("photos") is photos and "photos" in client.get("/api/v1/health").get_json()["loaded"]


def test_analyzer_built_once_at_creation(app, client, analyzer, face_jpeg):
    pool = app.extensions["moodlens"]
    assert pool.loaded[0] == "4" and pool.get() is analyzer
    for _ in range(2):
        post_raw(client, face_jpeg)
    assert pool.get() is analyzer


# --- errors ------------------------------------------------------------------------------------------------


def test_missing_field(client, face_jpeg):
    resp = client.post("/api/v1/analyze", data={"file": (io.BytesIO(face_jpeg), "a.jpg")})
    assert "`image`" in assert_problem(resp, 400, "missing-image")["detail"]


def test_field_is_text_not_file(client):
    resp = client.post("/api/v1/analyze", data={"image": "hello"}, content_type="multipart/form-data")
    assert "not text" in assert_problem(resp, 400, "missing-image")["detail"]


def test_several_files_in_one_field(client, face_jpeg):
    files = [(io.BytesIO(face_jpeg), "a.jpg"), (io.BytesIO(face_jpeg), "b.jpg")]
    assert_problem(client.post("/api/v1/analyze", data={"image": files}), 400, "several-images")


def test_empty_file_and_empty_body(client):
    assert_problem(post_file(client, b""), 400, "empty-image")
    assert_problem(post_raw(client, b""), 400, "empty-image")


def test_malformed_multipart(client):
    resp = client.post("/api/v1/analyze", data=b"--x\r\nnot really multipart",
                       content_type="multipart/form-data; boundary=x")
    assert_problem(resp, 400)
    resp = client.post("/api/v1/analyze", data=b"abc", content_type="multipart/form-data")  # no boundary
    assert_problem(resp, 400)


@pytest.mark.parametrize("query, name", [("?classes=5", "classes"), ("?classes=four", "classes"),
                                         ("?explain=maybe", "explain"), ("?min_face_score=2", "min_face_score"),
                                         ("?min_face_score=high", "min_face_score"),
                                         ("?min_face_score=nan", "min_face_score"), ("?model=fast", "model"),
                                         ("?model=photos&classes=7", "classes")])
def test_bad_options(client, face_jpeg, query, name):
    assert f"`{name}`" in assert_problem(post_file(client, face_jpeg, query=query), 400, "bad-option")["detail"]


def test_min_face_score_and_quality_in_the_answer(client, face_jpeg):
    face = assert_one_face(post_file(client, face_jpeg).get_json())
    assert face["quality"] == "ok" and 0.5 <= face["score"] <= 1
    above = f"{min(face['score'] + 0.001, 1):.4f}"
    assert post_file(client, face_jpeg, query=f"?min_face_score={above}").get_json()["faces"] == []
    assert len(post_file(client, face_jpeg, min_face_score="0.5").get_json()["faces"]) == 1  # as a form field


def test_text_posing_as_image(client):
    text = b"This is not a photo, just some text that says it is one.\n" * 20
    assert_problem(post_raw(client, text, "image/jpeg"), 415, "not-an-image")
    assert_problem(post_file(client, text, name="photo.jpg"), 415, "not-an-image")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "application/octet-stream",
                                          "application/x-www-form-urlencoded", None])
def test_wrong_content_type(client, face_jpeg, content_type):
    assert_problem(post_raw(client, face_jpeg, content_type), 415, "unsupported-media-type")


def test_truncated_jpeg(client, face_jpeg, caplog):
    """The client gets a sentence in plain words; the decoder's own words go to the server log only."""
    with caplog.at_level("INFO", logger="moodlens.web"):
        body = assert_problem(post_raw(client, face_jpeg[: len(face_jpeg) // 2]), 422, "truncated-image")
    assert body["detail"] == "the image file is cut short or corrupt, so it cannot be decoded"
    logged = [r.getMessage() for r in caplog.records if r.name == "moodlens.web"]
    assert any("truncated-image" in m and "image file is truncated" in m for m in logged), logged


def test_too_small(client):
    tiny = png(np.full((8, 8, 3), 128, np.uint8))
    assert_problem(post_raw(client, tiny, "image/png"), 422, "image-too-small")


def test_oversize_body_rejected_before_reading(analyzer, face_jpeg):
    small = create_app({"MAX_CONTENT_LENGTH": 10_000, "MOODLENS_RATE_LIMIT": 0}, analyzer=analyzer)
    client = small.test_client()
    assert len(face_jpeg) > 10_000
    body = assert_problem(post_raw(client, face_jpeg), 413, "too-large")
    assert body["max_bytes"] == 10_000
    assert_problem(post_file(client, face_jpeg), 413, "too-large")
    assert post_raw(client, jpeg(astronaut()[::8, ::8], quality=50)).status_code == 200  # under the limit


def chunked(client, data: bytes, content_type: str):
    """A request with no Content-Length (Transfer-Encoding: chunked), as a WSGI server hands it on."""
    return client.post("/api/v1/analyze", input_stream=io.BytesIO(data), content_type=content_type,
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def test_oversize_chunked_body(analyzer, face_jpeg):
    client = create_app({"MAX_CONTENT_LENGTH": 10_000, "MOODLENS_RATE_LIMIT": 0}, analyzer=analyzer).test_client()
    assert_problem(chunked(client, face_jpeg, "image/jpeg"), 413, "too-large")  # not cut to 10 kB and passed on
    small = jpeg(astronaut()[::8, ::8], quality=50)
    resp = chunked(client, small, "image/jpeg")
    assert resp.status_code == 200 and resp.get_json()["width"] == 64


def test_garbage_never_gives_500(client, face_jpeg):
    rng = np.random.default_rng(0)
    bodies = [rng.bytes(n) for n in (1, 10, 1000, 50_000)]
    bodies += [face_jpeg[:4] + rng.bytes(3000), b"\x89PNG\r\n\x1a\n" + rng.bytes(500), b"GIF89a" + rng.bytes(100),
               b"RIFF\x00\x00\x00\x00WEBPVP8 " + rng.bytes(200), b"<svg xmlns='http://www.w3.org/2000/svg'/>"]
    for body in bodies:
        resp = post_raw(client, body)
        assert_problem(resp, resp.status_code)
        assert resp.status_code in (400, 413, 415, 422), (body[:20], resp.status_code)


def test_unknown_path_and_method(client):
    assert_problem(client.get("/api/v1/nothing-here"), 404, "not-found")
    resp = client.get("/api/v1/analyze")
    assert_problem(resp, 405, "method-not-allowed")
    assert "POST" in resp.headers["Allow"]
    page = client.get("/no-such-page")
    assert page.status_code == 404 and page.mimetype == "text/html"


def test_unexpected_error_is_a_bare_500(analyzer):
    app = create_app({"MOODLENS_RATE_LIMIT": 0}, analyzer=analyzer)

    @app.get("/api/v1/boom")
    def boom():
        raise RuntimeError("secret internals")

    resp = app.test_client().get("/api/v1/boom")
    body = assert_problem(resp, 500, "internal-error")
    assert "secret" not in resp.get_data(as_text=True) and "RuntimeError" not in body["detail"]
    assert not app.debug


def test_rate_limit(analyzer, face_jpeg):
    app = create_app({"MOODLENS_RATE_LIMIT": 0.5, "MOODLENS_RATE_BURST": 2}, analyzer=analyzer)
    client = app.test_client()
    assert [client.get("/api/v1/model").status_code for _ in range(2)] == [200, 200]
    resp = post_raw(client, face_jpeg)
    body = assert_problem(resp, 429, "rate-limited")
    assert int(resp.headers["Retry-After"]) >= 1 and body["retry_after"] >= 1
    assert client.get("/api/v1/health").status_code == 200  # health checks are exempt
    other = client.get("/api/v1/model", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200  # per client


def test_an_analysis_over_the_time_limit_answers_503_with_retry_after(analyzer, face_jpeg):
    app = create_app({"MOODLENS_RATE_LIMIT": 0, "MOODLENS_ANALYSIS_TIMEOUT": 1e-6}, analyzer=analyzer)
    resp = post_raw(app.test_client(), face_jpeg, query="?explain=1")
    body = assert_problem(resp, 503, "analysis-timeout")
    assert int(resp.headers["Retry-After"]) >= 1 and body["time_limit_s"] == 1e-6
    assert "smaller photo" in body["detail"]
    assert app.test_client().get("/api/v1/health").status_code == 200  # the engine is fine
    unlimited = create_app({"MOODLENS_RATE_LIMIT": 0, "MOODLENS_ANALYSIS_TIMEOUT": 0}, analyzer=analyzer)
    assert post_raw(unlimited.test_client(), face_jpeg).status_code == 200


# --- uploads stay in memory ----------------------------------------------------------------------------------


def test_upload_never_spooled_to_disk(client, monkeypatch):
    import tempfile

    import werkzeug.formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("the upload was about to be written to a temporary file")

    for module in (werkzeug.formparser, tempfile):
        for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_disk)
    big = jpeg(np.kron(astronaut(), np.ones((3, 3, 1), np.uint8)), quality=97)  # 1536 px, > 500 kB
    assert len(big) > 600_000
    resp = post_file(client, big)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["width"] == 1536


# --- other endpoints, pages, headers ---------------------------------------------------------------------------


def test_health(client):
    resp = client.get("/api/v1/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and body["default_classes"] == "4" and "4" in body["loaded"]


def test_health_fails_once_the_engine_does(face_jpeg):
    """An engine that stops working (here: an interpreter left with the wrong input shape) gives a 500 on analyze,
    and from then on health answers 503, not ok; why goes to the server log only."""
    from moodlens import Analyzer

    app = create_app({"MOODLENS_RATE_LIMIT": 0}, analyzer=Analyzer(classes="4"))
    client = app.test_client()
    assert post_raw(client, face_jpeg).status_code == 200
    classifier = app.extensions["moodlens"].get("4").classifier
    it = classifier._pool.peek().interpreter
    it.resize_tensor_input(it.get_input_details()[0]["index"], [1, 24, 24, 1])
    it.allocate_tensors()
    assert_problem(post_raw(client, face_jpeg), 500, "internal-error")
    resp = client.get("/api/v1/health")
    assert resp.status_code == 503 and resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["status"] == "error" and body["failed"] == ["4"]
    assert "tflite" not in resp.get_data(as_text=True)  # no server paths
    assert classifier.failure and "failed to run" in classifier.failure
    documented = client.get("/api/v1/openapi.json").get_json()["paths"]["/api/v1/health"]["get"]["responses"]
    example = documented["503"]["content"]["application/json"]["examples"]["error"]["value"]
    assert set(example) == set(body) and example["status"] == "error"


def test_model_card(client):
    body = client.get("/api/v1/model").get_json()
    assert body["classes"] == CLASSES_4
    assert len(client.get("/api/v1/model?classes=7").get_json()["classes"]) == 7
    assert_problem(client.get("/api/v1/model?classes=9"), 400, "bad-option")
    photos = client.get("/api/v1/model?model=photos").get_json()
    assert photos["name"] == "moodlens expression-4-photos" and photos["classes"] == CLASSES_4
    assert_problem(client.get("/api/v1/model?model=photos&classes=7"), 400, "bad-option")


@pytest.mark.parametrize("path, text", [
    ("/", "not what the person feels"), ("/webcam", "Start camera"), ("/model", "Model card"),
    ("/model?classes=7", "7 classes"),
    ("/model?model=photos", "for real photos"), ("/api", "problem+json"), ("/api/docs", "swagger-ui-bundle.js"),
])
def test_pages(client, path, text):
    resp = client.get(path)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert text in html
    assert 'href="/model"' in html  # every page links the model card
    assert "<script>" not in html and " style=" not in html  # nothing inline: the CSP allows none


@pytest.mark.parametrize("path", ["/", "/webcam", "/model", "/api/docs", "/api/v1/health", "/api/v1/openapi.json",
                                  "/api/v1/nothing", "/static/style.css", "/missing"])
def test_security_headers(client, path):
    h = client.get(path).headers
    csp = h["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp and "*" not in csp
    assert "media-src 'self' blob:" in csp and "blob:" in csp.split("img-src")[1].split(";")[0]
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Frame-Options"] == "DENY"


def test_static_files_are_cache_busted(app, client):
    html = client.get("/").get_data(as_text=True)
    urls = re.findall(r'(?:href|src)="(/static/[^"?]+)\?v=([0-9a-f]{12})"', html)
    assert {u.rsplit("/", 1)[1] for u, _ in urls} >= {"style.css", "app.js", "upload.js", "favicon.svg"}
    for url, version in urls:
        resp = client.get(f"{url}?v={version}")
        assert resp.status_code == 200
        assert hashlib.sha256(resp.data).hexdigest()[:12] == version
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        resp.close()
    stale = client.get("/static/style.css?v=000000000000")
    assert stale.headers["Cache-Control"] == "no-cache"
    stale.close()


# --- OpenAPI -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi_doc(app):
    resp = app.test_client().get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def test_openapi_is_valid_and_matches_routes(app, openapi_doc):
    validate = pytest.importorskip("openapi_spec_validator").validate
    validate(openapi_doc)
    assert openapi_doc["openapi"].startswith("3.1")
    routes = {
        (str(rule), method.lower())
        for rule in app.url_map.iter_rules() if str(rule).startswith("/api/v1/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in openapi_doc["paths"].items() for method in ops}
    assert documented == routes


def test_real_responses_match_openapi_schemas(client, openapi_doc, face_jpeg):
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource("urn:api", DRAFT202012.create_resource(openapi_doc))

    def check(body, name):
        schema = {"$ref": f"urn:api#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(body)

    check(post_file(client, face_jpeg, query="?explain=1").get_json(), "AnalysisResult")
    check(client.get("/api/v1/health").get_json(), "Health")
    check(client.get("/api/v1/model").get_json(), "ModelCard")
    for resp in (post_raw(client, b"nope"), post_raw(client, b"x", "text/plain"), client.get("/api/v1/x")):
        check(resp.get_json(force=True), "Problem")
    analyze = openapi_doc["paths"]["/api/v1/analyze"]["post"]
    assert {"400", "413", "415", "422"} <= set(analyze["responses"])
    assert {"multipart/form-data", "image/*"} == set(analyze["requestBody"]["content"])
