"""Export a trained Keras classifier to a single .tflite file that LiteRT runs without TensorFlow.

The exported graph takes raw grayscale faces (N, 48, 48, 1) float32 0..255 and returns calibrated class
probabilities: softmax(logits[:, columns] * scale + bias), with one scale and one bias per class (vector
scaling; a single temperature T is scale = 1/T, bias = 0). `columns` restricts a network to a subset (the
4-class model is a 7- or 8-class head restricted to angry, happy, neutral, sad). A two-head checkpoint exports
one head at a time (`single_head`).

Several nets can be fused into one file (`fused_logits_model`): a weighted geometric mean of their restricted
probabilities, then the same calibration. Each distinct input shape is one input of the file (48x48 grey for
moodlens's nets, 112x112 RGB for face-api's), and the engine cuts one crop per input (engine.classify.CropSpec).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from moodlens.training.labels import ClassSet

#: Training faces whose activations set the int8 ranges of a full-integer export (`quantize="int8"`)
INT8_CALIBRATION_FACES = 1000


def single_head(model, head: str | None = None):
    """A one-output logits model: `model` itself, or the named head of a two-head checkpoint."""
    import keras

    if not isinstance(model.output, dict):
        return model
    if head not in model.output:
        raise ValueError(f"the checkpoint has heads {sorted(model.output)}: choose one, not {head!r}")
    return keras.Model(model.input, model.output[head], name=f"{model.name}_{head}")


EQUAL_SHARE = 0.5  # --head both without --ferplus-share: the plain geometric mean of the two heads


def blended_heads(model, heads: dict[str, ClassSet], target: ClassSet, ferplus_share: float):
    """A two-head checkpoint (`heads`: checkpoint_heads) as one logits model over `target`: the log of the
    weighted geometric mean of its heads' probabilities restricted to `target`, the FER+ head's weight
    `ferplus_share`. The heads sit on one trunk, so it costs what one head costs; it reads FER2013's labels and
    FER+'s at once, where each head alone favours its own."""
    import keras

    share = {"fer2013": 1 - ferplus_share, "ferplus": ferplus_share}
    blend = weighted_log_mean([(model.output[h], columns_for(c, target)) for h, c in heads.items()],
                              [share[h] for h in heads])
    return keras.Model(model.input, blend, name=f"{model.name}_both")


def weighted_log_mean(logits: list, weights) -> object:
    """sum_k w_k * log_softmax(logits_k[:, columns_k]) for [(logits tensor, columns)]: the log of a weighted
    geometric mean of the restricted probabilities (its softmax is that mean, renormalised)."""
    import keras

    terms = [keras.ops.log_softmax(keras.ops.take(t, np.array(cols), axis=1), axis=1) * float(w)
             for (t, cols), w in zip(logits, weights, strict=True)]
    return sum(terms[1:], terms[0])


def head_net(model, heads: dict, name: str | None, target: ClassSet, ferplus_share: float = EQUAL_SHARE):
    """(logits net, classes it was trained on, columns giving `target`) of head `name` of a checkpoint: a head,
    the checkpoint itself (one-head: None), or "both" heads blended (`blended_heads`)."""
    if name == "both":
        return blended_heads(model, heads, target, ferplus_share), target, list(range(len(target)))
    return single_head(model, name), heads[name], columns_for(heads[name], target)


def inference_model(model, columns: list[int], temperature: float = 1.0, flip_tta: bool = False,
                    scale: np.ndarray | None = None, bias: np.ndarray | None = None):
    """Wrap a logits model: (optionally average with the mirrored face), keep `columns`, calibrate, softmax.

    Calibration is `* scale + bias` per class when given, else `/ temperature`.
    """
    import keras

    inputs = [keras.Input(t.shape[1:], name=input_name(t.shape)) for t in model.inputs]
    one = inputs[0] if len(inputs) == 1 else inputs
    logits = model(one, training=False)
    if flip_tta:  # expressions are left-right symmetric: averaging both views is a cheap, steady gain
        flipped = [keras.ops.flip(x, axis=2) for x in inputs]
        logits = (logits + model(flipped[0] if len(inputs) == 1 else flipped, training=False)) / 2
    picked = keras.layers.Lambda(lambda z: keras.ops.take(z, np.array(columns), axis=1), name="pick")(logits) \
        if list(columns) != list(range(model.output_shape[-1])) else logits
    if scale is None:
        calibrated = picked / float(temperature)
    else:
        calibrated = picked * np.asarray(scale, np.float32) + np.asarray(bias if bias is not None else 0, np.float32)
    probs = keras.layers.Activation("softmax", name="probabilities")(calibrated)
    return keras.Model(one, probs, name="moodlens_expression")


def input_name(shape) -> str:
    """"face" for the 48x48 grey input (the classic file's name), "face_<size>_rgb" etc. for others."""
    size, channels = int(shape[1]), int(shape[-1])
    return "face" if (size, channels) == (48, 1) else f"face_{size}_{'grey' if channels == 1 else 'rgb'}"


def fused_logits_model(parts, weights):
    """One model from several single-head logits nets [(net, columns)] with `weights`: their weighted_log_mean.
    Nets that take the same input shape share one input: one crop feeds them all."""
    import keras

    inputs: dict[tuple, object] = {}
    logits, names = [], set()
    for net, cols in parts:
        if net.name in names:  # two runs' nets share build_classifier's name; Keras wants each once in a model
            net = keras.Model(net.input, net.output, name=f"{net.name}_{len(names)}")
        names.add(net.name)
        shape = tuple(int(v) for v in net.input_shape[1:])
        x = inputs.setdefault(shape, keras.Input(shape, name=input_name((None, *shape))))
        logits.append((net(x, training=False), cols))
    fused = weighted_log_mean(logits, weights)
    ordered = sorted(inputs.items(), key=lambda kv: (kv[0] != (48, 48, 1), kv[0]))  # the engine's crop order
    tensors = [t for _, t in ordered]
    return keras.Model(tensors[0] if len(tensors) == 1 else tensors, fused, name="fused_logits")


def keras_inputs(model, faces: np.ndarray):
    """(N, 48, 48) FER-style faces as `model`'s input(s): each input's crop made as the engine makes it
    (engine.classify.crops_from_fer), so Keras and the exported file see the same pixels. Crops already of a
    one-input model's shape (a real-photo probe's RGB crops) pass through."""
    from moodlens.engine.classify import CropSpec, crops_from_fer

    shape = tuple(int(v) for v in model.inputs[0].shape[1:])
    if len(model.inputs) == 1 and (faces.shape[1:] == shape or shape[-1] == 1 and faces.shape[1:] == shape[:-1]):
        return faces.astype(np.float32).reshape(-1, *shape)
    xs = [crops_from_fer(faces, CropSpec(int(t.shape[1]), grey=int(t.shape[-1]) == 1)) for t in model.inputs]
    return xs[0] if len(xs) == 1 else xs


def export_tflite(model, out_path: str | Path, columns: list[int], temperature: float = 1.0,
                  quantize: str = "none", flip_tta: bool = False, scale: np.ndarray | None = None,
                  bias: np.ndarray | None = None, calibration_faces: np.ndarray | None = None) -> Path:
    """Write the calibrated, column-restricted classifier to `out_path` (.tflite).

    `quantize="dynamic"` stores weights as int8 (dynamic-range quantization): a quarter of the size and, with
    LiteRT's XNNPACK kernels, about 4x faster on a CPU core. `quantize="int8"` also runs the activations in int8
    (full-integer, static: their ranges measured on `calibration_faces`, (N, 48, 48) training faces); inputs and
    outputs stay float32, so the engine feeds it as any other file. `moodlens export` measures what either costs
    in accuracy.
    """
    import tensorflow as tf

    out_path = Path(out_path)
    wrapped = inference_model(model, columns, temperature, flip_tta, scale, bias)
    options: dict = {}
    if quantize in ("dynamic", "int8"):
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if calibration_faces is None:
            raise ValueError("int8 quantization needs calibration faces")
        xs = keras_inputs(model, calibration_faces)
        names = [input_name(t.shape) for t in model.inputs]
        xs = dict(zip(names, xs if isinstance(xs, list) else [xs], strict=True))
        # by name: the converter orders a fused file's inputs its own way (the 112 px one first)
        options["representative_dataset"] = lambda: ({k: x[i:i + 1] for k, x in xs.items()}
                                                     for i in range(len(calibration_faces)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "model.tflite"
        wrapped.export(str(tmp_file), format="litert", verbose=False, **options)
        content = tmp_file.read_bytes()
    if quantize == "dynamic":
        content = float_depthwise_filters(content)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(content)
    return out_path


def float_depthwise_filters(content: bytes) -> bytes:
    """A dynamic-range LiteRT file with its depthwise convolutions' int8 filters stored as float32 again.

    LiteRT's XNNPACK delegate takes convolutions and dense layers with int8 weights and float activations, but
    not depthwise ones: each fell back to the slower built-in kernel and cut the delegated graph into pieces (the
    photos file: 10 partitions, 1.85 ms a face; 3 partitions and 1.54 ms with float filters, measured in one run
    on an Intel Xeon, AVX-512). Depthwise filters are small (3x3 per channel: 9 KB in all in face-api.js's net),
    so the file barely grows. A file without such filters comes back unchanged."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    changed = 0
    for filters in int8_depthwise_filters(model):
        q, buffer = filters.quantization, model.buffers[filters.buffer]
        per_channel = [1] * len(filters.shape)
        per_channel[q.quantizedDimension] = -1
        scale = np.asarray(q.scale, np.float32).reshape(per_channel if len(q.scale) > 1 else [])
        zero = np.asarray(q.zeroPoint, np.float32).reshape(scale.shape)
        weights = (np.frombuffer(bytes(buffer.data), np.int8).reshape(filters.shape) - zero) * scale
        buffer.data = np.frombuffer(weights.astype(np.float32).tobytes(), np.uint8)
        filters.type, filters.quantization = schema.TensorType.FLOAT32, None
        changed += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else content


def int8_depthwise_filters(model) -> list:
    """The int8 filter tensors of the depthwise convolutions in `model`, a LiteRT file read into flatbuffer objects
    (tensorflow.lite.tools.flatbuffer_utils)."""
    from tensorflow.lite.python import schema_py_generated as schema

    depthwise = {i for i, code in enumerate(model.operatorCodes)
                 if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    return [graph.tensors[op.inputs[1]] for graph in model.subgraphs for op in graph.operators
            if op.opcodeIndex in depthwise and graph.tensors[op.inputs[1]].type == schema.TensorType.INT8]


def columns_for(trained: ClassSet, target: ClassSet) -> list[int]:
    """Output columns of a `trained`-class network that give the `target` classes, in target order."""
    missing = set(target.classes) - set(trained.classes)
    if missing:
        raise ValueError(f"a {trained.name}-class model cannot give classes {sorted(missing)}")
    return [trained.index(c) for c in target.classes]


def model_logits(model, faces: np.ndarray, flip_tta: bool = False) -> np.ndarray:
    """Logits of a Keras model for (N, 48, 48) faces, as the exported graph computes them."""
    x = keras_inputs(model, faces)
    logits = model.predict(x, batch_size=256, verbose=0)
    if flip_tta:
        flipped = [v[:, :, ::-1] for v in x] if isinstance(x, list) else x[:, :, ::-1]
        logits = (logits + model.predict(flipped, batch_size=256, verbose=0)) / 2
    return logits


def checkpoint_heads(model, ckpt: Path) -> dict[str | None, ClassSet]:
    """{head: classes} of a checkpoint: {"fer2013": ..., "ferplus": ...} for a two-head net, {None: ...} else."""
    from moodlens.training.evaluate import keras_model_classes
    from moodlens.training.labels import FERPLUS_HEAD, SEVEN, class_set

    if isinstance(model.output, dict):
        return {"fer2013": SEVEN, "ferplus": FERPLUS_HEAD}
    return {None: class_set(str(len(keras_model_classes(ckpt, model.output_shape[-1]))))}


def label_sets(fer2013: str | Path, split: str, target: ClassSet, ferplus: str | Path | None, frame=None):
    """{"fer2013": dataset, "ferplus": dataset (with a vote file)} of `split` over `target`."""
    from moodlens.training.data import load_fer, read_ferplus

    sets = {"fer2013": load_fer(fer2013, split, target, frame=frame)}
    if ferplus:
        sets["ferplus"] = load_fer(fer2013, split, target, targets="ferplus", frame=frame, votes=read_ferplus(ferplus))
    return sets


def choose_head(model, heads: dict, target: ClassSet, sets: dict, head: str, flip_tta: bool,
                ferplus_share: float) -> tuple[str | None, dict]:
    """The head to export and what each head measured (accuracy per label set on the split); "both" (the two
    heads blended, `blended_heads`) is measured only when asked for."""
    if None in heads:
        return None, {}
    nets = {name: head_net(model, heads, name, target, ferplus_share)
            for name in [*heads, *(["both"] if head == "both" else [])]}
    measured = {name: {labels: float((model_logits(one, ds.images, flip_tta)[:, cols].argmax(1) == ds.y).mean())
                       for labels, ds in sets.items()} for name, (one, _, cols) in nets.items()}
    if head != "auto":
        return head, measured
    if target.name == "7":
        return "fer2013", measured
    return max(measured, key=lambda h: np.mean(list(measured[h].values()))), measured


def fuse_part(path: str | Path, target: ClassSet):
    """A checkpoint to fuse: its single-head logits net and the columns giving `target` (FER2013's head of a
    two-head net). A folder is face-api.js's model folder: its FaceExpressionNet as published."""
    from moodlens.training.model import load_network

    if Path(path).is_dir():
        from moodlens.training.faceapi import faceapi_classifier

        return faceapi_classifier(path, tuple(target.classes)), list(range(len(target)))
    net = load_network(path)
    heads = checkpoint_heads(net, Path(path))
    one, _, cols = head_net(net, heads, None if None in heads else "fer2013", target)
    return one, cols


def fuse_component(path: str, net, cols: list[int], weight: float) -> dict:
    """What the model card says of one fused net: its checkpoint, weight, input, size and training."""
    import json

    from moodlens.training.modelcard import FACEAPI_ORIGIN, training_description

    published = Path(path).is_dir()  # face-api's model folder (fuse_part)
    config = Path(path).parent / "config.json"
    run_cfg = json.loads(config.read_text()) if config.exists() and not published else {}
    training = FACEAPI_ORIGIN.replace("Starts from", "Used as published (not fine-tuned):", 1) if published else \
        training_description(run_cfg, str(net.output_shape[-1]), "PublicTest") if run_cfg else ""
    return {"checkpoint": "face-api.js FaceExpressionNet (published)" if published else Path(path).name,
            "weight": float(weight), "input": list(net.input_shape[1:]), "parameters": int(net.count_params()),
            "output_columns": list(cols), "training": training, "config": run_cfg, "published": published}


def photo_metrics(photos: str | Path, classes: str, model: Path) -> dict:
    """Card metric blocks for real photos scored end to end with `model` (evaluate_photos), all of them and
    without those from repositories the pretrained net may have seen."""
    from moodlens.training.evaluate import evaluate_photos

    res = evaluate_photos(photos, classes, model)
    name = Path(photos).parent.name if Path(photos).is_file() else Path(photos).name
    out = {}
    for key, block, where in (("photos", res, ""), ("photos_excl", res.get("excluding_repos"), ", without photos "
                                                    "from the face-api.js and Human repositories")):
        if block is not None:
            out[key] = {"split": f"{name} (real photos, end to end{where})", "labels": "photo labels", "n": block["n"],
                        "accuracy": block["accuracy"], "macro_f1": block["macro_f1"],
                        "per_class": block["per_class"], "faces_not_found": block.get("faces_not_found")}
    return out


def export_model(checkpoint: str | Path, classes: str, out: str | Path, fer2013: str | Path,
                 ferplus: str | Path | None = None, split: str = "PublicTest", head: str = "auto",
                 calibration: str = "vector", uncertain_below: float | None = None, quantize: str = "dynamic",
                 flip_tta: bool = False, machine: str = "", fuse_with: tuple[str, ...] = (),
                 fuse_weights: tuple[float, ...] | None = None, calibrate_on: str = "auto",
                 photos: str | Path | None = None, ferplus_share: float | None = None) -> tuple[dict, tuple[Path, ...]]:
    """`moodlens export`: pick the head, calibrate on `split`, write the .tflite, check it against Keras,
    measure it and write its model card. Returns (card, written paths).

    `fuse_with`: more single-head checkpoints fused with the chosen head (fused_logits_model), with
    `fuse_weights` (one per net, the checkpoint's first; default equal). `calibrate_on`: the labels the
    calibration is fitted to ("auto": FER+ majority for the FER+ head, FER2013's otherwise). A bias per class
    moves decisions toward those labels' class balance: fitted on FER2013's, a fused 4-class file measured 0.830
    on FER+ majority labels before calibration and 0.750 after. `photos`: labelled real photos (a labels.csv or
    folder, as `evaluate --photos`) scored end to end with the written file, for the card. `ferplus_share`: the
    FER+ head's weight in `head="both"` (the FER2013 head's is the rest; None: equal weights)."""
    import json

    from scipy.special import softmax

    from moodlens.engine.classify import ExpressionClassifier, ms_per_face
    from moodlens.training.calibrate import calibration_report, uncertain_threshold, vector_calibration_report
    from moodlens.training.data import load_fer, read_fer2013
    from moodlens.training.evaluate import evaluate
    from moodlens.training.labels import class_set
    from moodlens.training.model import load_network
    from moodlens.training.modelcard import build_card, write_card

    ckpt = Path(checkpoint)
    full = load_network(ckpt)
    heads = checkpoint_heads(full, ckpt)
    target = class_set(classes)
    frame = read_fer2013(fer2013)
    sets = label_sets(fer2013, split, target, ferplus, frame)
    if ferplus_share is not None and head != "both":
        raise ValueError("a FER+ share weights the heads of --head both: export both heads to use it")
    share = EQUAL_SHARE if ferplus_share is None else ferplus_share
    head, measured = choose_head(full, heads, target, sets, head, flip_tta, share)
    model, trained, cols = head_net(full, heads, head, target, share)
    components = []
    if fuse_with:
        weights = fuse_weights or (1 / (len(fuse_with) + 1),) * (len(fuse_with) + 1)
        parts = [(model, cols)] + [fuse_part(path, target) for path in fuse_with]
        components = [fuse_component(path, net, c, w)
                      for path, (net, c), w in zip((str(ckpt), *fuse_with), parts, weights, strict=True)]
        model, cols = fused_logits_model(parts, weights), list(range(len(target)))
    # a head is calibrated on the labels it learnt: FER+ majority for the FER+ head, FER2013's otherwise
    labels = calibrate_on if calibrate_on != "auto" else "ferplus" if head == "ferplus" else "fer2013"
    if labels not in sets:
        raise ValueError(f"calibrating on {labels} labels needs the FER+ vote file")
    cal_set = sets[labels]
    logits = model_logits(model, cal_set.images, flip_tta)[:, cols]
    if calibration == "vector":
        cal = vector_calibration_report(logits, cal_set.y)
        scale, bias = np.array(cal["scale"], np.float32), np.array(cal["bias"], np.float32)
    else:
        cal = calibration_report(logits, cal_set.y) | {"method": "temperature scaling"}
        scale, bias = np.full(len(cols), 1 / cal["temperature"], np.float32), np.zeros(len(cols), np.float32)
    cal["fitted_on"] = f"{split}, {'FER+ majority' if labels == 'ferplus' else 'FER2013'} labels"
    probs = softmax(logits * scale + bias, axis=1)
    if uncertain_below is None:
        uncertain_below = uncertain_threshold(probs, cal_set.y)
    # int8 activation ranges from Training faces (never the split measured on)
    faces = load_fer(fer2013, "Training", target, frame=frame).images[:INT8_CALIBRATION_FACES] \
        if quantize == "int8" else None
    out = export_tflite(model, out, cols, quantize=quantize, flip_tta=flip_tta, scale=scale, bias=bias,
                        calibration_faces=faces)

    # round trip: the exported file must give what Keras gives
    probe = cal_set.images[:64]
    ref = softmax(model_logits(model, probe, flip_tta)[:, cols] * scale + bias, axis=1)
    clf = ExpressionClassifier(out, num_threads=1)
    max_diff = float(np.abs(ref - clf.predict(probe)).max())

    card_path = out.with_suffix(".json")
    card_path.unlink(missing_ok=True)  # the card is rebuilt below from what was measured
    metrics = {}
    for dedup in (False, True):
        res = evaluate(fer2013, split, classes, ferplus, out, exclude_training_duplicates=dedup)
        for key, block, name in (("fer2013", res, "FER2013"), ("ferplus", res.get("ferplus"), "FER+ majority")):
            if block is not None:
                metrics[f"{split}_{key}{'_dedup' if dedup else ''}"] = {
                    "split": split + (", without Training duplicates" if dedup else ""), "labels": name,
                    "n": block["n"], "accuracy": block["accuracy"], "macro_f1": block["macro_f1"],
                    "per_class": block["per_class"]}
    if photos is not None:
        metrics.update(photo_metrics(photos, classes, out))
    run_cfg = json.loads((ckpt.parent / "config.json").read_text()) if (ckpt.parent / "config.json").exists() else {}
    card = build_card(
        classes=target, trained=trained, head=head, head_choice=measured, cols=cols, out=out, quantize=quantize,
        flip_tta=flip_tta, parameters=int(model.count_params()), calibration=cal, uncertain_below=uncertain_below,
        metrics=metrics, max_diff=max_diff, run_cfg=run_cfg, split=split, components=components,
        ferplus_share=ferplus_share,
        inputs=[list(clf_input) for clf_input in ((s.size, s.size, s.channels) for s in clf.inputs)],
        speed={"ms_per_face_batch1": ms_per_face(clf, 1), "ms_per_face_batch32": ms_per_face(clf, 32),
               "runtime": "LiteRT (ai-edge-litert), 1 thread", "machine": machine})
    return card, (out, *write_card(card, card_path))
