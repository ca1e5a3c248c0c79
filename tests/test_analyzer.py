"""Analyzer end to end on real photos: result schema, inputs, EXIF, groups, explain, model cards, threads,
rendering and face crops for folders. The expression model may be a placeholder: no test expects a particular
expression, only well-formed, consistent probabilities."""

from __future__ import annotations

import io
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import ASTRONAUT_FACE, encode
from moodlens import AnalysisResult, Analyzer
from moodlens.engine.classify import shipped_model_path
from moodlens.engine.detect import iou
from moodlens.engine.errors import ModelError, NotAnImageError, TruncatedImageError
from moodlens.engine.faces import face_crops_from_file
from moodlens.engine.render import draw_faces, encode_jpeg, encode_png, label_text

pytest.importorskip("skimage")

STAGES = {"decode", "detect", "align", "classify", "total"}


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer()


def assert_well_formed(result: AnalysisResult, analyzer: Analyzer) -> None:
    assert result.classes == analyzer.classes
    assert STAGES <= set(result.timings_ms) and all(v >= 0 for v in result.timings_ms.values())
    for face in result.faces:
        assert list(face.scores) == list(analyzer.classes)
        assert sum(face.scores.values()) == pytest.approx(1, abs=1e-3)
        assert all(0 <= p <= 1 for p in face.scores.values())
        assert face.expression == max(face.scores, key=face.scores.get)
        assert face.uncertain == (face.scores[face.expression] < analyzer.uncertain_below)
        assert len(face.keypoints) == 6 and 0 < face.score <= 1
        b = face.box
        assert 0 <= b.x and 0 <= b.y and b.x + b.w <= result.width + 1e-6 and b.y + b.h <= result.height + 1e-6
    json.dumps(result.to_dict())  # plain JSON types only


def test_astronaut(analyzer, astronaut_jpeg_bytes):
    result = analyzer.analyze(astronaut_jpeg_bytes)
    assert (result.width, result.height) == (512, 512) and len(result.faces) == 1
    assert_well_formed(result, analyzer)
    box = result.faces[0].box
    assert iou(np.array([[box.x, box.y, box.w, box.h]]), np.array([ASTRONAUT_FACE], float))[0, 0] > 0.6
    assert result.faces[0].heatmap is None and "heatmap" not in result.to_dict()["faces"][0]
    assert analyzer.classes == ("angry", "happy", "neutral", "sad") and isinstance(analyzer.model_card, dict)


def test_no_face(analyzer, coffee_jpeg_bytes):
    result = analyzer.analyze(coffee_jpeg_bytes)
    assert result.faces == [] and (result.width, result.height) == (600, 400)
    assert_well_formed(result, analyzer)


def test_bytes_path_and_array_agree(analyzer, tmp_path, astronaut_rgb):
    png = encode(astronaut_rgb, "PNG")
    (tmp_path / "a.png").write_bytes(png)
    results = [analyzer.analyze(x) for x in (png, tmp_path / "a.png", str(tmp_path / "a.png"), astronaut_rgb)]
    assert all(r.to_dict()["faces"] == results[0].to_dict()["faces"] for r in results)


def test_group_photo_in_one_call(analyzer, group_photo):
    result = analyzer.analyze(group_photo.rgb)
    assert len(result.faces) == 4
    assert_well_formed(result, analyzer)


def test_exif_rotated_jpeg(analyzer, astronaut_rgb):
    sideways = Image.fromarray(astronaut_rgb[:, 40:472]).transpose(Image.Transpose.ROTATE_90)  # stored on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    sideways.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    result = analyzer.analyze(buf.getvalue())
    assert (result.width, result.height) == (432, 512) and len(result.faces) == 1
    box = result.faces[0].box
    ref = np.array([[ASTRONAUT_FACE[0] - 40, *ASTRONAUT_FACE[1:]]], float)
    assert iou(np.array([[box.x, box.y, box.w, box.h]]), ref)[0, 0] > 0.6


def test_explain(analyzer, group_photo):
    result = analyzer.analyze(group_photo.rgb, explain=True)
    assert "explain" in result.timings_ms
    for face in result.faces:
        grid = np.asarray(face.heatmap)
        assert grid.shape == (7, 7) and grid.min() >= 0 and grid.max() <= 1
        assert grid.max() == 1 or grid.max() == 0  # normalised by the largest drop
    assert result.to_dict()["faces"][0]["heatmap"] == result.faces[0].heatmap


def test_analyze_faces_matches_analyze(analyzer, astronaut_rgb):
    result = analyzer.analyze(astronaut_rgb)
    crops = aligned_crops(astronaut_rgb)
    (expr,) = analyzer.analyze_faces(crops)
    assert expr.expression == result.faces[0].expression
    assert expr.scores == pytest.approx(result.faces[0].scores, abs=1e-5)
    (with_heat,) = analyzer.analyze_faces(crops, explain=True)
    assert np.asarray(with_heat.heatmap).shape == (7, 7)
    assert analyzer.analyze_faces(np.zeros((0, 48, 48), np.uint8)) == []


def aligned_crops(rgb: np.ndarray) -> np.ndarray:
    from moodlens.engine.align import align_face
    from moodlens.engine.detect import FaceDetector

    return np.stack([align_face(rgb, d) for d in FaceDetector().detect(rgb)])


def test_seven_classes(astronaut_rgb):
    seven = Analyzer(classes=7)
    result = seven.analyze(astronaut_rgb)
    assert len(seven.classes) == 7 and len(result.faces[0].scores) == 7
    assert_well_formed(result, seven)


def test_uncertain_threshold(astronaut_rgb):
    assert all(f.uncertain for f in Analyzer(uncertain_below=1.01).analyze(astronaut_rgb).faces)
    assert not any(f.uncertain for f in Analyzer(uncertain_below=0.0).analyze(astronaut_rgb).faces)


def test_model_card_beside_the_model(tmp_path, astronaut_rgb):
    model = tmp_path / "mine.tflite"
    shutil.copy(shipped_model_path("4"), model)
    card = {"classes": ["a", "b", "c", "d"], "uncertain_below": 0.9, "temperature": 1.3}
    model.with_suffix(".json").write_text(json.dumps(card))
    mine = Analyzer(model_path=model)
    assert mine.classes == ("a", "b", "c", "d") and mine.uncertain_below == 0.9 and mine.model_card == card
    assert list(mine.analyze(astronaut_rgb).faces[0].scores) == ["a", "b", "c", "d"]
    with pytest.raises(ModelError):
        Analyzer(model_path=tmp_path / "missing.tflite")


def test_bad_input_raises_typed_errors(analyzer, astronaut_jpeg_bytes):
    with pytest.raises(TruncatedImageError):
        analyzer.analyze(astronaut_jpeg_bytes[:3000])
    with pytest.raises(NotAnImageError):
        analyzer.analyze(b"not an image at all")


def test_threads(analyzer, astronaut_rgb, group_photo, coffee_rgb):
    images = [astronaut_rgb, group_photo.rgb, coffee_rgb] * 4
    serial = [analyzer.analyze(im).to_dict()["faces"] for im in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: analyzer.analyze(im).to_dict()["faces"], images))
    assert parallel == serial


def test_render(analyzer, group_photo):
    result = analyzer.analyze(group_photo.rgb, explain=True)
    before = group_photo.rgb.copy()
    drawn = draw_faces(group_photo.rgb, result.faces)
    assert drawn.shape == before.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, before) and np.array_equal(group_photo.rgb, before)  # drawn on a copy
    f = result.faces[0]
    assert label_text(f).startswith(f"{f.expression} ") and "%" in label_text(f)
    assert Image.open(io.BytesIO(encode_jpeg(drawn))).size == (640, 480)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(drawn)))), drawn)


def test_face_crops_from_file(tmp_path, astronaut_jpeg_bytes, caplog):
    (tmp_path / "a.jpg").write_bytes(astronaut_jpeg_bytes)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    crops = face_crops_from_file(tmp_path / "a.jpg")
    assert len(crops) == 1 and crops[0].shape == (48, 48) and crops[0].dtype == np.uint8
    whole = face_crops_from_file(tmp_path / "a.jpg", detect_faces=False)
    assert len(whole) == 1 and whole[0].shape == (48, 48)
    with caplog.at_level(logging.WARNING, logger="moodlens.engine.faces"):
        assert face_crops_from_file(tmp_path / "bad.jpg") == []
    assert "bad.jpg" in caplog.text


def test_a_large_jpeg_gives_full_size_boxes_and_the_same_reading(analyzer, astronaut_rgb):
    """Large JPEGs are decoded reduced for detection (and cropped from the full image only where a face is too
    small there); boxes are still in full-size pixels and the expression reads as from the full image."""
    import cv2

    big = cv2.resize(astronaut_rgb, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    reduced = analyzer.analyze(encode(big, "JPEG", quality=92))
    full = analyzer.analyze(big)  # an array is never reduced
    assert (reduced.width, reduced.height) == (2048, 2048)
    assert len(reduced.faces) == len(full.faces) == 1
    assert iou(np.array([tuple(reduced.faces[0].box)]), np.array([tuple(full.faces[0].box)]))[0, 0] > 0.9
    a, b = reduced.faces[0].scores, full.faces[0].scores
    assert max(abs(a[c] - b[c]) for c in a) < 0.05


def test_a_face_too_small_in_the_reduced_image_is_cropped_from_the_full_one(analyzer, astronaut_rgb):
    from moodlens.engine.decode import decode_picture

    head = astronaut_rgb[60:200, 160:300]
    canvas = np.full((2400, 3200, 3), 180, np.uint8)
    canvas[1200:1340, 1600:1740] = head  # a 140-px face: 17 px at the 1/8 decode, too small to crop from
    data = encode(canvas, "JPEG", quality=92)
    assert decode_picture(data, work_side=320).scale == 0.125
    result = analyzer.analyze(data)
    full = analyzer.analyze(canvas)
    assert len(result.faces) == len(full.faces)
    for got, want in zip(result.faces, full.faces, strict=True):
        assert max(abs(got.scores[c] - want.scores[c]) for c in got.scores) < 0.05


def test_the_photos_models_112_crop_comes_from_the_reduced_image_where_its_48_crop_does(astronaut_rgb):
    """The face-api crop (112 RGB) is cut from the reduced decode whenever the 48x48 one is (a face of at least
    96 px there), not from a second, full-size decode; a face too small there still gets both from the full one."""
    import cv2

    from moodlens.engine.align import align_crop
    from moodlens.engine.classify import CropSpec
    from moodlens.engine.decode import decode_picture

    photos = Analyzer(classes="4", model_path="photos")
    rgb = CropSpec(112, grey=False)
    assert rgb in photos.classifier.inputs
    portrait = cv2.resize(astronaut_rgb[0:300, 100:400], (1280, 1280))  # a 132-px crop at the 1/4 decode
    small = np.full((2400, 3200, 3), 180, np.uint8)
    small[1200:1340, 1600:1740] = astronaut_rgb[60:200, 160:300]  # 17 px at the 1/8 decode
    for image, from_reduced in ((portrait, True), (small, False)):
        picture = decode_picture(encode(image, "JPEG", quality=92), work_side=320)
        assert picture.scale < 1
        d = max(photos.detector.detect(picture.rgb, picture.full), key=lambda f: f.box[2] * f.box[3])
        assert (96 <= max(d.box[2:]) * 1.2 < 2 * 112) == from_reduced  # big enough for 48, not twice 112
        expected = align_crop(picture.rgb, d, 112, grey=False) if from_reduced else \
            align_crop(picture.full(), d.scaled(1 / picture.scale), 112, grey=False)
        np.testing.assert_array_equal(Analyzer._crop(picture, d, rgb), expected)


def test_python_api_takes_every_kind_of_input_and_reads_well(analyzer, astronaut_rgb, tmp_path):
    data = encode(astronaut_rgb)
    (tmp_path / "a.jpg").write_bytes(data)
    inputs = {"bytes": data, "path": tmp_path / "a.jpg", "str": str(tmp_path / "a.jpg"), "array": astronaut_rgb,
              "pil": Image.open(io.BytesIO(data)), "file": open(tmp_path / "a.jpg", "rb")}  # noqa: SIM115
    boxes = {}
    for name, value in inputs.items():
        result = analyzer.analyze(value)
        assert len(result.faces) == 1, name
        boxes[name] = tuple(result.faces[0].box)
    inputs["file"].close()
    x, y, w, h = boxes["bytes"]
    assert abs(x - ASTRONAUT_FACE[0]) < 20 and w > 50
    face = analyzer.analyze(data).faces[0]
    assert face.top_score == max(face.scores.values()) == face.scores[face.expression]
    assert f"{face.top_score:.0%}" in repr(face) and "FaceBox(x=" in repr(face) and "0000" not in repr(face.box)


def test_python_api_refuses_urls_and_bad_classes_clearly():
    with pytest.raises(NotAnImageError, match="URL"):
        Analyzer().analyze("https://example.com/photo.jpg")
    with pytest.raises(ValueError, match="classes must be one of"):
        Analyzer(classes="5")


def test_package_ships_type_information():
    from importlib import resources

    assert resources.files("moodlens").joinpath("py.typed").is_file()


def test_every_face_has_a_quality_verdict(analyzer, astronaut_rgb):
    import cv2

    from moodlens.engine.quality import QUALITIES

    sharp = analyzer.analyze(astronaut_rgb).faces[0]
    assert sharp.quality == "ok" and sharp.to_dict()["quality"] == "ok"
    blurred = analyzer.analyze(cv2.GaussianBlur(astronaut_rgb, (0, 0), 3)).faces
    assert [f.quality for f in blurred] == ["blurred"]
    small = cv2.resize(astronaut_rgb, (200, 200), interpolation=cv2.INTER_AREA)  # a face of ~37 px
    canvas = np.full((480, 640, 3), 150, np.uint8)
    canvas[140:340, 220:420] = small
    faces = analyzer.analyze(canvas).faces
    assert [f.quality for f in faces] == ["small"] and set(QUALITIES) >= {f.quality for f in faces}


def test_nose_off_the_eye_line_reads_as_profile():
    from moodlens.engine.quality import face_quality, nose_offset

    frontal = [(100, 100), (140, 100), (120, 120)]
    turned = [(100, 100), (140, 100), (146, 120)]  # the nose past the left eye: a head turned away
    assert nose_offset(frontal) == 0 and nose_offset(turned) > 0.5
    crop = np.random.default_rng(0).integers(0, 255, (48, 48)).astype(np.uint8)  # sharp
    assert face_quality(100, frontal, crop) == "ok" and face_quality(100, turned, crop) == "profile"


def test_a_time_limit_stops_the_analysis_between_stages_and_explain_passes(astronaut_jpeg_bytes):
    import time

    from moodlens.engine.errors import AnalysisTimeout
    from moodlens.engine.explain import occlusion_heatmaps

    analyzer = Analyzer(time_limit=1e-6)
    with pytest.raises(AnalysisTimeout, match="more than 1e-06 s"):
        analyzer.analyze(astronaut_jpeg_bytes)
    assert len(analyzer.analyze(astronaut_jpeg_bytes, time_limit=60).faces) == 1  # per call, over the default
    calls = []

    def check():  # the analyzer's deadline, here: stop before the third pass
        calls.append(time.perf_counter())
        if len(calls) == 3:
            raise AnalysisTimeout(1)

    faces = np.full((3, 48, 48), 128, np.uint8)
    with pytest.raises(AnalysisTimeout):
        occlusion_heatmaps(analyzer.classifier.predict, faces, analyzer.classifier.predict(faces), check=check)
    assert len(calls) == 3
