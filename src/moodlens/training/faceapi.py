"""face-api.js's FaceExpressionNet (the @vladmandic/face-api fork, MIT), ported to Keras 3.

Why a port and not the JS package: moodlens runs Keras/LiteRT, not tfjs, so the weights are read from the
package's tfjs manifest + shards and put into the same graph rebuilt from Keras layers. The graph follows
face-api's source (src/faceFeatureExtractor/FaceFeatureExtractor.ts, denseBlock.ts,
src/faceExpressionNet/FaceExpressionNet.ts) op for op, additions included in the same order, so the port can be
held to the original's outputs (tests/test_faceapi_port.py against scripts/faceapi-reference.mjs). See
docs/faceapi.md. Imported only by training/evaluation code: serving never needs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import layers

MODEL_NAME = "face_expression_model"
INPUT_SIZE = 112
# FaceFeatureExtractor.forwardInput: (rgb - MEAN_RGB) / 255, RGB 0..255 in.
MEAN_RGB = (122.782, 117.001, 104.298)
# face-api's FACE_EXPRESSION_LABELS (its output order) -> moodlens class names (FER2013's names).
FACEAPI_CLASSES: dict[str, str] = {
    "neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
    "fearful": "fear", "disgusted": "disgust", "surprised": "surprise",
}
FACEAPI_LABELS: tuple[str, ...] = tuple(FACEAPI_CLASSES)
_BLOCK_CHANNELS = (32, 64, 128, 256)  # dense0..dense3; each halves the side: 112 -> 7

_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16}


def read_tfjs_weights(manifest_path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a tfjs weights manifest, as float32 (ints as stored), decoded as tf.io.decodeWeights does.

    Each group's shard files are concatenated and the tensors read in manifest order. A quantised tensor takes
    1 (uint8) or 2 (uint16) bytes an element and is dequantised to q * scale + min (computed in double, then
    rounded to float32, as tfjs's JS arithmetic does); float16-quantised tensors are widened.
    """
    manifest_path = Path(manifest_path)
    weights: dict[str, np.ndarray] = {}
    for group in json.loads(manifest_path.read_text()):
        buffer = b"".join((manifest_path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            quant = spec.get("quantization")
            stored = np.dtype(_DTYPES[quant["dtype"] if quant else spec["dtype"]])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            values = np.frombuffer(buffer, stored, count, offset)
            offset += count * stored.itemsize
            if quant and quant["dtype"] in ("uint8", "uint16"):
                values = values.astype(np.float64) * quant["scale"] + quant["min"]
            weights[spec["name"]] = values.astype(_DTYPES[spec["dtype"]]).reshape(spec["shape"])
        if offset != len(buffer):
            raise ValueError(f"{manifest_path}: {len(buffer) - offset} bytes of shard data left over")
    return weights


def _dense_block(x, w: dict[str, np.ndarray], block: str, filters: int, first: bool):
    """face-api's denseBlock4: conv0 (stride 2) then three 3x3 depthwise-separable convs, each fed the ReLU of
    the sum of all earlier outputs of the block (a DenseNet-style block with sums instead of concatenation)."""
    def sep(y, conv: str, strides: int = 1):
        p = f"{block}/{conv}/"
        layer = layers.SeparableConv2D(filters, 3, strides=strides, padding="same", name=f"{block}_{conv}")
        out = layer(y)
        layer.set_weights([w.pop(p + "depthwise_filter"), w.pop(p + "pointwise_filter"), w.pop(p + "bias")])
        return out

    if first:  # a plain 3x3 conv on the RGB input
        conv0 = layers.Conv2D(filters, 3, strides=2, padding="same", name=f"{block}_conv0")
        out1 = conv0(x)
        conv0.set_weights([w.pop(f"{block}/conv0/filters"), w.pop(f"{block}/conv0/bias")])
    else:
        out1 = sep(x, "conv0", strides=2)
    out1 = layers.ReLU(name=f"{block}_relu0")(out1)
    out2 = sep(out1, "conv1")
    in3 = layers.ReLU(name=f"{block}_relu1")(layers.Add(name=f"{block}_add1")([out1, out2]))
    out3 = sep(in3, "conv2")
    # tf.add(out1, tf.add(out2, out3)): nested as in the source, so float sums round the same way.
    sum3 = layers.Add(name=f"{block}_add2")([out1, layers.Add(name=f"{block}_add2b")([out2, out3])])
    out4 = sep(layers.ReLU(name=f"{block}_relu2")(sum3), "conv3")
    inner = layers.Add(name=f"{block}_add3c")([out3, out4])
    total = layers.Add(name=f"{block}_add3")([out1, layers.Add(name=f"{block}_add3b")([out2, inner])])
    return layers.ReLU(name=f"{block}_relu3")(total)


def load_faceapi_expression_net(model_dir: str | Path, input_size: int = INPUT_SIZE) -> keras.Model:
    """FaceExpressionNet with face-api's weights from `model_dir` (the package's model/ folder, holding
    face_expression_model-weights_manifest.json and its shard).

    `input_size` other than 112 runs the same weights on a smaller (or larger) face: the net is convolutional up
    to its final 7x7 average pool, which is then a global average (the same mean at 112).

    Input: (N, 112, 112, 3) float32 RGB 0..255, the face already cropped square and resized (face-api pads to
    square and resizes bilinearly before the net; a 112x112 input passes through unchanged). Mean subtraction
    and /255 are inside the model, as in the original. Output: (N, 7) softmax probabilities in face-api's order,
    FACEAPI_LABELS. About 0.3M parameters (weights stored uint8-quantised).
    """
    w = read_tfjs_weights(Path(model_dir) / f"{MODEL_NAME}-weights_manifest.json")
    inputs = keras.Input((input_size, input_size, 3), name="rgb")
    # (x - mean) / sqrt(255**2): the same two float ops as normalize(x, meanRgb).div(255).
    x = layers.Normalization(mean=MEAN_RGB, variance=[255.0**2] * 3, name="normalize")(inputs)
    for i, filters in enumerate(_BLOCK_CHANNELS):
        x = _dense_block(x, w, f"dense{i}", filters, first=i == 0)
    if input_size == INPUT_SIZE:
        x = layers.AveragePooling2D(7, strides=2, padding="valid", name="pool")(x)  # 7x7 -> 1x1, as the source
    else:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    fc = layers.Dense(len(FACEAPI_LABELS), name="fc")
    logits = fc(x)
    fc.set_weights([w.pop("fc/weights"), w.pop("fc/bias")])
    if w:  # every stored tensor must have found its place, or the graph is not face-api's
        raise ValueError(f"unused face-api weights: {sorted(w)}")
    outputs = layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="faceapi_expression_net")


def faceapi_classifier(model_dir: str | Path, classes: tuple[str, ...], name: str = "faceapi_classifier",
                       input_size: int = INPUT_SIZE):
    """face-api's net as a trainable classifier over `classes` (moodlens names, any subset of its 7): the same
    weights, its fc columns picked and ordered for `classes`, logits out (no softmax), named "logits" as
    moodlens's own nets are. Input: (N, S, S, 3) float32 RGB 0..255, S = `input_size` (load_faceapi_expression_net)."""
    net = load_faceapi_expression_net(model_dir, input_size)
    by_name = {ours: i for i, ours in enumerate(FACEAPI_CLASSES.values())}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(f"face-api's net has no class {missing}; it predicts {sorted(by_name)}")
    cols = [by_name[c] for c in classes]
    kernel, bias = net.get_layer("fc").get_weights()
    head = layers.Dense(len(classes), name="logits")
    logits = head(net.get_layer("flatten").output)
    head.set_weights([kernel[:, cols], bias[cols]])
    return keras.Model(net.input, logits, name=name)


def to_faceapi_input(faces48):
    """FER2013-style faces (N, 48, 48, 1) float 0..255 -> face-api's input (N, 112, 112, 3): bilinear upscaling,
    grey copied to the three channels (a TensorFlow op, usable in a tf.data pipeline)."""
    import tensorflow as tf

    return tf.image.grayscale_to_rgb(tf.image.resize(faces48, (INPUT_SIZE, INPUT_SIZE), method="bilinear"))


def interpolate_with_original(tuned, model_dir: str | Path, alpha: float):
    """`tuned` (a faceapi_classifier fine-tuned over FER2013's 7 classes) with its weights set to
    (1 - alpha) * face-api's published weights + alpha * its own: WiSE-FT (Wortsman et al. 2022), which keeps
    much of a pretrained net's robustness to other data (real photos here) for part of the fine-tuning's gain."""
    from moodlens.training.labels import FER2013_CLASSES

    original = faceapi_classifier(model_dir, FER2013_CLASSES)
    for layer in tuned.layers:
        if layer.weights:
            start = original.get_layer(layer.name).get_weights()
            layer.set_weights([(1 - alpha) * w0 + alpha * w1 for w0, w1 in zip(start, layer.get_weights(),
                                                                                  strict=True)])
    return tuned
