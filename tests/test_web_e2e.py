"""End to end: `moodlens serve` (gunicorn, real models) driven by a real headless Chromium.

Uploads a photo through the file input, runs the webcam page on Chromium's fake camera fed with a Y4M video of
the same photo, checks camera errors, and saves screenshots to /tmp/moodlens-*.png (desktop and phone). A group
photo of twelve faces checks the results page: the summary line, numbering, labels that stay inside the photo and
never overlap (phone size too), highlighting, thumbnails, <meter>s and the JSON, CSV and annotated-image
downloads; seven photos at once check the progress line, the table view and the one live message per batch.
Also the API docs page (vendored Swagger UI under the app's CSP) and CORS from another origin.
Skips when /usr/bin/chromium or playwright is missing (`make system-deps` installs Chromium).
"""

from __future__ import annotations

import base64
import csv
import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import compose_faces
from moodlens.engine.classify import shipped_model_path
from web_helpers import CHROMIUM, CHROMIUM_ARGS, astronaut, coffee, free_port, jpeg, write_y4m

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (make system-deps)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow
SHOTS = Path(os.environ.get("MOODLENS_SCREENSHOTS", "/tmp"))
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# the shipped default model's card: the figures and the uncertain threshold the pages must show
DEFAULT_CARD = json.loads(shipped_model_path("4").with_suffix(".json").read_text())
UNDER = f"under {round(100 * DEFAULT_CARD['uncertain_below'])}%"


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory):
    """A plain static server on another port: a page of another origin (http://127.0.0.1:<port>)."""
    root = tmp_path_factory.mktemp("other-origin")
    (root / "index.html").write_text("<!doctype html><title>another site</title><p>another site</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, other_origin):
    """`moodlens serve` on a free port (pages of `other_origin` may call its API), until the module is done."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moodlens", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--threads", "4", "--rate-limit", "0", "--cors-origin", other_origin],
            stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"moodlens serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    face, no_face, group = d / "astronaut.jpg", d / "coffee.jpg", d / "group, of twelve.jpg"
    face.write_bytes(jpeg(astronaut()))
    no_face.write_bytes(jpeg(coffee()))
    group.write_bytes(jpeg(compose_faces(GROUP_SIZES, 640, 480, cols=4).rgb))
    return {"face": face, "no_face": no_face, "group": group, "camera": write_y4m(d / "camera.y4m", astronaut())}


#: Twelve heads in a 4 x 3 grid, tight enough that labels have to dodge each other.
GROUP_SIZES = [150, 120, 100, 130, 90, 140, 110, 80, 125, 95, 135, 105]


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright, files):
    """Chromium with a fake camera that films the astronaut photo, and camera permission granted."""
    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-video-capture={files['camera']}"]
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
    yield b
    b.close()


def open_page(browser, url: str, viewport: dict):
    """A page that fails the test on any JavaScript error or CSP violation."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "429" not in m.text else None)
    page.goto(url)
    return page, errors


CLASSES = ("angry", "happy", "neutral", "sad")


def label_class(text: str) -> str:
    """The class in a label: "happy 87%", "3 happy 87%", "3 happy?" -> "happy"."""
    return next(t.rstrip("?") for t in text.split() if t.rstrip("?") in CLASSES)


@pytest.mark.parametrize("name, viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_upload_photos(server, browser, files, name, viewport):
    page, errors = open_page(browser, server + "/", viewport)
    page.set_input_files("#file-input", [str(files["face"]), str(files["no_face"])])
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done]').length === 2", timeout=20_000)
    face_card = page.locator(".result", has_text="astronaut.jpg")
    label = face_card.locator(".overlay .face-label").first
    assert label.is_visible()
    assert label_class(label.inner_text()) in CLASSES  # "happy 87%" (desktop), "happy" (phone)
    assert face_card.locator(".bar-row").count() >= 4
    assert page.locator(".result", has_text="coffee.jpg").locator(".status").inner_text() == "No face found."

    page.check("#heatmap")  # re-asks the API with explain=1 and draws the heatmap over the face
    page.wait_for_selector(".show-heatmap .result .face-box canvas.heatmap", state="visible", timeout=20_000)
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done]').length === 2")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scroll
    page.screenshot(path=str(SHOTS / f"moodlens-upload-{name}.png"), full_page=True)
    assert errors == []
    page.context.close()


def test_the_model_picker_asks_for_the_photos_model(server, browser, files):
    """Upload and webcam pages: picking "tuned for real photos" sends `model=photos` (and no `classes`), and the
    page shows that model's answer."""
    page, errors = open_page(browser, server + "/", DESKTOP)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/analyze" in r.url else None)
    page.select_option("#classes", "photos")
    page.set_input_files("#file-input", [str(files["face"])])
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done]').length === 1", timeout=30_000)
    assert asked and all("model=photos" in url and "classes=" not in url for url in asked), asked
    answer = api_answer(server, files["face"], "?model=photos")
    top = max(answer["faces"], key=lambda f: f["score"])
    shown = page.locator(".result .overlay .face-label").first.inner_text()
    assert label_class(shown) == top["expression"] and f"{round(100 * top['scores'][top['expression']])}%" in shown
    page.context.close()

    page, errors2 = open_page(browser, server + "/webcam", DESKTOP)
    asked.clear()
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/analyze" in r.url else None)
    page.select_option("#cam-classes", "photos")
    page.click("#start")
    page.wait_for_selector("#cam-overlay .face-label", timeout=30_000)
    page.click("#stop")
    assert asked and all("model=photos" in url for url in asked), asked
    assert errors == [] and errors2 == []
    page.context.close()


PASTE_AND_DROP = """async ([b64, how]) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], how + ".jpg", {type: "image/jpeg"}));
    if (how === "pasted") document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
    else document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
}"""


def test_paste_and_drop(server, browser, files):
    page, errors = open_page(browser, server + "/", DESKTOP)
    b64 = base64.b64encode(files["face"].read_bytes()).decode()
    for how in ("pasted", "dropped"):
        page.evaluate(PASTE_AND_DROP, [b64, how])
        card = page.locator(".result", has_text=f"{how}.jpg")
        card.locator(".overlay .face-label").first.wait_for(timeout=20_000)
    assert page.locator(".result[data-state=done]").count() == 2
    assert errors == []
    page.context.close()


def test_webcam_start_stop(server, browser):
    page, errors = open_page(browser, server + "/webcam", DESKTOP)
    page.click("#start")
    page.wait_for_selector("#cam-overlay .face-label", timeout=20_000)
    page.wait_for_function("() => /^[0-9.]+ fps$/.test(document.getElementById('fps').textContent)", timeout=10_000)
    assert label_class(page.locator("#cam-overlay .face-label").first.inner_text()) in CLASSES
    assert float(page.inner_text("#fps").split()[0]) > 0
    page.evaluate("window.__tracks = document.getElementById('video').srcObject.getTracks()")
    page.screenshot(path=str(SHOTS / "moodlens-webcam-desktop.png"), full_page=True)

    page.click("#stop")
    assert page.evaluate("window.__tracks.every(t => t.readyState === 'ended')")
    assert page.evaluate("document.getElementById('video').srcObject === null")
    assert page.locator("#cam-overlay .face-box").count() == 0
    assert page.is_enabled("#start") and not page.is_enabled("#stop")
    page.click("#start")  # starts again cleanly
    page.wait_for_selector("#cam-overlay .face-label", timeout=20_000)
    page.click("#stop")
    assert errors == []
    page.context.close()


def test_webcam_on_phone(server, browser):
    page, errors = open_page(browser, server + "/webcam", PHONE)
    page.click("#start")
    page.wait_for_selector("#cam-overlay .face-label", timeout=20_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(SHOTS / "moodlens-webcam-phone.png"), full_page=True)
    page.click("#stop")
    assert errors == []
    page.context.close()


@pytest.mark.parametrize("flags, says", [
    (["--use-fake-device-for-media-stream", "--deny-permission-prompts"], "permission was denied"),
    ([], "No camera found"),
])
def test_webcam_denied_or_missing(server, playwright, flags, says):
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + flags, headless=True)
    try:
        page = b.new_page()
        page.goto(server + "/webcam")
        page.click("#start")
        page.wait_for_selector("#cam-message.error", timeout=10_000)
        assert says in page.inner_text("#cam-message")
        assert page.is_enabled("#start")
    finally:
        b.close()


@pytest.mark.parametrize("name, viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_model_page(server, browser, name, viewport):
    page, errors = open_page(browser, server + "/model", viewport)
    assert "expression model" in page.inner_text("h1")
    assert page.locator(".chip", has_text="happy").count() == 1  # the classes
    accuracy = DEFAULT_CARD["metrics"]["PublicTest_fer2013"]["accuracy"]
    assert f"{100 * accuracy:.1f}%" in page.inner_text("#accuracy")  # accuracy as a percentage, the split named
    assert "PublicTest split" in page.inner_text("#accuracy")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    if name == "desktop":  # every cell of a row spans the row (the face-count cell once took the faces list's grid)
        spans = page.evaluate("""() => Array.from(document.querySelectorAll('table.accuracy tbody tr')).map(tr =>
            Array.from(tr.cells).map(c => { const r = c.getBoundingClientRect(); return [r.top, r.bottom]; }))""")
        assert spans and all(len({tuple(round(v) for v in cell) for cell in row}) == 1 for row in spans), spans
    page.screenshot(path=str(SHOTS / f"moodlens-model-{name}.png"), full_page=True)
    assert errors == []
    page.context.close()


# --- results of a group photo ------------------------------------------------------------------------------------


def api_answer(server: str, path: Path, query: str = "") -> dict:
    req = urllib.request.Request(server + "/api/v1/analyze" + query, data=path.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def expected_summary(answer: dict) -> str:
    faces = answer["faces"]
    counts: dict[str, int] = {}
    for f in faces:
        if not f["uncertain"]:
            counts[f["expression"]] = counts.get(f["expression"], 0) + 1
    order = sorted(counts.items(), key=lambda kv: (-kv[1], answer["classes"].index(kv[0])))
    parts = [f"{n} {name}" for name, n in order]
    unsure = sum(f["uncertain"] for f in faces)
    if unsure:
        parts.append(f"{unsure} uncertain")
    return f"{len(faces)} faces: " + ", ".join(parts)


LABEL_GEOMETRY = """card => {
    const o = card.querySelector('.overlay').getBoundingClientRect();
    const labels = Array.from(card.querySelectorAll('.overlay .face-label:not(.probe)')).filter(l => !l.hidden)
        .map(l => { const r = l.getBoundingClientRect(); return {n: l.dataset.face, text: l.textContent,
                    x: r.left - o.left, y: r.top - o.top, w: r.width, h: r.height}; });
    const boxes = Array.from(card.querySelectorAll('.overlay .face-box')).map(b => {
        const r = b.getBoundingClientRect(); return {n: Number(b.dataset.face), cx: r.left + r.width / 2 - o.left}; });
    return {w: o.width, h: o.height, labels, boxes};
}"""


def overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


#: WCAG 2.x contrast of what Chromium renders, from the computed styles: every visible text against the first
#: opaque background behind it (4.5:1; bold text of 18.66 px or more 3:1), and the non-text edges that carry
#: meaning (face boxes against their ring, button and field edges against the panel) at 3:1. Fails list them.
RENDERED_CONTRAST = """() => {
    const parse = s => {
        const m = (s.match(/rgba?\\(([^)]+)\\)/) || [])[1];
        if (!m) return null;
        const v = m.split(/[ ,\\/]+/).filter(Boolean).map(Number);
        return {c: v.slice(0, 3), a: v.length > 3 ? v[3] : 1};
    };
    const lum = c => {
        const f = v => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
        return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
    };
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
    const behind = el => {  // the first opaque background; none (a translucent one) is not judged here
        for (let e = el; e; e = e.parentElement) {
            const b = parse(getComputedStyle(e).backgroundColor);
            if (b && b.a >= 0.99) return b.c;
            if (b && b.a > 0) return null;
        }
        return [255, 255, 255];
    };
    const shown = el => {
        const r = el.getBoundingClientRect(), st = getComputedStyle(el);
        return r.width > 0 && r.height > 0 && st.visibility !== 'hidden' && Number(st.opacity) === 1;
    };
    const fails = [];
    let checked = 0;
    for (const el of document.querySelectorAll('main *, .site-header *, footer *')) {
        if (!shown(el) || el.closest('[hidden], .probe') || el.disabled) continue;
        if (!Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim())) continue;
        const st = getComputedStyle(el), fg = parse(st.color), bg = behind(el);
        if (!fg || !bg) continue;
        const px = parseFloat(st.fontSize), large = px >= 24 || (px >= 18.66 && Number(st.fontWeight) >= 700);
        const r = ratio(fg.c, bg);
        checked++;
        if (r < (large ? 3 : 4.5))
            fails.push(`${el.className} "${el.textContent.trim().slice(0, 30)}" ${r.toFixed(2)}:1`);
    }
    for (const box of document.querySelectorAll('.overlay .face-box')) {
        const st = getComputedStyle(box), r = ratio(parse(st.borderTopColor).c, parse(st.boxShadow).c);
        checked++;
        if (r < 3) fails.push(`face box ${box.dataset.face} ${r.toFixed(2)}`);
    }
    for (const el of document.querySelectorAll('button.secondary, select')) {
        if (!shown(el) || el.disabled) continue;
        const r = ratio(parse(getComputedStyle(el).borderTopColor).c, behind(el.parentElement));
        checked++;
        if (r < 3) fails.push(`${el.tagName}.${el.className} edge ${r.toFixed(2)}`);
    }
    return {checked, fails};
}"""


@pytest.mark.parametrize("name, viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_group_photo_results(server, browser, files, name, viewport, tmp_path):
    answer = api_answer(server, files["group"])
    assert len(answer["faces"]) == len(GROUP_SIZES)
    page, errors = open_page(browser, server + "/", viewport)
    page.set_input_files("#file-input", [str(files["group"])])
    page.wait_for_selector(".result[data-state=done]", timeout=30_000)
    card = page.locator(".result").first
    n = len(answer["faces"])

    assert card.locator(".status").inner_text() == expected_summary(answer)  # "12 faces: 12 happy"

    geo = card.evaluate(LABEL_GEOMETRY)
    boxes = sorted(geo["boxes"], key=lambda b: b["n"])
    assert [b["n"] for b in boxes] == list(range(1, n + 1))
    assert all(a["cx"] <= b["cx"] + 1 for a, b in zip(boxes, boxes[1:], strict=False)), boxes  # left to right
    labels = geo["labels"]
    assert len(labels) >= n - 2  # a label that fits nowhere is left out, but hardly any here
    for lab in labels:  # inside the photo ...
        assert lab["x"] >= -0.5 and lab["y"] >= -0.5, lab
        assert lab["x"] + lab["w"] <= geo["w"] + 0.5 and lab["y"] + lab["h"] <= geo["h"] + 0.5, (lab, geo["w"])
    for i, a in enumerate(labels):  # ... and never on top of another label
        for b in labels[i + 1:]:
            assert not overlaps(a, b), (a, b)
    if name == "phone":
        assert not any("%" in lab["text"] for lab in labels)  # shortened on a phone

    # the face list: numbered the same way, a thumbnail and a <meter> per class for every face
    items = card.locator(".face-item")
    assert items.count() == n
    assert card.locator(".face-item meter").count() == n * 4
    values = card.locator('.face-item[data-face="1"] meter').evaluate_all("ms => ms.map(m => m.value)")
    assert sum(values) == pytest.approx(1, abs=0.02)
    drawn = card.locator(".face-item .thumb").evaluate_all("""cs => cs.map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s; })""")
    assert len(drawn) == n and all(v > 0 for v in drawn)

    # highlight: hovering an entry of the list marks its box and label while the pointer is there
    card.locator('.face-item[data-face="2"] .face-name').hover()
    assert card.locator(".overlay .active").evaluate_all("ns => ns.map(n => n.dataset.face)") == ["2", "2"]
    page.mouse.move(0, 0)
    assert card.locator(".overlay .active").count() == 0
    # a click in the list marks its box and label; a click on a box marks its list entry
    card.locator('.face-item[data-face="3"] .face-head').click()
    assert card.locator(".overlay .face-box.active").evaluate_all("bs => bs.map(b => b.dataset.face)") == ["3"]
    assert card.locator(".overlay").evaluate("o => o.classList.contains('has-active')")
    assert card.locator('.face-item[data-face="3"] .face-head').get_attribute("aria-pressed") == "true"
    page.mouse.move(0, 0)
    card.locator('.face-item[data-face="3"] .face-head').click()  # a second click lets go
    page.mouse.move(0, 0)
    assert card.locator(".overlay .face-box.active").count() == 0
    card.locator('.overlay .face-box[data-face="5"]').click(position={"x": 4, "y": 4})
    page.mouse.move(0, 0)
    assert card.locator(".face-item.active").evaluate_all("ls => ls.map(l => l.dataset.face)") == ["5"]
    card.locator('.overlay .face-box[data-face="5"]').click(position={"x": 4, "y": 4})
    page.mouse.move(0, 0)

    note = page.locator("#uncertain-note")
    assert note.is_visible() and UNDER in note.inner_text()
    assert UNDER in (card.locator(".overlay .face-box").first.get_attribute("title") or "") or \
        not answer["faces"][0]["uncertain"]
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    page.screenshot(path=str(SHOTS / f"moodlens-group-{name}.png"), full_page=True)
    card.locator(".stage").screenshot(path=str(SHOTS / f"moodlens-group-photo-{name}.png"))
    for scheme in ("light", "dark"):  # the contrast of what is drawn, labels on the photo included
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(400)  # background colours are transitions of .15 s
        contrast = page.evaluate(RENDERED_CONTRAST)
        assert contrast["checked"] > 60 and contrast["fails"] == [], (scheme, contrast)
    page.emulate_media(color_scheme="light")

    if name == "desktop":
        check_downloads(page, card, answer, files["group"], tmp_path)
    assert errors == []
    page.context.close()


PLACE_ROW = """() => {
    // eight faces in a tight row (a team photo): boxes 37 px wide, 74 px apart, labels of 9 px a character
    const items = Array.from({length: 8}, (_, i) => ({key: i + 1, box: [12 + 74 * i, 40, 37, 30],
        texts: [`${i + 1} happy 91%`, `${i + 1} happy`, String(i + 1)]}));
    const spots = window.Moodlens.placeLabels(items, 592, 150, t => ({w: 9 * t.length + 10, h: 18}));
    return items.map(it => Object.assign({box: it.box}, spots.get(it.key)));
}"""


def test_labels_in_a_tight_row_keep_their_words(server, browser):
    """Labels may touch the next face's box (not cover it): before, a label above or below its box "hit" its
    neighbour's box by the 2 px kept between labels, and a whole row of faces got bare numbers."""
    page, errors = open_page(browser, server + "/", DESKTOP)
    spots = page.evaluate(PLACE_ROW)
    assert all("text" in s for s in spots)
    assert sum(" " in s["text"] for s in spots) >= 6, spots  # words ("3 happy"), hardly any bare number
    for i, a in enumerate(spots):
        assert 0 <= a["x"] <= 592 - a["w"] and 0 <= a["y"] <= 150 - a["h"], a
        for b in spots[i + 1:]:
            assert not overlaps(a, b), (a, b)
        for other in spots:
            x, y, w, h = other["box"]
            if other is not a and " " in a["text"]:
                assert not overlaps(a, {"x": x, "y": y, "w": w, "h": h}), (a, other["box"])
    assert errors == []
    page.context.close()


UNCERTAIN_FACES = """answer => {
    // two of the faces made uncertain (top score under the threshold), drawn and listed by the page's own code
    const M = window.Moodlens;
    const result = JSON.parse(JSON.stringify(answer));
    for (const face of result.faces.slice(0, 2)) {
        const rest = 0.6 / (result.classes.length - 1);
        face.scores = Object.fromEntries(result.classes.map((c, i) => [c, i === 0 ? 0.4 : rest]));
        face.expression = result.classes[0];
        face.uncertain = true;
    }
    const stage = M.el('div', 'stage'), overlay = M.el('div', 'overlay'), list = M.el('ol', 'faces');
    stage.style.width = '640px'; stage.style.height = '480px';
    stage.append(overlay);
    document.querySelector('main').append(stage, list);
    M.drawFaces(overlay, result);
    M.faceList(list, result, {});
    const pick = sel => Array.from(document.querySelectorAll(sel));
    return {summary: M.summaryText(result),
            boxes: pick('.overlay .face-box.uncertain').map(b => b.title),
            labels: pick('.overlay .face-label.uncertain:not([hidden])').map(l => l.textContent),
            badges: pick('.faces .badge').filter(b => b.textContent === 'uncertain').map(b => b.title)};
}"""


def test_uncertain_faces_are_counted_and_explained(server, browser, files):
    """The group's faces are all clearly happy: two are made uncertain in the answer, then drawn by the page."""
    answer = api_answer(server, files["group"])
    page, errors = open_page(browser, server + "/", DESKTOP)
    got = page.evaluate(UNCERTAIN_FACES, answer)
    n = len(answer["faces"])
    assert got["summary"] == f"{n} faces: {n - 2} happy, 2 uncertain"  # counted as uncertain, not as a guess
    explain = f"A face is marked uncertain when its most likely expression scores {UNDER}"
    assert len(got["boxes"]) == 2 and all(explain in t and "\n" in t for t in got["boxes"])  # the tooltip
    assert len(got["badges"]) == 2 and all(explain in t for t in got["badges"])
    assert got["labels"] and all(label_class(t) == answer["classes"][0] and "angry?" in t for t in got["labels"])
    assert errors == []
    page.context.close()


def check_downloads(page, card, answer: dict, photo: Path, tmp_path: Path) -> None:
    """The three downloads of one photo arrive, parse, and say what the API said."""
    from PIL import Image

    n = len(answer["faces"])
    with page.expect_download() as got:
        card.locator(".dl-json").click()
    assert got.value.suggested_filename == "group_of_twelve.moodlens.json"
    data = json.loads(Path(got.value.path()).read_text())
    assert data["file"] == photo.name and data["width"] == 640 and data["classes"] == answer["classes"]
    assert [f["face"] for f in data["faces"]] == list(range(1, n + 1))
    centres = [f["box"][0] + f["box"][2] / 2 for f in data["faces"]]
    assert centres == sorted(centres)
    scores = sorted(json.dumps(f["scores"]) for f in data["faces"])
    assert scores == sorted(json.dumps(f["scores"]) for f in answer["faces"])

    with page.expect_download() as got:
        card.locator(".dl-csv").click()
    assert got.value.suggested_filename == "group_of_twelve.moodlens.csv"
    rows = list(csv.DictReader(io.StringIO(Path(got.value.path()).read_text())))
    assert len(rows) == n and [int(r["face"]) for r in rows] == list(range(1, n + 1))
    assert {r["file"] for r in rows} == {photo.name}  # the comma in the name survives
    for r, f in zip(rows, data["faces"], strict=True):
        assert r["expression"] == f["expression"] and float(r["confidence"]) == f["scores"][f["expression"]]
        assert sum(float(r[c]) for c in answer["classes"]) == pytest.approx(1, abs=0.01)
        assert r["uncertain"] in ("true", "false") and float(r["x"]) == pytest.approx(f["box"][0], abs=0.1)
        assert r["quality"] == f["quality"] and float(r["detector_score"]) == f["score"]

    with page.expect_download() as got:
        card.locator(".dl-image").click()
    assert got.value.suggested_filename == "group_of_twelve.moodlens.jpg"
    out = tmp_path / "annotated.jpg"
    got.value.save_as(out)
    annotated = Image.open(out).convert("RGB")
    original = Image.open(photo).convert("RGB")
    assert annotated.size == original.size == (640, 480)
    import numpy as np

    diff = np.abs(np.asarray(annotated, int) - np.asarray(original, int)).sum(axis=2) > 60
    x, y, w, h = (round(v) for v in answer["faces"][0]["box"])
    assert diff[y:y + h, x].mean() > 0.5  # the left edge of a face box is drawn
    assert diff.mean() < 0.25  # and not much else


# --- a TIFF: Chromium cannot show it, the page shows the server's preview -----------------------------------------


def tiff_bytes(rgb, pages: int = 1) -> bytes:
    from PIL import Image

    first = Image.fromarray(rgb)
    buf = io.BytesIO()
    first.save(buf, "TIFF", save_all=True, append_images=[Image.new("RGB", first.size, (200, 0, 0))] * (pages - 1))
    return buf.getvalue()


def test_a_tiff_is_shown_from_the_servers_preview(server, browser, tmp_path):
    from PIL import Image

    good, broken = tmp_path / "scan.tiff", tmp_path / "broken.tif"
    good.write_bytes(tiff_bytes(astronaut(), pages=2))
    broken.write_bytes(tiff_bytes(astronaut())[:4000])
    page, errors = open_page(browser, server + "/", PHONE)
    page.set_input_files("#file-input", [str(good), str(broken)])
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done], .result[data-state=error]')"
                           ".length === 2", timeout=30_000)
    card = page.locator(".result", has_text="scan.tiff")
    shown = card.locator(".stage img").evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight, i.src]")
    assert shown[:3] == [True, 512, 512] and shown[3].startswith("blob:"), shown  # the preview, decoded
    assert card.locator(".no-preview").count() == 0
    label = card.locator(".overlay .face-label:not(.probe):not([hidden])")
    assert label.count() == 1 and label_class(label.inner_text()) in CLASSES
    geo = card.evaluate(LABEL_GEOMETRY)
    (lab,) = geo["labels"]
    assert 0 <= lab["x"] and lab["x"] + lab["w"] <= geo["w"] + 0.5 and 0 <= lab["y"] <= geo["h"] - lab["h"] + 0.5
    thumb = card.locator(".face-item .thumb").evaluate("""c => { const d = c.getContext('2d')
        .getImageData(0, 0, c.width, c.height).data; let s = 0; for (const v of d) s += v; return s; }""")
    assert thumb > 0
    card.locator(".stage").screenshot(path=str(SHOTS / "moodlens-tiff-phone.png"))

    with page.expect_download() as got:
        card.locator(".dl-image").click()
    assert got.value.suggested_filename == "scan.moodlens.png"
    drawn = Image.open(got.value.path())
    assert drawn.format == "PNG" and drawn.size == (512, 512)
    with page.expect_download() as got:
        card.locator(".dl-json").click()
    data = json.loads(Path(got.value.path()).read_text())
    assert "preview" not in data and len(data["faces"]) == 1  # the results, not the picture

    bad = page.locator(".result", has_text="broken.tif")
    assert bad.locator(".stage.no-preview").inner_text() == "Your browser cannot show this file."
    assert bad.locator(".summary .status.error").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert [e for e in errors if "status of 422" not in e] == []  # the broken one's answer, and nothing else
    page.context.close()


# --- many photos at once: progress, table, one message per batch ------------------------------------------------


def test_many_photos_progress_table_and_one_message(server, browser, files, tmp_path):
    paths = []
    for i in range(7):
        src = [files["face"], files["no_face"], files["group"]][i % 3]
        dst = tmp_path / f"photo-{i + 1}{src.suffix}"
        dst.write_bytes(src.read_bytes())
        paths.append(dst)
    page, errors = open_page(browser, server + "/", DESKTOP)
    assert page.locator("#results").get_attribute("aria-live") is None  # no announcement per photo
    assert page.locator("#announce").get_attribute("aria-live") == "polite"
    page.evaluate("""() => {
        window.__said = []; window.__progress = [];
        new MutationObserver(() => window.__said.push(document.getElementById('announce').textContent))
            .observe(document.getElementById('announce'), {childList: true, characterData: true, subtree: true});
        new MutationObserver(() => window.__progress.push(document.getElementById('progress-text').textContent))
            .observe(document.getElementById('progress-text'), {childList: true, characterData: true, subtree: true});
    }""")
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done]').length === 7", timeout=60_000)
    page.wait_for_function("() => window.__said.length > 0")
    time.sleep(0.3)
    said = page.evaluate("window.__said")
    assert len(said) == 1 and said[0].startswith("Done: 7 photos analysed"), said  # one polite message
    progress = page.evaluate("window.__progress")
    assert "3 of 7 photos analysed" in progress and progress[-1] == "7 of 7 photos analysed"
    assert page.locator("#progress").evaluate("p => [p.value, p.max]") == [7, 7]

    # seven photos: the compact table, one row each; a row opens its card
    table = page.locator("#photo-table")
    assert table.is_visible() and table.locator("tbody tr").count() == 7
    assert page.locator(".result:visible").count() == 0
    row = table.locator("tbody tr", has_text="photo-3.jpg")
    assert row.locator(".row-count").inner_text() == str(len(GROUP_SIZES))
    row.locator("button").click()
    assert page.locator(".result:visible").count() == 1
    page.wait_for_function("() => document.querySelector('.result.open .overlay .face-label:not([hidden])')")
    page.screenshot(path=str(SHOTS / "moodlens-many-desktop.png"), full_page=True)
    page.click("#view-cards")
    assert page.locator(".result:visible").count() == 7 and not table.is_visible()

    with page.expect_download() as got:
        page.click("#all-csv")
    rows = list(csv.DictReader(io.StringIO(Path(got.value.path()).read_text())))
    assert {r["file"] for r in rows} == {p.name for p in paths}
    assert len(rows) == 3 * 1 + 2 * 1 + 2 * len(GROUP_SIZES)  # a face per row; a row for each face-less photo
    with page.expect_download() as got:
        page.click("#all-json")
    photos = json.loads(Path(got.value.path()).read_text())["photos"]
    assert [p["file"] for p in photos] == [p.name for p in paths]
    assert errors == []
    page.context.close()


# --- webcam mirror ------------------------------------------------------------------------------------------------


def test_webcam_preview_is_mirrored_and_quiet(server, browser):
    from conftest import ASTRONAUT_FACE

    page, errors = open_page(browser, server + "/webcam", DESKTOP)
    page.click("#start")
    page.wait_for_selector("#cam-overlay .face-box", timeout=20_000)
    assert page.locator("#video").evaluate("v => getComputedStyle(v).transform") == "matrix(-1, 0, 0, 1, 0, 0)"
    assert page.locator("#cam-overlay").evaluate("o => getComputedStyle(o).transform") == "none"
    # The fake camera films the astronaut letterboxed into 640x480, face left of the middle; mirrored, right of it.
    x, _, w, _ = ASTRONAUT_FACE
    seen = (80 + (x + w / 2) * 480 / 512) / 640
    # found and measured in one script run: the page redraws the boxes on every frame, so a box found by one call
    # may be gone by the next
    centre = page.wait_for_function("""() => {
        const b = document.querySelector('#cam-overlay .face-box');
        return b && (b.offsetLeft + b.offsetWidth / 2) / b.parentElement.offsetWidth;
    }""", timeout=20_000).json_value()
    assert centre == pytest.approx(1 - seen, abs=0.05) and centre > 0.5
    # frames keep coming, but the live region is not told about each one
    page.evaluate("""() => { window.__said = 0; new MutationObserver(() => window.__said++).observe(
        document.getElementById('cam-message'), {childList: true, characterData: true, subtree: true}); }""")
    page.wait_for_function("() => /^[0-9.]+ fps$/.test(document.getElementById('fps').textContent)", timeout=10_000)
    time.sleep(1.5)
    assert page.evaluate("window.__said") == 0
    assert page.inner_text("#cam-summary") in [f"1 face: {c}" for c in (*CLASSES, "uncertain")]
    page.click("#stop")
    assert errors == []
    page.context.close()


#: Wraps the page's fetch to note each frame the webcam page posts: its bytes, type and size as the browser decodes it.
RECORD_FRAMES = """(() => {
  const original = window.fetch;
  window.__frames = [];
  window.fetch = function (input, init) {
    const body = init && init.body;
    if (String((input && input.url) || input).includes("/api/v1/analyze") && body instanceof Blob) {
      const rec = { bytes: body.size, type: body.type };
      window.__frames.push(rec);
      createImageBitmap(body).then(function (b) { rec.w = b.width; rec.h = b.height; b.close(); });
    }
    return original.apply(this, arguments);
  };
})();"""


def test_webcam_sends_large_frames_and_keeps_each_face_number(server, browser):
    """Frames of 640 px (320 px before: faces 2-3 m away were too small to read), regions of them around the
    tracked face in between, and the face keeps its number from frame to frame (the page's tracker), shown on
    its label and in the list."""
    page, errors = open_page(browser, "about:blank", DESKTOP)
    page.add_init_script(RECORD_FRAMES)
    page.goto(server + "/webcam")
    page.click("#start")
    page.wait_for_selector("#cam-overlay .face-box", timeout=20_000)
    page.wait_for_function("() => window.__frames.filter(f => f.w).length >= 4", timeout=20_000)
    numbers = set()
    for _ in range(6):
        numbers |= set(page.eval_on_selector_all("#cam-overlay .face-box", "bs => bs.map(b => b.dataset.face)"))
        time.sleep(0.2)
    label = page.locator("#cam-overlay .face-label").first.inner_text()
    item = page.locator("#cam-faces .face-name").first.inner_text()
    frames = [f for f in page.evaluate("window.__frames") if "w" in f]
    page.click("#stop")
    # the fake camera films 640x480: sent as it is (the long side's cap is 640), as a JPEG; between whole frames
    # only the region around the tracked face, at the same scale (engine/track.py's RegionSearch)
    assert (frames[0]["w"], frames[0]["h"]) == (640, 480) and {f["type"] for f in frames} == {"image/jpeg"}
    assert all(f["w"] <= 640 and f["h"] <= 480 for f in frames) and any(f["w"] < 640 for f in frames)
    assert all(f["bytes"] > 10_000 for f in frames if f["w"] == 640)
    assert numbers == {"1"} and label.startswith("1 ") and label_class(label) in CLASSES
    assert item.startswith("Face 1: ")
    assert errors == []
    page.context.close()


# --- API docs, CORS -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_api_docs_page(server, browser, name, viewport):
    page, errors = open_page(browser, server + "/api/docs", viewport)  # fails on any CSP violation
    elsewhere: list[str] = []
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(server) else None)
    page.wait_for_selector("#operations-analysis-analyze", timeout=30_000)
    for tag in ("analysis", "model", "service"):
        assert page.locator(f"#operations-tag-{tag}").is_visible()
    page.click("#operations-analysis-analyze .opblock-summary")
    page.wait_for_selector("#operations-analysis-analyze .example, #operations-analysis-analyze .microlight")
    body = page.inner_text("#operations-analysis-analyze")
    assert "curl -F image=@photo.jpg" in body and '"expression": "happy"' in body and "/api#missing-image" in body

    page.click("#operations-service-health .opblock-summary")  # Try it out: a real request to this server
    page.click("#operations-service-health .try-out__btn")
    page.click("#operations-service-health .execute")
    page.wait_for_selector("#operations-service-health .live-responses-table .response-col_status")
    assert '"status": "ok"' in page.inner_text("#operations-service-health .live-responses-table")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"] + 1
    page.screenshot(path=str(SHOTS / f"moodlens-api-docs-{name}.png"), full_page=True)
    assert elsewhere == [] and errors == []
    page.context.close()


FETCH = """async url => {
    try { const r = await fetch(url); return [r.status, (await r.json()).status]; }
    catch (e) { return ['blocked', String(e)]; }
}"""


def test_cors_from_the_allowed_origin_only(server, browser, other_origin):
    context = browser.new_context()
    page = context.new_page()
    page.goto(other_origin + "/")
    assert page.evaluate(FETCH, server + "/api/v1/health") == [200, "ok"]
    answer = page.evaluate("""async ([url, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const r = await fetch(url, {method: 'POST', body: bytes, headers: {'Content-Type': 'image/jpeg'}});
        return [r.status, r.headers.get('Server-Timing') !== null, (await r.json()).faces.length];
    }""", [server + "/api/v1/analyze", base64.b64encode(jpeg(astronaut())).decode()])
    assert answer == [200, True, 1]  # a preflighted POST, and the exposed headers readable
    page.goto(other_origin.replace("127.0.0.1", "localhost") + "/")  # same server, another origin
    assert page.evaluate(FETCH, server + "/api/v1/health")[0] == "blocked"
    context.close()
