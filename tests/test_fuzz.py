"""Property-based and fuzz tests, bounded to a few seconds each (scripts/fuzz.py runs the same for longer).

- The decoder, fed arbitrary bytes, bytes behind a real format's magic number, and mutated valid images of every
  format, raises nothing but moodlens.engine.errors.ImageError subclasses.
- The API, fed arbitrary bodies, Content-Types and query strings, raw or in multipart, never answers 5xx, and
  every 4xx is a complete problem+json.
- schemathesis, from /api/v1/openapi.json, generates valid and invalid requests for every operation and checks
  the answers against the document (status codes, content types, schemas, headers) and that none is a 5xx.
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("skimage")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bad_inputs import multipart  # noqa: E402
from fuzz_strategies import any_image_bytes, content_types, query_strings  # noqa: E402
from moodlens.engine.decode import decode_image  # noqa: E402
from moodlens.engine.errors import ImageError  # noqa: E402
from moodlens.web import create_app  # noqa: E402

FAST = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]  # Pillow's "Corrupt EXIF data" and friends


def decodes_or_image_error(data: bytes) -> None:
    try:
        rgb = decode_image(data)
    except ImageError:
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype.name == "uint8"


@settings(FAST, max_examples=400)
@given(any_image_bytes())
def test_decoder_raises_only_image_errors(data):
    decodes_or_image_error(data)


@pytest.fixture(scope="module")
def client():
    return create_app({"MOODLENS_RATE_LIMIT": 0}).test_client()


def check_not_5xx(resp) -> None:
    assert resp.status_code < 500, resp.get_data(as_text=True)[:500]
    if resp.status_code >= 400:
        body = resp.get_json(force=True)
        assert resp.mimetype == "application/problem+json" and body["status"] == resp.status_code
        assert body["type"].startswith("/api#") and body["detail"]


@settings(FAST, max_examples=150)
@given(body=any_image_bytes(), content_type=content_types(), query=query_strings(),
       as_multipart=st.booleans(), filename=st.text(max_size=40))
def test_api_never_answers_5xx(client, body, content_type, query, as_multipart, filename):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if as_multipart:
            data, content_type = multipart([("image", filename.replace('"', "").replace("\r", "").replace("\n", ""),
                                             body)])
        else:
            data = body
        resp = client.post(f"/api/v1/analyze?{query}", data=data, content_type=content_type)
    check_not_5xx(resp)


@settings(FAST, max_examples=60)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       path=st.sampled_from(["/api/v1/analyze", "/api/v1/health", "/api/v1/model", "/api/v1/openapi.json",
                             "/api/v1/", "/api/v2/analyze", "/api/v1/analyze/..%2f..%2fetc%2fpasswd"]),
       query=query_strings())
def test_every_route_and_method_never_5xx(client, method, path, query):
    resp = client.open(f"{path}?{query}", method=method)
    assert resp.status_code < 500
    resp.close()


def test_schemathesis_against_the_openapi_document():
    """A bounded schemathesis run (positive and negative examples for every operation)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis.errors import Unsatisfiable

    app = create_app({"MOODLENS_RATE_LIMIT": 0})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    tried: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzz_operation(operation, mode, tried)()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    assert set(tried) >= {"POST /api/v1/analyze", "GET /api/v1/health", "GET /api/v1/model"}
    assert tried["POST /api/v1/analyze"] >= 60


def fuzz_operation(operation, mode, tried: dict[str, int]):
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @settings(FAST, max_examples=60)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        tried[operation.label] = tried.get(operation.label, 0) + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Schema-valid is not image-valid: random bytes in `image` are rightly refused (415), so the
            # "positive data must be accepted" check does not apply; every other check does.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

    return run
