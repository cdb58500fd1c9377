"""Temperature scaling (Guo et al., 2017) fitted on validation logits.

One scalar ``T > 0`` divides every logit before the softmax. It leaves the predicted class
unchanged (so accuracy too) and only reshapes confidence: ``T > 1`` softens an
overconfident net. ``T`` minimises the validation negative log-likelihood; the search runs
over ``log T`` in ``[log T_MIN, log T_MAX]`` with scipy's bounded Brent method, and falls
back to ``T = 1`` should that not improve the NLL.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.special import softmax as _softmax

from monitoring.performance import expected_calibration_error

#: Search range of the temperature.
T_MIN = 0.01
T_MAX = 100.0


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and the validation figures before (T = 1) and after it."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n_bins: int = 15

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    return np.asarray(_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels ``y`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(y)), np.asarray(y, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, n_bins: int = 15) -> Calibration:
    """Fit a temperature on ``(logits, y)`` and report ECE and NLL before and after.

    Parameters
    ----------
    logits : array of shape (n, k)
        Uncalibrated network outputs on held-out (validation) rows.
    y : array of shape (n,)
        Integer labels in ``0..k-1``.
    n_bins : int
        Bins of the expected calibration error.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(2000, 3)) * 2
    >>> y = np.array([rng.choice(3, p=p) for p in softmax(z)])
    >>> cal = fit_temperature(3 * z, y)   # three times too confident
    >>> 2.5 < cal.temperature < 3.5 and cal.ece_after < cal.ece_before
    True
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (n, k) with k >= 2, got shape {z.shape}")
    if labels.shape != (z.shape[0],) or len(labels) == 0:
        raise ValueError(f"y must be (n,) with n = {z.shape[0]} > 0, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= z.shape[1]:
        raise ValueError(f"y must hold classes 0..{z.shape[1] - 1}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")

    before = nll(z, labels)
    result = minimize_scalar(
        lambda log_t: nll(z, labels, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(math.exp(result.x))
    after = nll(z, labels, temperature)
    if not after < before:
        temperature, after = 1.0, before
    return Calibration(
        temperature=temperature,
        ece_before=float(expected_calibration_error(softmax(z), labels, n_bins=n_bins)),
        ece_after=float(expected_calibration_error(softmax(z, temperature), labels, n_bins=n_bins)),
        nll_before=before,
        nll_after=after,
        n_bins=n_bins,
    )
