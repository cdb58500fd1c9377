"""Tail probabilities of the normal, chi-square and binomial distributions, without scipy.

The window figures need four p-values: the Mann-Whitney and two-proportion z-tests (a
normal tail), the chi-square test of predicted-class shares, and the exact McNemar test (a
Binomial(m, 1/2) tail). Each is a short exact computation on the standard library, so a
serving worker does not import ``scipy.stats`` (about 60 MB per worker) to get them.
``tests/monitoring/test_tails.py`` compares each with scipy.
"""

from __future__ import annotations

import math

import numpy as np

_SQRT_HALF = math.sqrt(0.5)


def normal_cdf(x: float) -> float:
    """``P(Z <= x)`` for a standard normal ``Z`` (``scipy.special.ndtr``).

    Examples
    --------
    >>> round(normal_cdf(1.959963984540054), 6), normal_cdf(0.0)
    (0.975, 0.5)
    """
    if math.isnan(x):
        return math.nan
    u = x * _SQRT_HALF
    if abs(u) < _SQRT_HALF:
        return 0.5 + 0.5 * math.erf(u)
    tail = 0.5 * math.erfc(abs(u))  # accurate far into either tail
    return 1.0 - tail if u > 0 else tail


def normal_sf(x: float) -> float:
    """``P(Z > x)`` for a standard normal ``Z`` (``scipy.stats.norm.sf``).

    Examples
    --------
    >>> f"{normal_sf(8.0):.4e}"
    '6.2210e-16'
    """
    return normal_cdf(-x)


def chi2_sf(x: float, df: int) -> float:
    """``P(X > x)`` for ``X`` chi-square with an integer ``df >= 1`` (``scipy.stats.chi2.sf``).

    The regularized upper incomplete gamma function ``Q(df/2, x/2)`` in closed form: with
    ``y = x/2``, ``exp(-y) * sum(y^i / i!)`` over ``i < df/2`` for even ``df``; for odd
    ``df``, ``erfc(sqrt(y))`` plus ``exp(-y) * sum(y^(i+1/2) / Gamma(i + 3/2))`` over
    ``i < (df - 1)/2``. Every term is positive and taken from its logarithm, so neither
    tail loses precision.

    Examples
    --------
    >>> round(chi2_sf(3.841458820694124, 1), 6), round(chi2_sf(10.0, 4), 6)
    (0.05, 0.040428)
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    y = 0.5 * x
    log_y = math.log(y)
    if df % 2 == 0:
        offsets, total = [float(i) for i in range(df // 2)], 0.0
    else:
        offsets, total = [i + 0.5 for i in range((df - 1) // 2)], math.erfc(math.sqrt(y))
    terms = [math.exp(a * log_y - y - math.lgamma(a + 1.0)) for a in offsets]
    return min(1.0, math.fsum([total, *terms]))


EXACT_BINOMIAL_MAX = 20_000
"""Largest ``m`` whose binomial tail is summed in integers (a few ms); above it, in floats
(relative error about 1e-12)."""


def binomial_half_sf(b: int, m: int) -> float:
    """``P(B >= b)`` for ``B ~ Binomial(m, 1/2)``.

    The same as ``scipy.stats.binom.sf(b - 1, m, 0.5)`` (``binomtest(b, m, 0.5,
    alternative="greater").pvalue``). Up to ``EXACT_BINOMIAL_MAX`` discordant pairs it is
    summed in integers: the binomial coefficients of the smaller tail, from its largest
    term outwards, until what is left cannot change a double; the quotient by ``2**m`` is
    then correctly rounded. Above, in floats (relative error about 1e-12).

    Examples
    --------
    >>> binomial_half_sf(3, 3), binomial_half_sf(0, 5), round(binomial_half_sf(12, 14), 6)
    (0.125, 1.0, 0.00647)
    """
    if m < 0 or int(m) != m or int(b) != b:
        raise ValueError(f"need integers b and m >= 0, got b={b}, m={m}")
    if b <= 0:
        return 1.0
    if b > m:
        return 0.0
    upper = 2 * b > m  # the tail k >= b is the smaller one: sum it
    k = b if upper else b - 1  # the largest term of the summed tail
    tail = _tail_exact(m, k, upper) if m <= EXACT_BINOMIAL_MAX else _tail_float(m, k, upper)
    return tail if upper else 1.0 - tail


def _tail_exact(m: int, k: int, upward: bool) -> float:
    """``sum C(m, j) / 2^m`` over ``j >= k`` (``upward``) or ``j <= k``, correctly rounded
    but for terms below ``2**-64`` of the sum."""
    term = math.comb(m, k)
    total = 0
    while True:
        total += term
        left = m - k if upward else k  # terms still to come, each at most this one
        if left == 0 or (term * left) << 64 < total:
            break
        if upward:
            term = term * (m - k) // (k + 1)
            k += 1
        else:
            term = term * k // (m - k + 1)
            k -= 1
    return total / (1 << m)


def _tail_float(m: int, k: int, upward: bool) -> float:
    """As :func:`_tail_exact`, in floats, for large ``m``: each term's logarithm is the
    central term's (Stirling's series of ``C(2n, n) / 4^n``) plus the log-ratios of the
    terms in between, summed up to 12 standard deviations past ``k``."""
    if not upward:  # by symmetry, the terms j <= k are the terms j >= m - k
        k = m - k
    half = m // 2  # C(m, half) / 2^m is the central term of 2 * half (m even) or m + 1
    big = 2 * half if m % 2 == 0 else m + 1
    log_central = -0.5 * math.log(math.pi * big / 2.0) - 1.0 / (4.0 * big) + 1.0 / (24.0 * big**3)
    stop = min(m, k + int(12 * math.sqrt(m)) + 2)
    j = np.arange(half, stop, dtype=np.float64)
    steps = np.log1p((m - 2.0 * j - 1.0) / (j + 1.0))  # log(C(m, j+1) / C(m, j))
    head = log_central + float(np.sum(steps[: k - half]))  # pairwise: log of term k
    logs = head + np.concatenate([[0.0], np.cumsum(steps[k - half :])])
    return float(np.sum(np.exp(logs)))
