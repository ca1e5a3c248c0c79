"""Training-time augmentation of 48x48 face batches, in TensorFlow ops, deterministic given a seed.

Random affine (rotation, scale, shift) in one resampling, horizontal flip, brightness/contrast jitter and
random erasing. Stateless random ops: the same (seed, epoch, batch) gives the same batch, so a resumed run
sees exactly the data the interrupted run would have.
"""

from __future__ import annotations

import math

import tensorflow as tf

from moodlens.training.data import FACE_SIZE


def _uniform(seed, shape, lo: float, hi: float):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi)


def affine_matrices(seed, n, rotation_deg: float, scale: float, shift: float):
    """Per-sample projective transforms (output -> input mapping) for ImageProjectiveTransformV3."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    angle = _uniform(seeds[0], [n], -rotation_deg, rotation_deg) * (math.pi / 180)
    zoom = _uniform(seeds[1], [n], 1 - scale, 1 + scale)
    tx = _uniform(seeds[2], [n], -shift, shift) * FACE_SIZE
    ty = _uniform(seeds[3], [n], -shift, shift) * FACE_SIZE
    flip = tf.where(_uniform(seeds[4], [n], 0, 1) < 0.5, -1.0, 1.0)
    c = (FACE_SIZE - 1) / 2
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # input = R/zoom * diag(flip,1) * (output - c) + c + t
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    a2 = c - a0 * c - a1 * c + tx
    b2 = c - b0 * c - b1 * c + ty
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def random_erase(images, seed, prob: float = 0.5, max_frac: float = 0.3):
    """Blank one random rectangle (up to max_frac of each side... squared) per image with probability prob."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    h = tf.cast(_uniform(seeds[0], [n], 0.1, max_frac) * FACE_SIZE * 1.5, tf.int32)
    w = tf.cast(_uniform(seeds[1], [n], 0.1, max_frac) * FACE_SIZE * 1.5, tf.int32)
    y0 = tf.cast(_uniform(seeds[2], [n], 0, 1) * tf.cast(FACE_SIZE - h, tf.float32), tf.int32)
    x0 = tf.cast(_uniform(seeds[3], [n], 0, 1) * tf.cast(FACE_SIZE - w, tf.float32), tf.int32)
    on = _uniform(seeds[4], [n], 0, 1) < prob
    fill = _uniform(seeds[5], [n], 0, 255)
    rows = tf.range(FACE_SIZE)[None, :, None]
    cols = tf.range(FACE_SIZE)[None, None, :]
    inside = ((rows >= y0[:, None, None]) & (rows < (y0 + h)[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < (x0 + w)[:, None, None]) & on[:, None, None])
    return tf.where(inside[..., None], fill[:, None, None, None], images)


def augment_batch(images, seed, rotation_deg: float = 15.0, scale: float = 0.15, shift: float = 0.1,
                  erase_prob: float = 0.5):
    """Augment a float32 batch (N, 48, 48, 1) of 0..255 pixels."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    transforms = affine_matrices(seeds[0], n, rotation_deg, scale, shift)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[FACE_SIZE, FACE_SIZE],
        interpolation="BILINEAR", fill_mode="REFLECT", fill_value=0.0)
    contrast = _uniform(seeds[1], [n, 1, 1, 1], 0.7, 1.3)
    brightness = _uniform(seeds[2], [n, 1, 1, 1], -30.0, 30.0)
    mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
    out = tf.clip_by_value((out - mean) * contrast + mean + brightness, 0.0, 255.0)
    return random_erase(out, seeds[3], prob=erase_prob)
