"""Rebuild a trainable Keras network from a shipped moodlens .tflite file, so a run can start from it.

A shipped file holds the `model.build_classifier` network with each batch norm folded into its convolution
(weights and a bias), int8 per-channel weights (dynamic-range quantization) and the calibration folded into the
logits. `classifier_from_tflite` undoes that: weights dequantized, the logits layer un-scaled, and every batch
norm set so that it reproduces the folded bias exactly in inference mode and, given a sample of faces to read
the pre-norm statistics from, nearly exactly in training mode (batch statistics), so fine-tuning starts from
the shipped function rather than from a jolt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_tflite_layers(path: str | Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """The (kernel HWIO, bias) of each CONV_2D in graph order and the (kernel, bias) of the final dense layer."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}

    def value(index: int) -> np.ndarray:
        raw = interpreter.get_tensor(index)
        scales = details[index]["quantization_parameters"]["scales"]
        if raw.dtype != np.int8:
            return raw.astype(np.float32)
        # per-output-channel symmetric int8 (axis 0 for both CONV_2D filters and FULLY_CONNECTED weights)
        return raw.astype(np.float32) * scales.reshape((-1,) + (1,) * (raw.ndim - 1)).astype(np.float32)

    convs, dense = [], None
    for op in interpreter._get_ops_details():  # the only way LiteRT lists a graph's operators
        if op["op_name"] == "CONV_2D":
            _, w, b = op["inputs"]
            convs.append((value(w).transpose(1, 2, 3, 0), value(b)))  # OHWI -> HWIO
        elif op["op_name"] == "FULLY_CONNECTED":
            _, w, b = op["inputs"]
            dense = (value(w).T, value(b))
    if not convs or dense is None:
        raise ValueError(f"{path}: not a moodlens classifier (no convolutions and logits found)")
    return convs, dense


def classifier_from_tflite(path: str | Path, faces: np.ndarray | None = None):
    """A Keras `build_classifier` network with the weights of the shipped file at `path` (its model card beside it
    gives the width, classes and calibration). `faces` (N, 48, 48) uint8, a few thousand training faces, set each
    batch norm's statistics from the data.

    Returns the model, with output = the trained logits (calibration removed), over the card's trained classes.
    """
    import keras

    from moodlens.training.model import STAGE_WIDTHS, build_classifier

    path = Path(path)
    card = json.loads(path.with_suffix(".json").read_text())
    arch = card["architecture"]
    if arch.get("head") == "both" or arch.get("components"):
        raise ValueError(f"{path} blends several heads or nets: it cannot be read back as one network")
    if arch["output_columns"] != list(range(len(arch["trained_classes"]))):
        raise ValueError(f"{path} is a column-restricted export: start from the full-width file instead")
    convs, (kernel, bias) = read_tflite_layers(path)
    width = convs[0][0].shape[-1]
    depth = [sum(w.shape[-1] == width * m for w, _ in convs) for m in STAGE_WIDTHS]  # by their widths
    model = build_classifier(len(arch["trained_classes"]), width=width, dropout=0.0, stage_dropout=0.0,
                             depth=depth)
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if [c.kernel.shape for c in conv_layers] != [w.shape for w, _ in convs]:
        raise ValueError(f"{path}: its convolutions do not match build_classifier at width {width}")
    norms = [model.get_layer(c.name.replace("_conv", "_bn")) for c in conv_layers]
    for conv, norm, (w, b) in zip(conv_layers, norms, convs, strict=True):
        conv.set_weights([w])
        eps = norm.epsilon
        norm.set_weights([np.ones_like(b), b, np.zeros_like(b), np.full_like(b, 1 - eps)])
    scale, offset = calibration_of(card)
    # the file computes logits * scale + offset: undo it so the network's logits are the trained ones
    model.get_layer("logits").set_weights([kernel / scale, (bias - offset) / scale])
    if faces is not None:
        set_norm_statistics(model, conv_layers, norms, faces)
    return model


def calibration_of(card: dict) -> tuple[np.ndarray, np.ndarray]:
    """The per-class (scale, offset) a model card says the export folded into its logits."""
    n = len(card["architecture"]["trained_classes"])
    cal = card.get("calibration", {})
    if "scale" in cal:
        return np.asarray(cal["scale"], np.float32), np.asarray(cal.get("bias", np.zeros(n)), np.float32)
    return np.full(n, 1 / card.get("temperature", 1.0), np.float32), np.zeros(n, np.float32)


def set_norm_statistics(model, conv_layers, norms, faces: np.ndarray) -> None:
    """Set each batch norm to (x - mean) / std * std + mean + bias: the same function in inference mode, and
    in training mode too as long as a batch's statistics match those of `faces`."""
    import keras

    probe = keras.Model(model.input, [c.output for c in conv_layers])
    # per-channel sums a chunk at a time: every conv output of 4,096 faces at once took 14 GB
    sums = [np.zeros((2, c.filters), np.float64) for c in conv_layers]
    count = [0] * len(conv_layers)
    for i in range(0, len(faces), 256):
        outputs = probe(faces[i:i + 256, ..., None].astype(np.float32), training=False)
        for k, out in enumerate(outputs):
            out = keras.ops.convert_to_numpy(out).astype(np.float64).reshape(-1, out.shape[-1])
            sums[k] += (out.sum(axis=0), (out**2).sum(axis=0))
            count[k] += len(out)
    for norm, (total, squares), n in zip(norms, sums, count, strict=True):
        _, bias, _, _ = norm.get_weights()
        mean = total / n
        var = np.maximum(squares / n - mean**2, 0.0)
        mean, var = mean.astype(np.float32), var.astype(np.float32)
        norm.set_weights([np.sqrt(var + norm.epsilon), bias + mean, mean, var])
