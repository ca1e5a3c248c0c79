"""The webcam page's tracker and tiles (web/static/webcam.js) against the engine's (engine/track.py): the same
ids, the same tiles and the same mosaic for the same faces, frame by frame, in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moodlens.engine.track import FaceTracker, Mosaic, RegionSearch
from web_helpers import CHROMIUM, CHROMIUM_ARGS

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")]

STATIC = Path(__file__).resolve().parents[1] / "src" / "moodlens" / "web" / "static"
#: The elements webcam.js looks up when it loads (it runs nothing until Start is pressed).
PAGE = """<!doctype html><button id=start></button><button id=stop></button><select id=cam-classes></select>
<output id=fps></output><p id=cam-message></p><div id=cam-stage><video id=video></video>
<div id=cam-overlay></div></div><p id=cam-summary></p><ol id=cam-faces></ol><p id=cam-uncertain-note></p>"""
W, H = 640, 480

#: Runs the page's tracker over the frames: for each, the tiles it asks for, then the ids it gives the faces.
RUN = """([frames, width, height]) => {
  const tracker = window.MoodlensWebcam.makeTracker();
  return frames.map(boxes => {
    const tiles = tracker.tiles(width, height);
    const faces = boxes.map(b => ({ box: b, scores: { happy: 1 }, expression: "happy" }));
    const ids = tracker.track({ faces: faces, uncertain_below: 0.5 }).faces.map(f => f.id);
    return { tiles: tiles, ids: ids };
  });
}"""


def frames(n: int = 60, seed: int = 0) -> list[list[list[float]]]:
    """Faces drifting about a 640x480 frame: up to three of 30-110 px, one now and then missed or arriving."""
    rng = np.random.default_rng(seed)
    faces = [[80.0, 90.0, 50.0, 4.0, 1.0], [330.0, 110.0, 45.0, -3.0, 2.0], [420.0, 300.0, 100.0, 2.0, -1.0]]
    out = []
    for i in range(n):
        boxes = []
        for k, f in enumerate(faces):
            f[0] = float(np.clip(f[0] + f[3] + rng.normal(0, 1.5), 0, W - f[2]))
            f[1] = float(np.clip(f[1] + f[4] + rng.normal(0, 1.5), 0, H - f[2]))
            if (k == 2 and i < 15) or rng.random() < 0.05:  # the third arrives late; any may be missed
                continue
            boxes.append([round(f[0], 1), round(f[1], 1), f[2], f[2]])
        out.append(boxes)
    return out


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.set_content(PAGE)
        page.add_script_tag(content=(STATIC / "webcam.js").read_text())
        yield page
        browser.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_page_asks_for_the_same_tiles_and_gives_the_same_ids_as_the_engine(page, seed):
    video = frames(seed=seed)
    js = page.evaluate(RUN, [video, W, H])
    tracker, regions = FaceTracker(), RegionSearch()
    kinds = set()
    for boxes, got in zip(video, js, strict=True):
        tiles = regions.tiles(tracker.tracks, W, H)
        assert got["tiles"] == (None if tiles is None else [list(t) for t in tiles])
        assert got["ids"] == tracker.update([tuple(b) for b in boxes])
        kinds.add("whole" if tiles is None else len(tiles))
    assert "whole" in kinds and len(kinds) >= 3  # whole frames and mosaics of different sizes were compared


def test_the_page_lays_tiles_out_and_maps_boxes_back_as_the_engine(page):
    tiles = [[10, 20, 100, 90], [300, 200, 80, 96], [500, 50, 96, 96], [200, 300, 120, 100], [0, 380, 96, 100]]
    boxes = [[x, y, s, s] for x in range(0, 400, 37) for y in range(0, 300, 41) for s in (20, 50)]
    js = page.evaluate("""([tiles, boxes]) => { const m = window.MoodlensWebcam.mosaicOf(tiles);
        return { size: [m.width, m.height], origins: tiles.map((_, i) => m.origin(i)),
                 offsets: boxes.map(b => m.offset(b)) }; }""", [tiles, boxes])
    mosaic = Mosaic(tuple(tuple(t) for t in tiles))
    assert js["size"] == list(mosaic.size) and js["origins"] == [list(mosaic.origin(i)) for i in range(5)]
    expected = [mosaic.offset(tuple(b)) for b in boxes]
    assert js["offsets"] == [None if o is None else list(o) for o in expected]
    assert any(o is None for o in expected) and len({json.dumps(o) for o in expected}) > 3
