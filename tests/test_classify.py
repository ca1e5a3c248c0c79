"""The classify stage reads what crops a model takes from its inputs: one 48x48 grey face, or several crops of
the same face for a fused file (export.fused_logits_model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moodlens.engine.classify import FER_CROP, CropSpec, ExpressionClassifier, crops_from_fer
from moodlens.engine.errors import ModelError


def test_the_shipped_models_read_one_48x48_grey_crop():
    for classes in ("4", "7"):
        assert ExpressionClassifier(classes=classes).inputs == (FER_CROP,)


def test_fer_faces_become_larger_rgb_inputs_by_bilinear_upscaling():
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.uint8)
    rgb = crops_from_fer(faces, CropSpec(112, grey=False))
    assert rgb.shape == (3, 112, 112, 3) and rgb.dtype == np.float32
    assert np.array_equal(rgb[..., 0], rgb[..., 2])  # grey copied to every channel
    assert np.array_equal(crops_from_fer(faces, FER_CROP)[..., 0], faces.astype(np.float32))


@pytest.fixture(scope="module")
def fused_file(tmp_path_factory):
    """A two-input file (48 grey + 112 RGB) fused from two small random nets, and its Keras twin."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from moodlens.training.export import export_tflite, fused_logits_model

    def net(shape, seed):
        keras.utils.set_random_seed(seed)
        x = keras.Input(shape)
        y = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(keras.layers.Rescaling(1 / 255)(x))
        return keras.Model(x, keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(y)))

    fused = fused_logits_model([(net((48, 48, 1), 1), [0, 3, 6, 4]), (net((112, 112, 3), 2), [0, 3, 6, 4])],
                               [0.6, 0.4])
    path = export_tflite(fused, tmp_path_factory.mktemp("fused") / "fused.tflite", list(range(4)))
    return path, fused


def test_a_fused_file_takes_one_crop_per_input_in_a_fixed_order(fused_file):
    path, fused = fused_file
    clf = ExpressionClassifier(path)
    assert clf.inputs == (FER_CROP, CropSpec(112, grey=False))
    rng = np.random.default_rng(1)
    grey, rgb = rng.integers(0, 256, (5, 48, 48)), rng.integers(0, 256, (5, 112, 112, 3))
    want = fused.predict([grey[..., None].astype(np.float32), rgb.astype(np.float32)], verbose=0)
    want = np.exp(want) / np.exp(want).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(clf.predict([grey, rgb]), want, atol=1e-5)
    # FER-style faces alone: the RGB input is made from them, as crops_from_fer does
    np.testing.assert_allclose(clf.predict(grey), clf.predict([grey, crops_from_fer(grey, clf.inputs[1])]), atol=1e-6)
    with pytest.raises(ValueError, match="2 crops per face"):
        clf.predict([grey])


def test_a_network_that_takes_no_face_crop_is_refused(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from moodlens.training.export import export_tflite

    x = keras.Input((10,))
    path = export_tflite(keras.Model(x, keras.layers.Dense(4)(x)), tmp_path / "other.tflite", list(range(4)))
    with pytest.raises(ModelError, match="not an expression model"):
        ExpressionClassifier(path)


def test_the_analyzer_cuts_one_crop_per_input_and_explains_all_of_them_at_once(fused_file, astronaut_jpeg_bytes):
    from moodlens.engine.align import align_crop
    from moodlens.engine.analyzer import Analyzer

    path, _ = fused_file
    analyzer = Analyzer(model_path=path)
    result = analyzer.analyze(astronaut_jpeg_bytes, explain=True)
    assert len(result.faces) == 1
    face = result.faces[0]
    assert len(face.heatmap) == 7 and all(len(row) == 7 for row in face.heatmap)
    # the scores are the file's on the aligner's two crops of that face, cut from the same detection
    import cv2

    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(astronaut_jpeg_bytes, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    d = max(analyzer.detector.detect(rgb), key=lambda f: f.score)
    want = analyzer.classifier.predict([align_crop(rgb, d, 48, grey=True)[None],
                                        align_crop(rgb, d, 112, grey=False)[None]])[0]
    np.testing.assert_allclose([face.scores[c] for c in analyzer.classes], want, atol=2e-3)


def test_the_photos_alternative_is_shipped_by_name_with_both_crops_and_an_honest_card():
    """`--model photos`: the 4-class net fused with face-api.js's, one 48x48 grey and one 112x112 RGB crop."""
    from moodlens.engine.classify import ALTERNATIVES, model_file

    clf = ExpressionClassifier("photos")
    assert clf.path == model_file("photos") and clf.path.name == f"{ALTERNATIVES['photos']}.tflite"
    assert clf.inputs == (FER_CROP, CropSpec(112, grey=False)) and clf.classes == ("angry", "happy", "neutral", "sad")
    parts = clf.card["architecture"]["components"]
    assert [p["weight"] for p in parts] == [0.5, 0.5] and parts[1]["published"]
    assert "MIT license" in parts[1]["training"] and any("not documented" in x for x in clf.card["limitations"])
    assert {"photos", "PublicTest_ferplus"} <= set(clf.card["metrics"])
    p = clf.predict(np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.uint8))
    assert p.shape == (3, 4) and np.allclose(p.sum(axis=1), 1, atol=1e-3)


def test_a_file_named_like_an_alternative_is_still_a_path(tmp_path, monkeypatch):
    from moodlens.engine.classify import model_file

    monkeypatch.chdir(tmp_path)
    assert model_file("photos").name == "expression-4-photos.tflite"
    (tmp_path / "photos").write_bytes(b"")
    assert model_file("photos") == Path("photos")
