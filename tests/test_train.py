"""Training smoke test, exact resume, and the LiteRT export round trip (needs the `train` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_fixtures import make_fer_pair, synthetic_faces

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from moodlens.engine.classify import ExpressionClassifier  # noqa: E402
from moodlens.training.train import TrainConfig, train  # noqa: E402


def small_config(tmp_path, run: str, epochs: int = 1, classes_override: str = "7", **kw) -> TrainConfig:
    fer, plus = make_fer_pair(tmp_path)
    return TrainConfig(run_dir=str(tmp_path / run), fer2013=str(fer), ferplus=str(plus), classes=classes_override,
                       targets="mixed", epochs=epochs, batch_size=32, width=8, warmup_epochs=0,
                       extra={"deterministic": True}, **kw)


def test_one_epoch_writes_a_complete_run_folder(tmp_path):
    run = train(small_config(tmp_path, "run"), verbose=0)
    for name in ("config.json", "history.csv", "curves.png", "last.keras", "best.keras", "state.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 1
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_fer2013_4_acc" in history[0] and "val_ferplus_7_acc" in history[0]


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = small_config(tmp_path, "run")
    train(cfg, verbose=0)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, verbose=0)


def test_resume_continues_exactly(tmp_path):
    straight = train(small_config(tmp_path, "straight", epochs=2), verbose=0)
    interrupted = train(small_config(tmp_path, "interrupted", epochs=2), verbose=0, stop_after=1)
    assert json.loads((interrupted / "state.json").read_text())["epochs_done"] == 1
    train(TrainConfig(run_dir=str(interrupted)), resume=True, verbose=0)
    a = keras.models.load_model(straight / "last.keras").get_weights()
    b = keras.models.load_model(interrupted / "last.keras").get_weights()
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) < 1e-5
    assert len((interrupted / "history.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(("quantize", "tolerance"), [("none", 1e-5), ("dynamic", 0.05), ("int8", 0.1)])
def test_export_round_trip_matches_keras(tmp_path, quantize, tolerance):
    from moodlens.training.export import columns_for, export_tflite
    from moodlens.training.labels import FOUR, SEVEN

    run = train(small_config(tmp_path, "run"), verbose=0)
    model = keras.models.load_model(run / "best.keras")
    faces = np.random.default_rng(0).integers(0, 256, (20, 48, 48, 1)).astype(np.float32)
    for target in (SEVEN, FOUR):
        cols = columns_for(SEVEN, target)
        path = export_tflite(model, tmp_path / f"m{target.name}.tflite", cols, temperature=1.7, quantize=quantize,
                             calibration_faces=faces[:, :, :, 0] if quantize == "int8" else None)
        got = ExpressionClassifier(path, num_threads=1).predict(faces)
        logits = model.predict(faces, verbose=0)[:, cols] / 1.7
        ref = np.exp(logits - logits.max(1, keepdims=True))
        ref /= ref.sum(1, keepdims=True)
        assert got.shape == (20, len(target))
        assert float(np.abs(got - ref).max()) < tolerance
        assert np.allclose(got.sum(1), 1, atol=1e-5)


def delegated_partitions(content: bytes) -> int:
    """How many pieces LiteRT's default delegate (XNNPACK) took of a model: its DELEGATE nodes."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def int8_depthwise_filters(content: bytes) -> int:
    from tensorflow.lite.tools import flatbuffer_utils

    from moodlens.training import export

    return len(export.int8_depthwise_filters(flatbuffer_utils.convert_bytearray_to_object(bytearray(content))))


def test_a_dynamic_range_export_keeps_depthwise_filters_in_float(tmp_path):
    """XNNPACK runs no depthwise convolution with int8 filters and float activations: `export --quantize dynamic`
    stores those filters as float32, so the delegate keeps the graph whole; the other weights stay int8."""
    from moodlens.training.export import export_tflite

    inp = keras.Input((48, 48, 1))
    x = keras.layers.Conv2D(128, 3, strides=4, activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)  # 1,152 filter weights: big enough to quantize
    x = keras.layers.Conv2D(128, 1, activation="relu")(x)
    logits = keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, logits)
    path = export_tflite(model, tmp_path / "m.tflite", list(range(7)), quantize="dynamic")
    content = path.read_bytes()
    assert int8_depthwise_filters(content) == 0
    assert len(content) < 0.5 * model.count_params() * 4  # the convolutions and the dense layer are still int8
    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1)).astype(np.float32)
    ref = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(faces, verbose=0)))
    assert float(np.abs(ExpressionClassifier(path, num_threads=1).predict(faces) - ref).max()) < 0.05


def test_float_depthwise_filters_rejoin_the_photos_file_for_the_delegate_and_keep_its_scores(tmp_path):
    """The shipped photos file (face-api.js's depthwise-separable net inside) has int8 depthwise filters; as float
    its graph goes to XNNPACK in fewer pieces and scores faces as before within the int8 rounding. A file without
    such filters comes back as it was."""
    from moodlens.engine.classify import _shipped
    from moodlens.training.export import float_depthwise_filters

    shipped = _shipped("expression-4-photos").read_bytes()
    floated = float_depthwise_filters(shipped)
    assert int8_depthwise_filters(shipped) > 0 and int8_depthwise_filters(floated) == 0
    assert delegated_partitions(floated) < delegated_partitions(shipped)
    assert len(floated) < 1.05 * len(shipped)
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (16, s, s, c)).astype(np.float32) for s, c in ((48, 1), (112, 3))]
    scores = []
    for i, content in enumerate((shipped, floated)):
        (path := tmp_path / f"m{i}.tflite").write_bytes(content)
        scores.append(ExpressionClassifier(path, num_threads=1).predict(faces))
    assert float(np.abs(scores[0] - scores[1]).max()) < 0.02  # the hybrid kernels' int8 activations, gone
    four = _shipped("expression-4").read_bytes()
    assert float_depthwise_filters(four) is four


def test_resume_can_change_the_run_length(tmp_path):
    run = train(small_config(tmp_path, "run", epochs=3), verbose=0, stop_after=1)
    train(TrainConfig(run_dir=str(run)), resume=True, verbose=0, epochs=2)
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 2
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_init_from_a_seven_class_run_starts_a_four_class_run_where_it_left_off(tmp_path):
    from moodlens.training.labels import FOUR, SEVEN
    from moodlens.training.train import init_from_checkpoint

    seven = train(small_config(tmp_path, "seven"), verbose=0) / "best.keras"
    four = init_from_checkpoint(str(seven), FOUR.classes)
    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1)).astype(np.float32)
    old = keras.models.load_model(seven).predict(faces, verbose=0)
    assert np.allclose(four.predict(faces, verbose=0), old[:, [SEVEN.index(c) for c in FOUR.classes]], atol=1e-5)
    run = train(small_config(tmp_path, "four", classes_override="4", init_from=str(seven)), verbose=0)
    assert keras.models.load_model(run / "best.keras").output_shape[-1] == 4


def test_a_run_grown_deeper_starts_as_its_checkpoint_and_its_export_is_recovered_at_that_depth(tmp_path):
    from moodlens.training.export import export_tflite
    from moodlens.training.labels import SEVEN
    from moodlens.training.model import stage_depth
    from moodlens.training.recover import classifier_from_tflite
    from moodlens.training.train import init_from_checkpoint

    seven = train(small_config(tmp_path, "seven"), verbose=0) / "best.keras"
    faces = synthetic_faces(np.arange(64) % 7)
    x = faces[..., None].astype(np.float32)
    grown = init_from_checkpoint(str(seven), SEVEN.classes, dropout=0.0, stage_dropout=0.0, faces=faces,
                                 depth=(2, 3, 2, 3))
    assert stage_depth(grown) == (2, 3, 2, 3)
    old = keras.models.load_model(seven).predict(x, verbose=0)
    assert np.allclose(grown.predict(x, verbose=0), old, atol=1e-4)
    with pytest.raises(ValueError, match="not remove"):
        init_from_checkpoint(str(seven), SEVEN.classes, faces=faces, depth=(1, 2, 2, 2))
    path = export_tflite(grown, tmp_path / "grown.tflite", list(range(7)))
    path.with_suffix(".json").write_text(json.dumps(
        {"architecture": {"trained_classes": list(SEVEN.classes), "output_columns": list(range(7))}}))
    recovered = classifier_from_tflite(path)
    assert stage_depth(recovered) == (2, 3, 2, 3)
    assert np.allclose(recovered.predict(x, verbose=0), old, atol=1e-3)
    run = train(small_config(tmp_path, "deeper", init_from=str(seven), depth=(2, 2, 3, 3)), verbose=0)
    assert stage_depth(keras.models.load_model(run / "best.keras")) == (2, 2, 3, 3)

    from click.testing import CliRunner

    from moodlens.cli import main

    fer, _ = make_fer_pair(tmp_path)
    for bad in ("2,3,3", "2,x,3,3", "0,2,2,2"):
        result = CliRunner().invoke(main, ["train", "--run-dir", str(tmp_path / "cli"), "--fer2013", str(fer),
                                           "--depth", bad])
        assert result.exit_code == 2 and "--depth" in result.output and "four positive counts" in result.output, bad


def test_trains_from_parquet_face_shards(tmp_path):
    """`moodlens train --shards` reads what `moodlens spark-prepare` writes."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from fer_fixtures import synthetic_faces
    from moodlens.cli import main
    from moodlens.jobs.shards import shard_schema
    from moodlens.training.labels import FOUR

    labels = np.random.default_rng(2).integers(0, 4, 160)
    faces = synthetic_faces(labels)
    rows = [{"path": f"photo{i}.jpg", "face_index": 0, "label": FOUR.classes[y], "pixels": f.tobytes(),
             "width": 48, "height": 48} for i, (y, f) in enumerate(zip(labels, faces, strict=True))]
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema()), tmp_path / "shards" / "part-0.parquet")
    out = CliRunner().invoke(main, ["train", "--run-dir", str(tmp_path / "run"), "--shards", str(tmp_path / "shards"),
                                    "--classes", "4", "--targets", "fer2013", "--epochs", "1", "--width", "8",
                                    "--batch-size", "32"])
    assert out.exit_code == 0, out.output
    assert keras.models.load_model(tmp_path / "run" / "best.keras").output_shape[-1] == 4
    assert json.loads((tmp_path / "run" / "state.json").read_text())["monitor"] == "val_accuracy"

    # lengthened on resume, keeping every epoch's weights from then on
    out = CliRunner().invoke(main, ["train", "--run-dir", str(tmp_path / "run"), "--resume", "--epochs", "2",
                                    "--keep-epochs"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch-*.keras")) == ["epoch-002.keras"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["extra"] == {"keep_epochs": True}


def heads_config(tmp_path, run: str, epochs: int = 1) -> TrainConfig:
    fer, plus = make_fer_pair(tmp_path)
    return TrainConfig(run_dir=str(tmp_path / run), fer2013=str(fer), ferplus=str(plus), classes="7",
                       targets="heads", epochs=epochs, batch_size=32, width=8, warmup_epochs=0, optimizer="sgd",
                       lr=0.01, weight_decay=5e-4, ema=0.99, extra={"deterministic": True})


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    """One small two-head run, shared by the tests that only read it."""
    cfg = heads_config(tmp_path_factory.mktemp("heads"), "run")
    return cfg, train(cfg, verbose=0)


def test_two_heads_train_on_one_trunk_and_are_probed_through_both(heads_run):
    _, run = heads_run
    model = keras.models.load_model(run / "best.keras")
    assert {k: v.shape[-1] for k, v in model.output.items()} == {"fer2013": 7, "ferplus": 8}
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    for col in ("fer2013_loss", "ferplus_loss", "val_fer2013_7_acc", "val_ferplus_4_acc",
                "val_ferplus_4_via_fer2013_acc", "val_fer2013_4_via_ferplus_acc", "val_fer2013_7_raw_acc"):
        assert col in header, col


def test_a_two_head_run_without_ferplus_weight_trains_exactly_as_a_one_head_run(tmp_path, heads_run):
    """--ferplus-weight scales the FER+ head's loss: at 0 the trunk and the FER2013 head follow a one-head FER2013
    run step for step (how the FER+ head's gradient was shown to be what made two-head runs from scratch diverge);
    at the default 1 they do not."""
    import csv
    from dataclasses import replace

    cfg, with_ferplus = heads_run
    runs = {"w0": train(replace(heads_config(tmp_path, "w0"), ferplus_weight=0.0), verbose=0),
            "one": train(replace(heads_config(tmp_path, "one"), targets="fer2013"), verbose=0)}
    rows = {k: next(csv.DictReader((run / "history.csv").open())) for k, run in runs.items()}
    first = next(csv.DictReader((with_ferplus / "history.csv").open()))
    assert float(rows["w0"]["fer2013_loss"]) == pytest.approx(float(rows["one"]["loss"]), rel=1e-5)
    assert float(rows["w0"]["loss"]) == pytest.approx(float(rows["w0"]["fer2013_loss"]), rel=1e-6)
    assert cfg.ferplus_weight == 1 and float(first["fer2013_loss"]) != pytest.approx(float(rows["one"]["loss"]),
                                                                                     rel=1e-5)
    from moodlens.training.modelcard import training_description

    words = {w: training_description(json.loads((run / "config.json").read_text()), "7", "PublicTest")
             for w, run in (("w0", runs["w0"]), ("w1", with_ferplus))}
    assert "FER+ head's loss weighted 0.0" in words["w0"] and "weighted" not in words["w1"]


def test_a_row_without_ferplus_votes_gives_the_ferplus_head_no_gradient(heads_run):
    """Rows with no FER+ target (all-zero) must not train the FER+ head. Keras's CategoricalCrossentropy gives them
    loss 0 but the gradient softmax(logits), which pushed every FER+ logit down without end and made two-head runs
    from scratch diverge; the FER+ head's loss is soft_cross_entropy, whose gradient there is exactly 0."""
    import tensorflow as tf

    from moodlens.training.model import soft_cross_entropy

    logits = tf.Variable(np.random.default_rng(0).normal(0, 3, (4, 8)).astype(np.float32))
    targets = np.zeros((4, 8), np.float32)
    targets[0, 2], targets[1, [0, 5]] = 1.0, (0.25, 0.75)
    with tf.GradientTape() as tape:
        loss = soft_cross_entropy(targets, logits)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, logits).numpy()
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(targets, logits).numpy()
    np.testing.assert_allclose(loss.numpy(), keras_loss, rtol=1e-5)  # the same loss on every row
    np.testing.assert_allclose(grad[:2], tf.nn.softmax(logits).numpy()[:2] - targets[:2], atol=1e-6)
    assert not grad[2:].any()  # no target, no gradient
    _, run = heads_run
    assert keras.models.load_model(run / "last.keras").loss["ferplus"] is soft_cross_entropy


def test_norms_refreshed_for_the_weights_held_make_inference_read_as_batch_statistics_and_restore_exactly():
    """The averaged (EMA) weights get batch norms of their own: after a refresh on one batch of faces, the
    network in inference mode computes what it computes in training mode on that batch, dropout off."""
    from moodlens.training.model import build_classifier
    from moodlens.training.train import refresh_norm_statistics, restore_norm_statistics

    keras.utils.set_random_seed(0)
    model = build_classifier(7, width=8, dropout=0.5, stage_dropout=0.2)
    faces = synthetic_faces(np.arange(64) % 7)
    x = faces[..., None].astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [d.rate for d in drops]
    stale = model.predict(x, verbose=0)
    saved = refresh_norm_statistics(model, faces, batch_size=len(faces))
    assert [d.rate for d in drops] == rates and min(rates) > 0  # dropout back as it was
    refreshed = model.predict(x, verbose=0)
    for d in drops:
        d.rate = 0.0
    batch_statistics = keras.ops.convert_to_numpy(model(x, training=True))
    assert np.abs(refreshed - batch_statistics).max() < 1e-3 < np.abs(stale - batch_statistics).max()
    restore_norm_statistics(model, saved)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_two_head_resume_with_ema_continues_exactly(tmp_path):
    straight = train(heads_config(tmp_path, "straight", epochs=2), verbose=0)
    interrupted = train(heads_config(tmp_path, "interrupted", epochs=2), verbose=0, stop_after=1)
    train(TrainConfig(run_dir=str(interrupted)), resume=True, verbose=0)
    a, b = (keras.models.load_model(r / "last.keras") for r in (straight, interrupted))
    assert max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights(), strict=True)) < 1e-5
    ema_a, ema_b = (m.optimizer._model_variables_moving_average for m in (a, b))
    assert max(float(np.abs(x.numpy() - y.numpy()).max()) for x, y in zip(ema_a, ema_b, strict=True)) < 1e-5


@pytest.mark.parametrize(("classes", "head"), [("7", "fer2013"), ("4", "ferplus"), ("4", "fer2013")])
def test_export_round_trip_of_a_two_head_net(tmp_path, heads_run, classes, head):
    """Each head exports on its own, calibrated per class; the file gives what Keras gives."""
    from scipy.special import softmax

    from moodlens.training.export import export_model, model_logits, single_head

    cfg, run = heads_run
    card, paths = export_model(run / "best.keras", classes, tmp_path / f"m{classes}.tflite", cfg.fer2013,
                               cfg.ferplus, head=head, quantize="none")
    assert card["architecture"]["head"] == head and len(card["classes"]) == int(classes)
    cal = card["calibration"]
    assert len(cal["scale"]) == len(cal["bias"]) == int(classes) and "ece_after" in cal
    assert card["export_check"]["max_abs_diff_vs_keras"] < 1e-5
    assert {"PublicTest_fer2013", "PublicTest_ferplus", "PublicTest_fer2013_dedup"} <= set(card["metrics"])
    faces = np.random.default_rng(0).integers(0, 256, (12, 48, 48)).astype(np.uint8)
    one = single_head(keras.models.load_model(run / "best.keras"), head)
    cols = card["architecture"]["output_columns"]
    ref = softmax(model_logits(one, faces)[:, cols] * np.array(cal["scale"]) + np.array(cal["bias"]), axis=1)
    got = ExpressionClassifier(paths[0], num_threads=1).predict(faces)
    assert float(np.abs(got - ref).max()) < 1e-4
    assert (paths[0].with_suffix(".md")).read_text().count("vector scaling") == 1


def test_export_blends_both_heads_on_one_trunk(tmp_path, heads_run):
    """--head both: one file whose output is the calibrated geometric mean of both heads' 4-class probabilities,
    weighted by --ferplus-share, at the cost of one head (one trunk in the graph), measured beside each head alone;
    the share is refused where there is no blend to weight."""
    from scipy.special import log_softmax, softmax

    from moodlens.training.export import export_model, model_logits, single_head
    from moodlens.training.recover import classifier_from_tflite

    cfg, run = heads_run
    card, paths = export_model(run / "best.keras", "4", tmp_path / "both.tflite", cfg.fer2013, cfg.ferplus,
                               head="both", quantize="none", ferplus_share=0.7)
    arch = card["architecture"]
    assert arch["head"] == "both" and set(arch["head_choice"]) == {"fer2013", "ferplus", "both"}
    assert card["export_check"]["max_abs_diff_vs_keras"] < 1e-5
    faces = np.random.default_rng(0).integers(0, 256, (12, 48, 48)).astype(np.uint8)
    full = keras.models.load_model(run / "best.keras")
    fer = model_logits(single_head(full, "fer2013"), faces)[:, [0, 3, 6, 4]]  # angry, happy, neutral, sad
    plus = model_logits(single_head(full, "ferplus"), faces)[:, [4, 1, 0, 3]]
    blend = 0.3 * log_softmax(fer, axis=1) + 0.7 * log_softmax(plus, axis=1)
    cal = card["calibration"]
    ref = softmax(blend * np.array(cal["scale"]) + np.array(cal["bias"]), axis=1)
    np.testing.assert_allclose(ExpressionClassifier(paths[0], num_threads=1).predict(faces), ref, atol=1e-4)
    assert arch["parameters"] == full.count_params()  # both heads on the checkpoint's one trunk, not two trunks
    assert "blends both heads" in card["training"]["description"]
    assert "weighted 0.3 FER2013 head / 0.7 FER+ head" in card["training"]["description"]
    with pytest.raises(ValueError, match="cannot be read back"):
        classifier_from_tflite(paths[0])
    with pytest.raises(ValueError, match="weights the heads of --head both"):
        export_model(run / "best.keras", "4", tmp_path / "one.tflite", cfg.fer2013, cfg.ferplus, head="ferplus",
                     ferplus_share=0.7)


def test_export_picks_the_four_class_head_by_measurement(tmp_path, heads_run):
    from moodlens.training.export import export_model

    cfg, run = heads_run
    card, _ = export_model(run / "best.keras", "4", tmp_path / "m.tflite", cfg.fer2013, cfg.ferplus, quantize="none")
    measured = card["architecture"]["head_choice"]
    assert set(measured) == {"fer2013", "ferplus"} and all(set(m) == {"fer2013", "ferplus"} for m in measured.values())
    mean = {h: np.mean(list(m.values())) for h, m in measured.items()}
    assert card["architecture"]["head"] == max(mean, key=mean.get)
    assert "chosen over the other" in card["training"]["description"]


def test_export_fuses_a_two_head_net_with_another_run_into_one_file(tmp_path, heads_run):
    """--fuse: the weighted geometric mean of both nets' restricted probabilities, calibrated, in one file; nets
    on the same 48x48 input share it; the card names both and the file gives what Keras gives."""
    from scipy.special import softmax

    from moodlens.engine.classify import FER_CROP
    from moodlens.training.export import export_model, fuse_part, fused_logits_model, model_logits, single_head
    from moodlens.training.labels import class_set

    cfg, run = heads_run
    other = train(small_config(tmp_path, "other"), verbose=0) / "best.keras"
    card, paths = export_model(run / "best.keras", "4", tmp_path / "fused.tflite", cfg.fer2013, cfg.ferplus,
                               head="fer2013", quantize="none", fuse_with=(str(other),), fuse_weights=(0.75, 0.25),
                               calibrate_on="ferplus")
    parts = card["architecture"]["components"]
    assert [c["weight"] for c in parts] == [0.75, 0.25] and parts[1]["checkpoint"] == "best.keras"
    assert card["calibration"]["fitted_on"].endswith("FER+ majority labels")
    clf = ExpressionClassifier(paths[0], num_threads=1)
    assert clf.inputs == (FER_CROP,)
    faces = np.random.default_rng(0).integers(0, 256, (12, 48, 48)).astype(np.uint8)
    first = (single_head(keras.models.load_model(run / "best.keras"), "fer2013"), [0, 3, 6, 4])
    fused = fused_logits_model([first, fuse_part(other, class_set("4"))], [0.75, 0.25])
    cal = card["calibration"]
    ref = softmax(model_logits(fused, faces) * np.array(cal["scale"]) + np.array(cal["bias"]), axis=1)
    assert float(np.abs(clf.predict(faces) - ref).max()) < 1e-4


def test_two_one_head_nets_of_the_same_name_fuse():
    """Every run's net is called "moodlens_cnn": fusing two of them (an ensemble teacher) must still work."""
    from scipy.special import log_softmax

    from moodlens.training.export import fused_logits_model, model_logits
    from moodlens.training.model import build_classifier

    nets = [build_classifier(7, width=8) for _ in range(2)]
    assert nets[0].name == nets[1].name
    fused = fused_logits_model([(n, list(range(7))) for n in nets], [0.5, 0.5])
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48)).astype(np.uint8)
    ref = sum(0.5 * log_softmax(model_logits(n, faces), axis=1) for n in nets)
    np.testing.assert_allclose(model_logits(fused, faces), ref, atol=1e-5)


FACEAPI_MODEL = Path(__file__).resolve().parents[1] / ".cache/faceapi/node_modules/@vladmandic/face-api/model"


@pytest.mark.skipif(not FACEAPI_MODEL.is_dir(), reason="needs face-api.js (make faceapi)")
def test_a_faceapi_model_folder_fuses_as_the_published_net_and_its_card_says_so():
    """`export --fuse FOLDER`: face-api's net as published, its logits restricted to the target classes give its
    own probabilities over them; the component and the limitations name where it comes from."""
    from scipy.special import softmax

    from moodlens.training.export import fuse_component, fuse_part
    from moodlens.training.faceapi import FACEAPI_CLASSES, load_faceapi_expression_net
    from moodlens.training.labels import class_set
    from moodlens.training.modelcard import limitations

    four = class_set("4")
    net, cols = fuse_part(FACEAPI_MODEL, four)
    assert net.input_shape == (None, 112, 112, 3) and cols == [0, 1, 2, 3]
    x = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3)).astype(np.float32)
    p7 = load_faceapi_expression_net(FACEAPI_MODEL).predict(x, verbose=0)
    p4 = p7[:, [list(FACEAPI_CLASSES.values()).index(c) for c in four.classes]]
    assert np.allclose(softmax(net.predict(x, verbose=0), axis=1), p4 / p4.sum(axis=1, keepdims=True), atol=1e-5)
    part = fuse_component(str(FACEAPI_MODEL), net, cols, 0.5)
    assert part["published"] and part["config"] == {} and "MIT license" in part["training"]
    text = limitations([[48, 48, 1], [112, 112, 3]])
    assert not any(x.startswith("48x48 grayscale input") for x in text) and "not documented" in text[-1]


SHIPPED_SEVEN = Path(__file__).resolve().parents[1] / "src" / "moodlens" / "models" / "expression-7.tflite"


def test_a_shipped_model_is_recovered_as_a_trainable_network_giving_the_same_scores():
    """The .tflite file's int8 weights, folded batch norms and calibration are undone into a Keras network."""
    from scipy.special import softmax

    from moodlens.training.recover import calibration_of, classifier_from_tflite

    faces = synthetic_faces(np.arange(64) % 7)
    model = classifier_from_tflite(SHIPPED_SEVEN, faces)
    scale, bias = calibration_of(json.loads(SHIPPED_SEVEN.with_suffix(".json").read_text()))
    ours = softmax(model.predict(faces[..., None].astype(np.float32), verbose=0) * scale + bias, axis=1)
    shipped = ExpressionClassifier(SHIPPED_SEVEN, num_threads=1).predict(faces)
    assert float(np.abs(ours - shipped).max()) < 0.03  # the file runs int8 kernels; the recovered net float32
    # batch statistics of the same faces reproduce the folded normalisation in training mode as well
    batch = np.asarray(model(faces[..., None].astype(np.float32), training=True))
    assert np.allclose(batch, model.predict(faces[..., None].astype(np.float32), verbose=0), atol=1e-2)


def test_a_two_head_run_starts_from_a_shipped_model_with_both_heads_giving_its_scores(tmp_path):
    from moodlens.training.labels import FERPLUS_HEAD, SEVEN
    from moodlens.training.model import stage_depth
    from moodlens.training.recover import classifier_from_tflite
    from moodlens.training.train import HEADS, init_from_checkpoint

    faces = synthetic_faces(np.arange(32) % 7)
    shipped = classifier_from_tflite(SHIPPED_SEVEN, faces)
    recovered = shipped.predict(faces[..., None].astype(np.float32), verbose=0)
    model = init_from_checkpoint(str(SHIPPED_SEVEN), HEADS, faces=faces)
    heads = model.predict(faces[..., None].astype(np.float32), verbose=0)
    assert np.allclose(heads["fer2013"], recovered, atol=1e-4)
    shared = [c for c in FERPLUS_HEAD.classes if c in SEVEN.classes]
    assert np.allclose(heads["ferplus"][:, [FERPLUS_HEAD.index(c) for c in shared]],
                       recovered[:, [SEVEN.index(c) for c in shared]], atol=1e-4)
    kernel, bias = model.get_layer("ferplus_logits").get_weights()
    contempt = FERPLUS_HEAD.index("contempt")  # a class the shipped net never saw starts flat and unlikely
    assert not kernel[:, contempt].any() and bias[contempt] == bias.min()
    with pytest.raises(ValueError, match="--width 32"):
        init_from_checkpoint(str(SHIPPED_SEVEN), HEADS, width=36, faces=faces)
    # grown one convolution deeper in every stage, its new batch norms set from the same faces: the same scores
    # with batch statistics too
    deeper = init_from_checkpoint(str(SHIPPED_SEVEN), SEVEN.classes, dropout=0.0, stage_dropout=0.0, faces=faces,
                                  depth=tuple(d + 1 for d in stage_depth(shipped)))
    x = faces[..., None].astype(np.float32)
    assert np.allclose(deeper.predict(x, verbose=0), recovered, atol=1e-4)
    assert np.allclose(np.asarray(deeper(x, training=True)), recovered, atol=5e-2)
    cfg = heads_config(tmp_path, "from-shipped")
    cfg.width, cfg.init_from = 32, str(SHIPPED_SEVEN)
    run = train(cfg, verbose=0)
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 1


FACEAPI_MODEL = Path(__file__).resolve().parents[1] / ".cache/faceapi/node_modules/@vladmandic/face-api/model"


@pytest.mark.slow
@pytest.mark.skipif(not FACEAPI_MODEL.is_dir(), reason="face-api's weights not fetched (make faceapi)")
def test_faceapi_arch_starts_as_the_published_net_and_fine_tunes_with_its_own_outputs_mixed_in(tmp_path):
    from moodlens.training.faceapi import (
        FACEAPI_CLASSES,
        faceapi_classifier,
        load_faceapi_expression_net,
        to_faceapi_input,
    )
    from moodlens.training.labels import FER2013_CLASSES

    # the classifier over our class order is face-api's net with its columns picked: same probabilities
    x = to_faceapi_input(synthetic_faces(np.arange(8) % 7, seed=3)[..., None].astype(np.float32)).numpy()
    original = load_faceapi_expression_net(FACEAPI_MODEL).predict(x, verbose=0)
    ours = keras.ops.softmax(faceapi_classifier(FACEAPI_MODEL, FER2013_CLASSES).predict(x, verbose=0)).numpy()
    order = [list(FACEAPI_CLASSES.values()).index(c) for c in FER2013_CLASSES]
    np.testing.assert_allclose(ours, original[:, order], atol=1e-5)

    cfg = small_config(tmp_path, "ft", arch="faceapi", faceapi_dir=str(FACEAPI_MODEL), distill=0.5,
                       lr=1e-4)
    cfg.targets, cfg.limit, cfg.extra["keep_epochs"] = "ferplus-soft", 64, True
    run = train(cfg, verbose=0)
    assert (run / "epoch-001.keras").is_file()
    history = (run / "history.csv").read_text().splitlines()
    assert "val_ferplus_4_acc" in history[0] and len(history) == 2
    tuned = keras.models.load_model(run / "last.keras")
    assert tuned.input_shape[1:] == (112, 112, 3) and tuned.output_shape[-1] == 7


def test_a_shipped_model_teaches_the_student_on_the_view_the_student_sees(tmp_path):
    """--teacher photos --distill 1: every target is the teacher's output on the same augmented face (in the
    student's class order), and the run trains on them."""
    from click.testing import CliRunner

    from moodlens.cli import main
    from moodlens.engine.classify import model_file
    from moodlens.training.labels import FER2013_CLASSES
    from moodlens.training.train import load_datasets, make_train_stream, teacher_model

    cfg = small_config(tmp_path, "distil", classes_override="4", distill=1.0, teacher="photos")
    cfg.targets, cfg.label_smoothing, cfg.limit = "fer2013", 0.0, 64
    train_set, _, _ = load_datasets(cfg)
    x, t, _ = next(iter(make_train_stream(train_set, cfg, 0)[0]))
    net = ExpressionClassifier(model_file("photos"))
    cols = [net.classes.index(c) for c in train_set.class_set.classes]
    np.testing.assert_allclose(t.numpy(), net.predict(x.numpy()[..., 0])[:, cols], atol=1e-5)
    assert not np.allclose(t.numpy(), train_set.target[:32])  # not the labels

    with pytest.raises(ValueError, match="cannot teach"):
        teacher_model("photos", FER2013_CLASSES)
    run = train(cfg, verbose=0)
    assert keras.models.load_model(run / "last.keras").output_shape[-1] == 4
    assert json.loads((run / "config.json").read_text())["teacher"] == "photos"

    fer, _ = make_fer_pair(tmp_path)
    result = CliRunner().invoke(main, ["train", "--run-dir", str(tmp_path / "cli"), "--fer2013", str(fer),
                                       "--teacher", "photos"])
    assert result.exit_code == 2 and "--teacher needs --distill" in result.output


@pytest.mark.parametrize("options, refusal", [
    (["--teacher-flip"], "--teacher-flip needs --teacher"),
    (["--ferplus-weight", "0.5"], "--ferplus-weight needs --targets heads"),
])
def test_train_refuses_an_option_that_would_be_ignored(tmp_path, options, refusal):
    from click.testing import CliRunner

    from moodlens.cli import main

    fer, _ = make_fer_pair(tmp_path)
    result = CliRunner().invoke(main, ["train", "--run-dir", str(tmp_path / "cli"), "--fer2013", str(fer), *options])
    assert result.exit_code == 2 and refusal in result.output
    assert not (tmp_path / "cli").exists()  # refused before the run folder is made


def test_a_flip_teacher_gives_a_face_and_its_mirror_image_the_same_target():
    """--teacher-flip: the teacher's output is the mean over the view and its mirror image, so it cannot tell the
    two apart, and it differs from the one-view output it averages."""
    from moodlens.training.labels import FER2013_CLASSES
    from moodlens.training.modelcard import distill_words
    from moodlens.training.train import teacher_model

    faces = np.random.default_rng(0).uniform(0, 255, (8, 48, 48, 1)).astype(np.float32)
    flip = teacher_model(str(SHIPPED_SEVEN), FER2013_CLASSES, flip=True)
    one_view = teacher_model(str(SHIPPED_SEVEN), FER2013_CLASSES)
    np.testing.assert_allclose(flip(faces), flip(faces[:, :, ::-1]), atol=1e-6)
    np.testing.assert_allclose(flip(faces), (one_view(faces) + one_view(faces[:, :, ::-1])) / 2, atol=1e-6)
    assert not np.allclose(flip(faces), one_view(faces), atol=1e-3)
    run_cfg = {"distill": 0.7, "teacher": str(SHIPPED_SEVEN)}
    assert "mirror image" in distill_words(run_cfg | {"teacher_flip": True}) and \
        "mirror" not in distill_words(run_cfg)


def test_a_distilled_model_card_names_its_teacher_and_what_the_teacher_measured():
    from moodlens.engine.classify import model_file
    from moodlens.training.modelcard import training_description

    run_cfg = {"classes": "7", "targets": "fer2013", "epochs": 12, "distill": 0.7, "teacher": "photos"}
    text = training_description(run_cfg, "7", "PublicTest")
    card = json.loads(model_file("photos").with_suffix(".json").read_text())
    assert "weight 0.7" in text and "models/expression-4-photos.tflite" in text
    assert f"{card['metrics']['PublicTest_fer2013']['accuracy']:.1%} on PublicTest" in text
    assert "teacher" not in training_description(run_cfg | {"distill": 0.0}, "7", "PublicTest")
    # --arch faceapi with a --teacher file learns from that file, as train.make_train_stream does
    faceapi = training_description(run_cfg | {"arch": "faceapi"}, "7", "PublicTest")
    assert "models/expression-4-photos.tflite" in faceapi and "original net's own" not in faceapi
    assert "original net's own output" in training_description(
        {"arch": "faceapi", "distill": 0.3, "epochs": 3}, "7", "PublicTest")


def test_a_card_lists_each_training_stage_once_where_a_run_starts_from_a_shipped_file(tmp_path):
    from moodlens.training.modelcard import stages_words, training_lines, training_stages

    before = json.loads(SHIPPED_SEVEN.with_suffix(".json").read_text())["training"]["stages"]
    run_cfg = {"classes": "7", "targets": "fer2013", "epochs": 3, "init_from": str(SHIPPED_SEVEN)}
    stages = training_stages(run_cfg, "7", "PublicTest")
    assert stages[:-1] == before and len(stages) == len(before) + 1
    assert "shipped before it (the stage before;" in stages[-1] and "3 epochs" in stages[-1]
    assert not any("that model was" in stage for stage in stages)  # told once each, not nested
    assert stages_words(stages).startswith(f"In {len(stages)} stages") and "(2) Fine-tuned" in stages_words(stages)
    assert training_lines({"stages": stages})[2:] == [f"{i}. {s}" for i, s in enumerate(stages, start=1)]
    # a card written before stages were listed is one stage
    (tmp_path / "old.tflite").write_bytes(b"")
    (tmp_path / "old.json").write_text(json.dumps({"training": {"description": "Trained from scratch."}}))
    assert training_stages(run_cfg | {"init_from": str(tmp_path / "old.tflite")}, "7", "PublicTest")[0] == \
        "Trained from scratch."
    assert training_stages({"epochs": 3}, "7", "PublicTest")[0].startswith("Trained from scratch")


def test_history_rows_keep_their_columns_when_a_resumed_run_logs_other_metrics(tmp_path):
    import pandas as pd

    from moodlens.training.train import write_history_row

    path = tmp_path / "history.csv"
    write_history_row(path, 0, {"loss": 1.0, "val_a_acc": 0.5, "val_b_acc": 0.25})
    write_history_row(path, 1, {"loss": 0.5, "val_b_acc": 0.75, "val_new_acc": 0.9})  # a lost and a new metric
    h = pd.read_csv(path)
    assert list(h.columns) == ["epoch", "loss", "val_a_acc", "val_b_acc"]
    assert h["val_b_acc"].tolist() == [0.25, 0.75] and h["loss"].tolist() == [1.0, 0.5]
    assert h["val_a_acc"].isna().tolist() == [False, True]
