"""Pages and options of the web app through Flask's test client: the model page in words, the API docs page and
its vendored Swagger UI, the OpenAPI tags and examples, opt-in CORS (app factory and `moodlens serve
--cors-origin`), the uncertain threshold in the API's answer, and WCAG AA contrast of every colour in style.css."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from pathlib import Path

import pytest

import moodlens.models
from moodlens.web import create_app
from web_helpers import astronaut, jpeg

STATIC = Path(__file__).resolve().parents[1] / "src" / "moodlens" / "web" / "static"
SWAGGER_VERSION = "5.35.0"


@pytest.fixture(scope="module")
def app():
    return create_app({"MOODLENS_RATE_LIMIT": 0})


@pytest.fixture(scope="module")
def analyzer(app):
    return app.extensions["moodlens"].get("4")


@pytest.fixture()
def client(app):
    return app.test_client()


def visible_text(page: str) -> str:
    """The text a visitor reads in <main> (tags dropped, entities decoded, whitespace squeezed)."""
    main = page[page.index("<main"):page.index("</main>")]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", main)))


def card_keys(value) -> set[str]:
    """Every key in a model card, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in card_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in card_keys(v)}
    return set()


# --- model page -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["classes=4", "classes=7", "model=photos"])
def test_model_page_is_written_for_people(client, query):
    card = client.get(f"/api/v1/model?{query}").get_json()  # the figures the page must show
    resp = client.get(f"/model?{query}")
    assert resp.status_code == 200
    text = visible_text(resp.get_data(as_text=True))

    for name in card["classes"]:
        assert name in text
    for metric in card["metrics"].values():  # every accuracy, as a percentage, with its split named
        assert f"{100 * metric['accuracy']:.1f}%" in text
        assert f"{metric['n']:,}" in text
    assert "FER2013 PublicTest split" in text
    assert "without the photos that also appear in the Training split" in text
    assert f"under {round(100 * card['uncertain_below'])}%" in text
    assert "calibrated" in text and f"{100 * card['calibration']['ece_after']:.1f} percentage points" in text
    assert "not feelings" in text and "For:" in text and "Not for:" in text
    assert "FER2013" in text and "FER+" in text and "MIT License" in text and "No license is stated" in text

    # nothing for developers only: no JSON keys, no file paths, no commands
    keys = {k for k in card_keys(card) if "_" in k or k in ("PublicTest", "run_dir")}
    assert keys >= {"uncertain_below", "macro_f1", "PublicTest_fer2013", "ms_per_face_batch1", "run_dir"}
    for key in keys:
        assert key not in text, key
    for leak in ("runs/", "../shared", ".csv", ".md", ".tflite", ".json", "`", "moodlens train", "{", "None"):
        assert leak not in text, leak
    if query == "classes=7":
        assert "The 4-class model forces" not in text
    html = resp.get_data(as_text=True)
    assert f'href="/api/v1/model?{query}"' in html  # the raw card stays
    assert html.count('aria-current="page"') == 2 and f'href="/model?{query}" aria-current="page"' in html


def test_model_page_of_a_model_without_its_card(analyzer):
    class Bare:
        classes = analyzer.classes
        model_card: dict = {}

        def analyze(self, *args, **kwargs):
            return analyzer.analyze(*args, **kwargs)

    client = create_app({"MOODLENS_RATE_LIMIT": 0}, analyzer=Bare()).test_client()
    text = visible_text(client.get("/model").get_data(as_text=True))
    assert "came without its model card" in text
    assert "not feelings" in text and "FER2013" in text and "%" not in text.split("came without")[1][:200]
    assert client.get("/api/v1/model").get_json() == {"classes": list(analyzer.classes)}


def test_card_text_for_people():
    from moodlens.web.modelpage import plain, split_name

    assert plain("BlazeFace (Apache-2.0); see face_detection.md") == "BlazeFace (Apache-2.0)"
    assert plain("labels (fer2013new.csv), MIT") == "labels, MIT"
    assert plain("Use the `uncertain` flag.") == "Use the uncertain flag."
    assert split_name("PublicTest") == "FER2013 PublicTest split"
    assert split_name("photos-dev (real photos, end to end, without photos from the face-api.js and Human "
                      "repositories)") == "Real photos (photos-dev), read by the whole engine from the photo, " \
        "without photos from the face-api.js and Human repositories"


def test_the_photos_models_page_names_its_real_photo_figures_in_words():
    from moodlens.engine.classify import ExpressionClassifier
    from moodlens.web.modelpage import readable_card

    clf = ExpressionClassifier("photos")
    card = readable_card(clf.card, list(clf.classes), None)
    photo_rows = [r for r in card["accuracy"] if r["test"].startswith("Real photos")]
    assert card["real_photos"] and [r["faces"] for r in photo_rows] == ["140", "128"]
    assert photo_rows[0]["labels"] == "the expression a person labelled each photo with"
    assert any("not documented" in x for x in card["limitations"])


# --- API docs page, vendored Swagger UI ---------------------------------------------------------------------------


def test_api_docs_page(client):
    resp = client.get("/api/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "api-docs.js"):
        assert re.search(rf'(src|href)="/static/{re.escape(name)}\?v=[0-9a-f]{{12}}"', page), name
    assert 'data-url="/api/v1/openapi.json"' in page
    assert "<script>" not in page and " style=" not in page and "http" not in page.split("<main")[1].split("</main")[0]
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp  # the app's own CSP
    assert 'href="/api/docs"' in client.get("/api").get_data(as_text=True)  # linked from the API page
    assert f"Swagger UI {SWAGGER_VERSION}" in page


def test_vendored_swagger_ui_is_unchanged_licensed_and_pinned(client):
    provenance = (STATIC / "swagger-ui.PROVENANCE.md").read_text()
    assert f"`swagger-ui-dist` {SWAGGER_VERSION}" in provenance
    assert f"swagger-ui-dist-{SWAGGER_VERSION}.tgz" in provenance
    hashes = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|$", provenance, re.M))
    assert set(hashes) == {"swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-bundle.js.LICENSE.txt",
                           "swagger-ui.LICENSE", "swagger-ui.NOTICE"}
    for name, digest in hashes.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (STATIC / "swagger-ui.LICENSE").read_text()
    assert f'PACKAGE_VERSION:"{SWAGGER_VERSION}"' in (STATIC / "swagger-ui-bundle.js").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui.LICENSE", "swagger-ui.PROVENANCE.md"):
        resp = client.get(f"/static/{name}")
        assert resp.status_code == 200, name
        resp.close()


def test_openapi_has_tags_and_examples_that_match_its_schemas(client):
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    doc = client.get("/api/v1/openapi.json").get_json()
    declared = [t["name"] for t in doc["tags"]]
    assert declared == ["analysis", "model", "service"]
    registry = Registry().with_resource("urn:api", DRAFT202012.create_resource(doc))
    examples = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["tags"] and set(op["tags"]) <= set(declared), (path, method)
            for response in op["responses"].values():
                for media in response.get("content", {}).values():
                    ref = media["schema"].get("$ref", "").replace("#", "urn:api#")
                    for example in media.get("examples", {}).values():
                        examples += 1
                        if ref:
                            jsonschema.Draft202012Validator({"$ref": ref}, registry=registry).validate(example["value"])
    assert examples >= 8
    analyze = doc["paths"]["/api/v1/analyze"]["post"]
    assert "curl -F image=@photo.jpg" in analyze["description"]
    assert set(analyze["responses"]["200"]["content"]["application/json"]["examples"]) == {"one-face", "no-face"}


# --- the uncertain threshold in the answer ----------------------------------------------------------------------


def test_analyze_answers_its_uncertain_threshold(client, analyzer):
    body = client.post("/api/v1/analyze", data={"image": (io.BytesIO(jpeg(astronaut())), "a.jpg")}).get_json()
    assert body["uncertain_below"] == analyzer.uncertain_below == analyzer.classifier.card["uncertain_below"]
    for face in body["faces"]:
        assert face["uncertain"] == (max(face["scores"].values()) < body["uncertain_below"])
    seven = client.post("/api/v1/analyze?classes=7", data=jpeg(astronaut()), content_type="image/jpeg").get_json()
    card = json.loads((Path(moodlens.models.__file__).parent / "expression-7.json").read_text())
    assert seven["uncertain_below"] == card["uncertain_below"]  # each model's own threshold, from its card


# --- a preview for formats a browser cannot show (TIFF) --------------------------------------------------------


def tiff(rgb, pages: int = 1) -> bytes:
    """`rgb` as a TIFF; later pages are other pictures (only the first counts)."""
    from PIL import Image

    first = Image.fromarray(rgb)
    rest = [Image.new("RGB", first.size, (i * 60, 0, 0)) for i in range(1, pages)]
    buf = io.BytesIO()
    first.save(buf, "TIFF", save_all=True, append_images=rest)
    return buf.getvalue()


def data_url_image(url: str):
    from PIL import Image

    head, _, data = url.partition(",")
    assert head == "data:image/jpeg;base64"
    im = Image.open(io.BytesIO(base64.b64decode(data)))
    assert im.format == "JPEG"
    return im.convert("RGB")


def test_preview_gives_the_analysed_picture_as_a_jpeg(client):
    import numpy as np

    photo = astronaut()
    body = client.post("/api/v1/analyze?preview=1", data={"image": (io.BytesIO(tiff(photo, pages=3)), "a.tif")})
    assert body.status_code == 200, body.get_data(as_text=True)
    answer = body.get_json()
    assert len(answer["faces"]) == 1 and (answer["width"], answer["height"]) == (512, 512)
    shown = data_url_image(answer["preview"])
    assert shown.size == (512, 512)  # the first page, not the red ones after it
    assert np.abs(np.asarray(shown, int) - photo.astype(int)).mean() < 4
    plain = client.post("/api/v1/analyze", data=tiff(photo), content_type="image/tiff").get_json()
    assert "preview" not in plain and plain["faces"][0]["scores"] == answer["faces"][0]["scores"]

    wide = np.zeros((1000, 3000, 3), np.uint8)  # the preview's longer side is capped; the boxes stay full size
    wide[244:756, 1244:1756] = photo
    answer = client.post("/api/v1/analyze", data={"image": (io.BytesIO(jpeg(wide)), "wide.jpg"), "preview": "1"}
                         ).get_json()
    assert (answer["width"], answer["height"]) == (3000, 1000) and len(answer["faces"]) == 1
    assert data_url_image(answer["preview"]).size == (2048, 683)
    broken = client.post("/api/v1/analyze?preview=1", data=tiff(photo)[:3000], content_type="image/tiff")
    assert broken.status_code == 422 and "preview" not in broken.get_data(as_text=True)


# --- CORS ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_client(analyzer):
    app = create_app({"MOODLENS_RATE_LIMIT": 1, "MOODLENS_RATE_BURST": 1,
                      "MOODLENS_CORS_ORIGIN": "https://Example.org/"}, analyzer=analyzer)
    assert app.config["MOODLENS_CORS_ORIGIN"] == "https://example.org"
    return app.test_client()


def test_cors_only_for_the_configured_origin(cors_client):
    ok = cors_client.get("/api/v1/health", headers={"Origin": "https://example.org"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://example.org"
    assert "Retry-After" in ok.headers["Access-Control-Expose-Headers"]
    assert "Origin" in ok.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in ok.headers
    for origin in ("https://evil.example", "http://example.org", "https://example.org.evil.example", "null"):
        resp = cors_client.get("/api/v1/health", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in resp.headers, origin
        assert "Origin" in resp.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in cors_client.get("/api/v1/health").headers
    page = cors_client.get("/", headers={"Origin": "https://example.org"})  # pages are never shared
    assert "Access-Control-Allow-Origin" not in page.headers


def test_cors_preflight_and_errors(cors_client):
    env = {"REMOTE_ADDR": "10.1.0.1"}
    for _ in range(3):  # preflights are not rate-limited (burst 1)
        pre = cors_client.options("/api/v1/analyze", environ_base=env, headers={
            "Origin": "https://example.org", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200
        assert pre.headers["Access-Control-Allow-Origin"] == "https://example.org"
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        assert pre.headers["Access-Control-Allow-Headers"] == "Content-Type"
        assert int(pre.headers["Access-Control-Max-Age"]) > 0
    # a problem answer (here 415, then 429) carries the header too, so the page can read the error
    bad = cors_client.post("/api/v1/analyze", data=b"x", content_type="text/plain", environ_base=env,
                           headers={"Origin": "https://example.org"})
    assert bad.status_code == 415 and bad.headers["Access-Control-Allow-Origin"] == "https://example.org"
    limited = cors_client.get("/api/v1/model", environ_base=env, headers={"Origin": "https://example.org"})
    assert limited.status_code == 429 and limited.headers["Access-Control-Allow-Origin"] == "https://example.org"


def test_no_cors_unless_asked(client):
    resp = client.get("/api/v1/health", headers={"Origin": "https://example.org"})
    assert not [h for h in resp.headers.keys() if h.startswith("Access-Control-")]


@pytest.mark.parametrize("origin", ["*", "https://example.org/path", "example.org", "ftp://example.org",
                                    "https://user@example.org", "https://example.org:99999", "null"])
def test_bad_cors_origin_is_refused(analyzer, origin):
    with pytest.raises(ValueError, match="scheme://host"):
        create_app({"MOODLENS_CORS_ORIGIN": origin}, analyzer=analyzer)


def test_serve_cors_origin_option(monkeypatch):
    from click.testing import CliRunner

    import moodlens.web
    from moodlens.cli import serve as serve_cli

    seen = {}

    class FakeGunicorn:
        def __init__(self, app, options):
            seen["app"] = app

        def run(self):
            seen["ran"] = True

    monkeypatch.setattr(serve_cli, "StandaloneApplication", FakeGunicorn)
    monkeypatch.setattr(moodlens.web, "create_app", lambda config: seen.setdefault("config", config) and "app")
    runner = CliRunner()
    result = runner.invoke(serve_cli.serve_command, ["--cors-origin", "http://LOCALHOST:3000/"])
    assert result.exit_code == 0, result.output
    assert seen["config"]["MOODLENS_CORS_ORIGIN"] == "http://localhost:3000" and seen["ran"]
    seen.clear()
    assert runner.invoke(serve_cli.serve_command, []).exit_code == 0
    assert seen["config"]["MOODLENS_CORS_ORIGIN"] is None
    bad = runner.invoke(serve_cli.serve_command, ["--cors-origin", "*"])
    assert bad.exit_code == 2 and "--cors-origin" in bad.output
    assert "--cors-origin ORIGIN" in runner.invoke(serve_cli.serve_command, ["--help"]).output


# --- colour contrast (WCAG 2.x AA) --------------------------------------------------------------------------------


def _css_variables(css: str) -> tuple[dict[str, str], dict[str, str]]:
    """The custom properties of `:root` (light) and of `:root` under prefers-color-scheme: dark."""
    dark_at = css.index("@media (prefers-color-scheme: dark)")
    light = dict(re.findall(r"(--[\w-]+):\s*([^;]+);", css[css.index(":root {"):dark_at]))
    dark_block = css[dark_at:css.index("\n}\n", dark_at)]
    dark = {**light, **dict(re.findall(r"(--[\w-]+):\s*([^;]+);", dark_block))}
    return light, dark


def _resolve(value: str, variables: dict[str, str]) -> str:
    for _ in range(10):
        found = re.fullmatch(r"var\((--[\w-]+)\)", value.strip())
        if not found:
            return value.strip()
        value = variables[found.group(1)]
    raise AssertionError(value)


def _luminance(color: str) -> float:
    h = color.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    assert re.fullmatch(r"[0-9a-fA-F]{6}", h), color
    channels = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


CLASSES_7 = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "other"]
TEXT, NON_TEXT = 4.5, 3.0


def colour_pairs(v: dict[str, str]) -> list[tuple[str, str, str, float]]:
    """(what, foreground, background, minimum ratio) for every pair of colours style.css puts together."""
    c = lambda name: _resolve(v[name], v)  # noqa: E731
    pairs = []
    for bg in ("--bg", "--panel"):
        pairs += [(f"text on {bg}", c("--fg"), c(bg), TEXT), (f"muted text on {bg}", c("--muted"), c(bg), TEXT),
                  (f"links on {bg}", c("--accent"), c(bg), TEXT), (f"errors on {bg}", c("--error"), c(bg), TEXT),
                  (f"control edges on {bg}", c("--control"), c(bg), NON_TEXT),
                  (f"focus ring on {bg}", c("--accent"), c(bg), NON_TEXT)]
        for name in CLASSES_7:  # swatches, meter fills, chips
            pairs.append((f"{name} on {bg}", c(f"--c-{name}"), c(bg), NON_TEXT))
    pairs += [("button text", c("--accent-fg"), c("--accent"), TEXT),
              ("badge text", c("--fg"), c("--warn-bg"), TEXT),
              ("meter edge on its track", c("--control"), c("--track"), NON_TEXT)]
    for name in CLASSES_7:
        pairs += [(f"{name} meter on its track", c(f"--c-{name}"), c("--track"), NON_TEXT),
                  (f"{name} label text", c("--o-text"), c(f"--o-{name}"), TEXT),  # labels on the photo
                  (f"{name} box against its ring", c(f"--o-{name}"), c("--o-ring"), NON_TEXT)]
    return pairs


def test_every_colour_pair_meets_wcag_aa():
    css = (STATIC / "style.css").read_text()
    light, dark = _css_variables(css)
    failures = []
    for theme, variables in (("light", light), ("dark", dark)):
        for what, fg, bg, minimum in colour_pairs(variables):
            ratio = contrast(fg, bg)
            if ratio < minimum:
                failures.append(f"{theme}: {what}: {fg} on {bg} is {ratio:.2f}:1, under {minimum}:1")
    assert not failures, "\n".join(failures)


def test_the_css_uses_those_colours_where_it_says():
    """The rules the contrast test relies on: labels and boxes take --o-*, meters --c-*, controls --control."""
    css = re.sub(r"/\*.*?\*/", "", (STATIC / "style.css").read_text(), flags=re.S)

    def rule(selector: str) -> str:
        found = re.search(r"(?:^|[}\s])" + re.escape(selector) + r"(?:,[^{}]*)?\s*\{([^}]*)\}", css)
        assert found, selector
        return found.group(1)

    assert "background: var(--face-o)" in rule(".face-label") and "color: var(--o-text)" in rule(".face-label")
    assert "var(--face-o)" in rule(".face-box") and "var(--o-ring)" in rule(".face-box")
    assert "background: var(--face)" in rule("meter.bar::-webkit-meter-optimum-value")
    assert "var(--control)" in rule("meter.bar") and "var(--track)" in rule("meter.bar")
    assert "var(--control)" in rule("select:where(:not(.swagger-ui *)), button:where(:not(.swagger-ui *))")
    for name in CLASSES_7[:-1]:
        assert f"--face: var(--c-{name}); --face-o: var(--o-{name});" in rule(f'[data-expression="{name}"]')
    # no opacity on a label by itself (it would lower the contrast measured above), only to dim the others
    assert "opacity" not in rule(".face-label.uncertain")
    app_js = (STATIC / "app.js").read_text()
    assert not re.search(r"#[0-9a-fA-F]{3,6}\b", app_js), "colours belong in style.css"
    assert json.dumps("meter") in app_js  # score bars are <meter>s
