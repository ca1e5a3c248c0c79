"""Temperature scaling (Guo et al., 2017): one scalar T so that softmax(logits / T) is calibrated."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
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
