"""The expression classifier network (Keras 3). Imported only by training and export: serving never needs it."""

from __future__ import annotations

from collections.abc import Sequence

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


@keras.saving.register_keras_serializable(package="moodlens")
class VoteCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against FER+ vote distributions, label-smoothed; an all-zero row (a face FER+ gives
    no target) costs nothing.

    Why smoothed: most FER+ targets are one-hot (one emotion holds 75% of the votes), whose cross-entropy falls
    for ever as the logits grow. Unsmoothed, the FER+ head of a two-head run from scratch grew its logits to
    hundreds (std 863 on PublicTest after 8 epochs at 2e-3, against 1.6 for the smoothed FER2013 head) through
    the shared trunk's last batch norms, and both heads' training loss rose from the third epoch on. Keras's own
    smoothing would give the rows without a target a uniform one."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "vote_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        mass = keras.ops.sum(y_true, axis=-1, keepdims=True)  # 1 for a row with votes, 0 without
        target = y_true * (1 - self.label_smoothing) + mass * self.label_smoothing / y_true.shape[-1]
        return keras.losses.categorical_crossentropy(target, y_pred, from_logits=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}

