"""End to end: `moodlens serve` (gunicorn, real models) driven by a real headless Chromium.

Uploads a photo through the file input, runs the webcam page on Chromium's fake camera fed with a Y4M video of
the same photo, checks camera errors, and saves screenshots to /tmp/moodlens-*.png (desktop and phone).
Skips when /usr/bin/chromium or playwright is missing (`make system-deps` installs Chromium).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from web_helpers import CHROMIUM, CHROMIUM_ARGS, astronaut, coffee, free_port, jpeg, write_y4m

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (make system-deps)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow
SHOTS = Path(os.environ.get("MOODLENS_SCREENSHOTS", "/tmp"))
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`moodlens serve` on a free port, until the module's tests are done."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moodlens", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--threads", "4"],
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
    face, no_face = d / "astronaut.jpg", d / "coffee.jpg"
    face.write_bytes(jpeg(astronaut()))
    no_face.write_bytes(jpeg(coffee()))
    return {"face": face, "no_face": no_face, "camera": write_y4m(d / "camera.y4m", astronaut())}


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


@pytest.mark.parametrize("name, viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_upload_photos(server, browser, files, name, viewport):
    page, errors = open_page(browser, server + "/", viewport)
    page.set_input_files("#file-input", [str(files["face"]), str(files["no_face"])])
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done]').length === 2", timeout=20_000)
    face_card = page.locator(".result", has_text="astronaut.jpg")
    label = face_card.locator(".overlay .face-label").first
    assert label.is_visible()
    assert label.inner_text().split()[-2] in CLASSES  # "happy 87%"
    assert face_card.locator(".bar-row").count() >= 4
    assert page.locator(".result", has_text="coffee.jpg").locator(".status").inner_text() == "No face found."

    page.check("#heatmap")  # re-asks the API with explain=1 and draws the heatmap over the face
    page.wait_for_selector(".show-heatmap .result .face-box canvas.heatmap", state="visible", timeout=20_000)
    page.wait_for_function("() => document.querySelectorAll('.result[data-state=done]').length === 2")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scroll
    page.screenshot(path=str(SHOTS / f"moodlens-upload-{name}.png"), full_page=True)
    assert errors == []
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
    assert page.locator("#cam-overlay .face-label").first.inner_text().split()[-2] in CLASSES
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
    assert "Model card" in page.inner_text("h1")
    assert page.locator(".chip", has_text="happy").count() >= 1  # the classes (and the trained classes)
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    page.screenshot(path=str(SHOTS / f"moodlens-model-{name}.png"), full_page=True)
    assert errors == []
    page.context.close()
