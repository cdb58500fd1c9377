"""monitoring.tails against scipy: normal, chi-square and Binomial(m, 1/2) tails."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from scipy import special, stats

from monitoring import tails
from monitoring.tails import binomial_half_sf, chi2_sf, normal_cdf, normal_sf


def test_normal_tails_match_scipy() -> None:
    x = np.r_[
        np.linspace(-37.0, 37.0, 2001), np.geomspace(1e-12, 37, 200), -np.geomspace(1e-12, 37, 200)
    ]
    cdf = np.array([normal_cdf(float(v)) for v in x])
    sf = np.array([normal_sf(float(v)) for v in x])
    np.testing.assert_allclose(cdf, special.ndtr(x), rtol=1e-13, atol=0)
    np.testing.assert_allclose(sf, stats.norm.sf(x), rtol=1e-13, atol=0)
    assert normal_cdf(math.inf) == 1.0 and normal_cdf(-math.inf) == 0.0
    assert math.isnan(normal_cdf(math.nan))


@pytest.mark.parametrize("df", [*range(1, 25), 49, 50, 99, 255, 1000, 1001])
def test_chi2_sf_matches_scipy(df: int) -> None:
    x = np.r_[np.geomspace(1e-8, 5e3, 160), df - 1.0, float(df), df + 0.5]
    ours = np.array([chi2_sf(float(v), df) for v in x])
    np.testing.assert_allclose(ours, stats.chi2.sf(x, df), rtol=1e-10, atol=1e-300)
    assert chi2_sf(0.0, df) == 1.0 and chi2_sf(math.inf, df) == 0.0


def test_chi2_sf_checks() -> None:
    with pytest.raises(ValueError, match="df"):
        chi2_sf(1.0, 0)
    assert math.isnan(chi2_sf(math.nan, 3))


@pytest.mark.parametrize("m", [*range(0, 41), 99, 100, 1000, 1001, 20_000, 20_001, 20_002,
                               123_457, 1_000_000])  # fmt: skip
def test_binomial_half_sf_matches_scipy(m: int) -> None:
    spread = int(math.sqrt(m)) + 1
    b = np.unique(
        np.clip(
            np.r_[
                np.arange(-1, min(m, 40) + 2),
                m - np.arange(0, 4),
                m // 2 + np.arange(-40, 41) * spread // 4,
            ],
            -1,
            m + 1,
        )
    )
    ours = np.array([binomial_half_sf(int(k), m) for k in b])
    expected = stats.binom.sf(b - 1, m, 0.5)
    np.testing.assert_allclose(ours, expected, rtol=1e-11, atol=1e-300)


def test_binomial_half_sf_is_exact_for_small_m() -> None:
    for m in range(0, 30):
        for b in range(0, m + 1):
            exact = sum(math.comb(m, k) for k in range(b, m + 1)) / 2**m
            assert binomial_half_sf(b, m) == exact
    with pytest.raises(ValueError, match="integers"):
        binomial_half_sf(1, -1)


def test_docstring_examples() -> None:
    result = doctest.testmod(tails)
    assert result.attempted > 0 and result.failed == 0
