"""Calibration (Guo et al., 2017): temperature scaling, one scalar T so that softmax(logits / T) is calibrated,
and vector scaling, softmax(logits * w + b) with a scale and a bias per class; and the `uncertain` threshold."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels `y` under softmax(logits / temperature)."""
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises NLL on (logits, y)."""
    res = minimize_scalar(lambda t: nll(logits, y, t), bounds=(0.05, 20.0), method="bounded")
    return float(res.x)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: confidence-vs-accuracy gap averaged over equal-width confidence bins."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == y[in_bin]).mean() - conf[in_bin].mean())
    return float(ece)


def calibration_report(logits: np.ndarray, y: np.ndarray) -> dict:
    """Fitted temperature with NLL and ECE before and after."""
    t = fit_temperature(logits, y)
    return {
        "temperature": round(t, 4),
        "nll_before": round(nll(logits, y, 1.0), 4), "nll_after": round(nll(logits, y, t), 4),
        "ece_before": round(expected_calibration_error(softmax(logits, axis=1), y), 4),
        "ece_after": round(expected_calibration_error(softmax(logits / t, axis=1), y), 4),
        "n": int(len(y)),
    }


def fit_vector_scaling(logits: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-class scale w and bias b minimising the NLL of softmax(logits * w + b) (lightly L2-regularised
    towards the temperature-scaled solution, so a class with few examples cannot run away)."""
    n_classes = logits.shape[1]
    t = fit_temperature(logits, y)
    w0, b0 = np.full(n_classes, 1 / t), np.zeros(n_classes)
    rows = np.arange(len(y))

    def loss(params):
        w, b = params[:n_classes], params[n_classes:]
        z = logits * w + b
        logp = log_softmax(z, axis=1)
        p = np.exp(logp)
        onehot = np.zeros_like(p)
        onehot[rows, y] = 1
        g = (p - onehot) / len(y)  # d NLL / dz
        reg = l2 * (((w - w0) ** 2).sum() + (b ** 2).sum())
        grad = np.concatenate([(g * logits).sum(0) + 2 * l2 * (w - w0), g.sum(0) + 2 * l2 * b])
        return -logp[rows, y].mean() + reg, grad

    res = minimize(loss, np.concatenate([w0, b0]), jac=True, method="L-BFGS-B")
    return res.x[:n_classes].astype(np.float32), res.x[n_classes:].astype(np.float32)


def vector_calibration_report(logits: np.ndarray, y: np.ndarray) -> dict:
    """Vector scaling's scale and bias per class, with NLL and ECE before, after a temperature, and after it."""
    temperature = calibration_report(logits, y)
    w, b = fit_vector_scaling(logits, y)
    probs = softmax(logits * w + b, axis=1)
    return temperature | {
        "method": "vector scaling (a scale and a bias per class)",
        "scale": [round(float(v), 5) for v in w], "bias": [round(float(v), 5) for v in b],
        "nll_temperature": temperature["nll_after"], "ece_temperature": temperature["ece_after"],
        "nll_after": round(float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean()), 4),
        "ece_after": round(expected_calibration_error(probs, y), 4),
    }


def uncertain_threshold(probs: np.ndarray, y: np.ndarray, window: float = 0.1) -> float:
    """The top score below which a face's label is more likely wrong than right on (probs, y).

    The lowest threshold t (0.30..0.70) from which on the faces with top score in [t, t + window) are right
    at least half the time; with calibrated scores this sits near 0.5.
    """
    top, right = probs.max(1), probs.argmax(1) == y
    for t in np.arange(0.30, 0.705, 0.01):
        near = (top >= t) & (top < t + window)
        if near.sum() >= 20 and right[near].mean() >= 0.5:
            return round(float(t), 2)
    return 0.5
