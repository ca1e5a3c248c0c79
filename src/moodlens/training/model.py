"""The expression classifier network (Keras 3). Imported only by training and export: serving never needs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers

from moodlens.training.data import FACE_SIZE

DEPTH = (2, 2, 2, 2)  # convolutions per stage of the shipped nets
STAGE_WIDTHS = (1, 2, 4, 8)  # each stage's channels, in multiples of `width`


def conv_block(x, filters: int, dropout: float, name: str, convs: int = 2):
    """`convs` 3x3 conv + BN + ReLU, then 2x2 max-pool and dropout (a VGG stage)."""
    for i in range(1, convs + 1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x)


@keras.saving.register_keras_serializable(package="moodlens")
def soft_cross_entropy(targets, logits):
    """Cross-entropy of logits against a target distribution, where an all-zero row is no target at all.

    Keras's CategoricalCrossentropy (TensorFlow's fused softmax_cross_entropy_with_logits) gives such a row a loss
    of 0 but a gradient of softmax(logits): its backward pass assumes every target row sums to 1. Those phantom
    gradients pushed every FER+ logit down without end, growing the FER+ kernel and the trunk's features until
    two-head runs from scratch diverged. Written out, the gradient is sum(targets) * softmax - targets: zero there.
    """
    targets = keras.ops.convert_to_tensor(targets, dtype=logits.dtype)
    return -keras.ops.sum(targets * keras.ops.log_softmax(logits, axis=-1), axis=-1)


def load_network(path: str | Path, compile: bool = False) -> keras.Model:
    """A saved .keras network; importing this module first registers what it may hold (soft_cross_entropy)."""
    return keras.models.load_model(path, compile=compile)


def build_classifier(n_classes: int | dict[str, int], width: int = 32, dropout: float = 0.4,
                     stage_dropout: float = 0.1, depth: Sequence[int] | None = None) -> keras.Model:
    """A four-stage VGG-style CNN over 48x48 grayscale faces; about 1.2M parameters (117 M multiply-adds) at
    width 32, about 2.25x both at width 48.

    Input: (N, 48, 48, 1) float32 grayscale values 0..255 (scaling is inside the model, so every runtime
    feeds raw pixels). Output: (N, n_classes) logits from the layer "logits"; or, with `n_classes` a dict
    {head: classes}, one logits output per head (layer "<head>_logits") on the shared trunk. Stage k drops
    `stage_dropout * k` of its activations, the head `dropout`. `depth`: convolutions per stage (default DEPTH;
    a third one in the last two stages, (2, 2, 3, 3), costs about 1.4x the multiply-adds).
    """
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    for stage, (mult, convs) in enumerate(zip(STAGE_WIDTHS, depth or DEPTH, strict=True), start=1):
        x = conv_block(x, width * mult, dropout=stage_dropout * stage, name=f"stage{stage}", convs=convs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_drop")(x)
    if isinstance(n_classes, dict):
        outputs = {head: layers.Dense(n, name=f"{head}_logits")(x) for head, n in n_classes.items()}
    else:
        outputs = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="moodlens_cnn")


def stage_depth(model: keras.Model) -> tuple[int, ...]:
    """Convolutions per stage of a `build_classifier` network."""
    return tuple(sum(layer.name.startswith(f"stage{k}_conv") for layer in model.layers)
                 for k in range(1, len(STAGE_WIDTHS) + 1))
