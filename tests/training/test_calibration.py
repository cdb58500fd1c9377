from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from training.calibration import fit_temperature, nll, softmax


def _overconfident(
    seed: int = 0, n: int = 3000, k: int = 4, factor: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports factor * z, too sure of itself."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.5
    p = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return factor * z, y


def test_nll_matches_sklearn_log_loss() -> None:
    logits, y = _overconfident()
    assert nll(logits, y) == pytest.approx(log_loss(y, softmax(logits), labels=range(4)))
    assert nll(logits, y, 2.0) == pytest.approx(log_loss(y, softmax(logits, 2.0), labels=range(4)))


def test_temperature_scaling_repairs_overconfident_logits() -> None:
    logits, y = _overconfident(factor=3.0)
    cal = fit_temperature(logits, y, n_bins=15)
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    assert cal.nll_after < cal.nll_before
    assert cal.ece_after < cal.ece_before / 3
    assert cal.ece_before > 0.1 and cal.ece_after < 0.03
    # the fitted T is the NLL minimum: nudging it either way does worse
    for t in (cal.temperature * 0.97, cal.temperature * 1.03):
        assert nll(logits, y, t) > cal.nll_after


def test_underconfident_logits_get_a_temperature_below_one() -> None:
    logits, y = _overconfident(factor=0.5)
    cal = fit_temperature(logits, y)
    assert cal.temperature == pytest.approx(0.5, rel=0.1)
    assert cal.ece_after < cal.ece_before


def test_well_calibrated_logits_keep_t_near_one_and_round_trip() -> None:
    logits, y = _overconfident(factor=1.0)
    cal = fit_temperature(logits, y)
    assert cal.temperature == pytest.approx(1.0, abs=0.1)
    assert type(cal).from_dict(cal.to_dict()) == cal


@pytest.mark.parametrize(
    ("logits", "y", "pattern"),
    [
        (np.zeros((3, 1)), np.zeros(3, int), "k >= 2"),
        (np.zeros((3, 2)), np.zeros(2, int), "y must be"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), "classes 0..1"),
        (np.array([[0.0, np.inf]]), np.array([0]), "finite"),
    ],
)
def test_argument_errors(logits: np.ndarray, y: np.ndarray, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        fit_temperature(logits, y)
