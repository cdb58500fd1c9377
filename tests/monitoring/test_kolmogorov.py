"""monitoring.kolmogorov against scipy's kstwo and smirnov, on every region of (n, d)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import special, stats

from monitoring import kolmogorov
from monitoring.kolmogorov import kolmogorov_sf, smirnov_sf


def _grid(n: int) -> np.ndarray:
    """d over [0, 1], denser where the methods change: n d = 1/2, 1, n - 1; n d^2 = 0.75,
    2.2, 4, 18, 370; d = 1/2; plus statistics a two-sample test gives (k / (n1 n2))."""
    marks = [0.5 / n, 1.0 / n, (n - 1.0) / n, 0.5]
    marks += [np.sqrt(c / n) for c in (0.754693, 2.2, 4.0, 18.0, 370.0)]
    marks += [(1.4 / n) ** (2.0 / 3.0)]
    near = [m * f for m in marks for f in (1 - 1e-9, 1.0, 1 + 1e-9, 0.98, 1.02) if m * f <= 1.0]
    n1, n2 = 3 * n, 3 * n // 2 + 1
    steps = np.arange(0, n1 * n2 + 1, max(1, n1 * n2 // 97)) / (n1 * n2)
    return np.unique(np.r_[np.linspace(0.0, 1.0, 121), np.geomspace(1e-4, 1.0, 60), near, steps])


@pytest.mark.parametrize(
    "n", [*range(1, 13), 17, 30, 64, 99, 139, 140, 141, 180, 333, 500, 1000, 4000, 100_001]
)
def test_kolmogorov_sf_matches_scipy_kstwo(n: int) -> None:
    d = _grid(n)
    if n > 100_000:  # Pelz-Good everywhere below n d^2 = 2.2; scipy takes seconds here
        d = d[::4]
    ours = kolmogorov_sf(d, n)
    np.testing.assert_allclose(ours, stats.kstwo.sf(d, n), rtol=1e-9, atol=1e-12)
    assert ours.dtype == np.float64 and np.all((ours >= 0.0) & (ours <= 1.0))


def test_kolmogorov_sf_where_durbin_replaces_pomeranz() -> None:
    """n <= 140, 0.754693 < n d^2 <= 4: scipy's Pomeranz recursion, here Durbin's matrix;
    both exact, they agree to rounding."""
    for n in (5, 23, 71, 140):
        d = np.linspace(np.sqrt(0.76 / n), min(0.499, np.sqrt(4.0 / n)), 40)
        np.testing.assert_allclose(kolmogorov_sf(d, n), stats.kstwo.sf(d, n), rtol=1e-9)


def test_kolmogorov_sf_edges_and_checks() -> None:
    assert kolmogorov_sf([0.0, 1.0, 1.5, -0.1], 10).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert kolmogorov_sf(0.3, 1).shape == (1,)
    with pytest.raises(ValueError, match="n must"):
        kolmogorov_sf([0.1], 0)
    with pytest.raises(ValueError, match="n must"):
        kolmogorov_sf([0.1], 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        kolmogorov_sf([np.nan], 10)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 50, 140, 141, 999, 3000])
def test_smirnov_sf_matches_scipy(n: int) -> None:
    d = np.unique(np.r_[np.linspace(0.0, 1.0, 401), [1.0 / n, min(1.0, 2.0 / n), (n - 1.0) / n]])
    np.testing.assert_allclose(smirnov_sf(n, d), special.smirnov(n, d), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="d must"):
        smirnov_sf(n, [1.5])


def test_docstring_examples() -> None:
    result = doctest.testmod(kolmogorov)
    assert result.attempted > 0 and result.failed == 0
