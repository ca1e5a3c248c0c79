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
class GradientScale(layers.Layer):
    """The identity going forward; scales the gradient flowing back through it by `scale`.

    Put before a head, it lets that head learn at full rate while its pull on the shared trunk is damped: two
    heads from scratch at AdamW 2e-3 diverge, and the FER+ head's gradient into the trunk at 0.1 trains cleanly.
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        return inputs * self.scale + keras.ops.stop_gradient(inputs) * (1.0 - self.scale)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


def load_network(path: str | Path, compile: bool = False) -> keras.Model:
    """A saved .keras network; importing this module first registers the layers it may hold (GradientScale)."""
    return keras.models.load_model(path, compile=compile)


def build_classifier(n_classes: int | dict[str, int], width: int = 32, dropout: float = 0.4,
                     stage_dropout: float = 0.1, depth: Sequence[int] | None = None,
                     trunk_grad: dict[str, float] | None = None) -> keras.Model:
    """A four-stage VGG-style CNN over 48x48 grayscale faces; about 1.2M parameters (117 M multiply-adds) at
    width 32, about 2.25x both at width 48.

    Input: (N, 48, 48, 1) float32 grayscale values 0..255 (scaling is inside the model, so every runtime
    feeds raw pixels). Output: (N, n_classes) logits from the layer "logits"; or, with `n_classes` a dict
    {head: classes}, one logits output per head (layer "<head>_logits") on the shared trunk. Stage k drops
    `stage_dropout * k` of its activations, the head `dropout`. `depth`: convolutions per stage (default DEPTH;
    a third one in the last two stages, (2, 2, 3, 3), costs about 1.4x the multiply-adds). `trunk_grad`:
    {head: scale} for the gradient a head sends into the trunk (a GradientScale layer "<head>_trunk_grad").
    """
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    for stage, (mult, convs) in enumerate(zip(STAGE_WIDTHS, depth or DEPTH, strict=True), start=1):
        x = conv_block(x, width * mult, dropout=stage_dropout * stage, name=f"stage{stage}", convs=convs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_drop")(x)
    if isinstance(n_classes, dict):
        outputs = {head: layers.Dense(n, name=f"{head}_logits")(head_input(x, head, trunk_grad or {}))
                   for head, n in n_classes.items()}
    else:
        outputs = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="moodlens_cnn")


def head_input(x, head: str, trunk_grad: dict[str, float]):
    """The trunk's features as `head` sees them: through a GradientScale when its trunk gradient is scaled."""
    scale = trunk_grad.get(head, 1.0)
    return x if scale == 1.0 else GradientScale(scale, name=f"{head}_trunk_grad")(x)


def stage_depth(model: keras.Model) -> tuple[int, ...]:
    """Convolutions per stage of a `build_classifier` network."""
    return tuple(sum(layer.name.startswith(f"stage{k}_conv") for layer in model.layers)
                 for k in range(1, len(STAGE_WIDTHS) + 1))
