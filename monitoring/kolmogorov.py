"""The Kolmogorov-Smirnov distributions in numpy: what the KS p-values need, without scipy.

``kolmogorov_sf(d, n)`` is the survival function of the two-sided one-sample statistic
``D_n``, the figure ``scipy.stats.kstwo.sf(d, n)`` gives (and so the asymptotic p-value of
``scipy.stats.ks_2samp``); ``smirnov_sf(n, d)`` is ``P(D+_n >= d)`` of the one-sided
statistic, scipy's ``special.smirnov``. A serving worker computes KS p-values at every
scrape, and importing ``scipy.stats`` for them cost each worker about 60 MB of memory.

The method for each ``(n, d)`` follows Simard and L'Ecuyer (2011), "Computing the
Two-Sided Kolmogorov-Smirnov Distribution" (J. Stat. Softw. 39(11)), with scipy's choice
of region boundaries, so the two agree to rounding (``tests/monitoring/test_kolmogorov.py``
checks them on a grid against scipy):

* ``n d <= 1`` and ``n d >= n - 1``: Ruben and Gambino's closed forms;
* ``d >= 1/2``, large ``n d^2``: ``2 * smirnov_sf(n, d)`` (exact, or Miller's excellent
  approximation: the two-sided tails overlap with negligible probability there);
* otherwise, small ``n`` or small ``n d^1.5``: the exact Durbin matrix method in the form of
  Marsaglia, Tsang and Wang (2003), computed here also where scipy uses Pomeranz's exact
  recursion (``n <= 140``, ``0.754693 < n d^2 <= 4``);
* large ``n`` elsewhere: the Pelz-Good asymptotic series.

``smirnov_sf`` sums Birnbaum and Tingey's finite series, every term positive, in logs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

_MIN_LOG = -708.3964185322641  # exp() of anything below underflows
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)
_PI2 = math.pi**2
_BLOCK = 1 << 14  # elements per temporary array (128 KB): a scrape's peak stays small


@lru_cache(maxsize=8)
def _log_binomials(n: int) -> np.ndarray:
    """``log C(n, v)`` for ``v = 0..n``."""
    top = math.lgamma(n + 1.0)
    values = [top - math.lgamma(v + 1.0) - math.lgamma(n - v + 1.0) for v in range(n + 1)]
    return np.array(values)


@lru_cache(maxsize=64)
def _log_factorial_over_power(n: int) -> float:
    """``log(n! / n**n)``: the sum of ``log(i / n)``, added without rounding (``fsum``)."""
    return math.fsum(np.log(np.arange(1, n + 1) / n).tolist())


def smirnov_sf(n: int, d: ArrayLike) -> np.ndarray:
    """``P(D+_n >= d)``: the one-sided one-sample KS statistic's survival function.

    The same figure as ``scipy.special.smirnov(n, d)``, for every ``d`` at once. ``n`` is
    the sample size (an integer >= 1), ``d`` values in ``[0, 1]``.

    Examples
    --------
    >>> float(np.round(smirnov_sf(10, 0.3)[0], 6)), float(smirnov_sf(1, [0.25])[0])
    (0.135464, 0.75)
    """
    if n < 1 or int(n) != n:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    x = np.atleast_1d(np.asarray(d, dtype=np.float64))
    if np.any(np.isnan(x)) or np.any((x < 0.0) | (x > 1.0)):
        raise ValueError("d must hold values in [0, 1]")
    if n == 1:
        return 1.0 - x
    out = np.empty_like(x)
    nx = n * x
    small = nx <= 1.0  # the one term left of the complementary sum
    out[small] = 1.0 - x[small] * (1.0 + x[small]) ** (n - 1)
    out[x == 0.0] = 1.0
    gone = ~small & (2.0 * n * x * x > -_MIN_LOG)  # below the smallest double
    out[gone] = 0.0
    edge = ~small & ~gone & (np.floor(nx) >= n - 1)
    out[edge] = (1.0 - x[edge]) ** n
    rest = ~small & ~gone & ~edge
    if n > 1_000_000 and np.any(rest):  # scipy's approximation for huge n
        out[rest] = np.exp(-((6.0 * nx[rest] + 1.0) ** 2) / (18.0 * n))
    elif np.any(rest):
        out[rest] = _smirnov_lower_sum(n, x[rest])
    return np.clip(out, 0.0, 1.0)


def _smirnov_lower_sum(n: int, x: np.ndarray) -> np.ndarray:
    """``x * sum_v C(n, v) (x + v/n)^(v-1) (1 - x - v/n)^(n-v)`` over ``0 <= v < n(1 - x)``,
    each term as the exponential of its logarithm."""
    log_c = _log_binomials(n)
    log_n = math.log(n)
    nx = n * x
    stop = int(np.max(np.ceil(n - nx)))  # v = 0 .. stop - 1 can have a positive base
    v = np.arange(stop, dtype=np.float64)
    out = np.empty_like(x)
    rows = max(1, _BLOCK // max(stop, 1))
    for start in range(0, x.size, rows):
        t = nx[start : start + rows, None]
        right = (n - v) - t  # n (1 - x - v/n)
        valid = right > 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            log_terms = (
                log_c[:stop]
                + (v - 1.0) * (np.log(t + v) - log_n)
                + (n - v) * (np.log(np.where(valid, right, 1.0)) - log_n)
                + (np.log(t) - log_n)  # the factor x
            )
        terms = np.exp(np.where(valid, log_terms, -np.inf))
        out[start : start + rows] = terms.sum(axis=1)
    return out


def _durbin_cdf(n: int, d: np.ndarray) -> np.ndarray:
    """``P(D_n < d)`` by Durbin's matrix: ``n!/n^n`` times the middle element of ``H^n``.

    With ``n d = k - h`` (``k`` an integer, ``0 <= h < 1``), ``H`` is the ``(2k - 1)``
    square matrix of Marsaglia, Tsang and Wang (2003). Its entries are non-negative, so the
    powers lose no precision to cancellation; they are rescaled by powers of two as they
    grow. Values sharing ``k`` are raised together, as one stack of matrices.
    """
    nd = n * d
    ks = np.ceil(nd).astype(np.int64)
    out = np.empty_like(d)
    for k in np.unique(ks).tolist():
        group = np.flatnonzero(ks == k)
        size = max(1, _BLOCK // (2 * k - 1) ** 2)  # matrices raised together
        for start in range(0, group.size, size):
            part = group[start : start + size]
            out[part] = _durbin_group(n, int(k), k - nd[part])
    return out


def _durbin_group(n: int, k: int, h: np.ndarray) -> np.ndarray:
    m = 2 * k - 1
    inv_fact = np.empty(m + 1)
    inv_fact[0] = 1.0
    for j in range(1, m + 1):
        inv_fact[j] = inv_fact[j - 1] / j
    i = np.arange(m)
    lag = i[:, None] - i[None, :] + 1  # H[i, j] = 1 / (i - j + 1)! below the superdiagonal
    H = np.repeat(np.where(lag >= 0, inv_fact[np.clip(lag, 0, m)], 0.0)[None], h.size, axis=0)
    h_pow = h[:, None] ** np.arange(1, m + 1, dtype=np.float64)  # h^1 .. h^m
    H[:, :, 0] = (1.0 - h_pow) * inv_fact[1:]  # (1 - h^(i+1)) / (i+1)!
    H[:, m - 1, :] = (1.0 - h_pow[:, ::-1]) * inv_fact[m:0:-1]  # (1 - h^(m-j)) / (m-j)!
    H[:, m - 1, 0] = (1.0 - 2.0 * h**m + np.maximum(0.0, 2.0 * h - 1.0) ** m) * inv_fact[m]

    def rescaled(a: np.ndarray, exponent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, shift = np.frexp(a.max(axis=(1, 2)))  # 2^(shift-1) <= max < 2^shift; 0 for 0
        return np.ldexp(a, -shift[:, None, None]), exponent + shift

    power: np.ndarray | None = None
    power_exp = np.zeros(h.size, dtype=np.int64)
    base, base_exp = rescaled(H, np.zeros(h.size, dtype=np.int64))
    left = n
    while True:
        if left & 1:
            if power is None:
                power, power_exp = base, base_exp
            else:
                power, power_exp = rescaled(power @ base, power_exp + base_exp)
        left >>= 1
        if not left:
            break
        base, base_exp = rescaled(base @ base, 2 * base_exp)
    assert power is not None
    middle = power[:, k - 1, k - 1]
    with np.errstate(divide="ignore"):
        log_p = np.log(middle) + power_exp * math.log(2.0) + _log_factorial_over_power(n)
    return np.exp(np.minimum(log_p, 0.0))


def _pelz_good_cdf(n: int, d: np.ndarray) -> np.ndarray:
    """``P(D_n <= d)`` by the Pelz-Good expansion ``K0 + K1/sqrt(n) + K2/n + K3/n^1.5`` in
    ``z = d sqrt(n)`` (Simard and L'Ecuyer's eq. 6), each ``K`` a sum over ``k >= 1`` of
    ``exp(-a / (2 z^2))`` terms with ``a = pi^2 (k - 1/2)^2`` (``a = pi^2 k^2`` for the
    second sums of ``K2`` and ``K3``)."""
    out = np.zeros_like(d)
    z = np.sqrt(float(n)) * d
    ok = -_PI2 / (8.0 * z * z) >= _MIN_LOG  # else every term underflows: the CDF is 0
    if not np.any(ok):
        return out
    z = z[ok, None]
    s = z * z
    k = np.arange(1.0, math.ceil(16.0 * float(np.max(z)) / math.pi) + 1.0)[None, :]
    a = _PI2 * (k - 0.5) ** 2
    b = _PI2 * k * k
    wa, wb = np.exp(-a / (2.0 * s)), np.exp(-b / (2.0 * s))

    def total(coefficients: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.sum(coefficients * weights, axis=1, keepdims=True)

    k0 = math.sqrt(2.0 * math.pi) / z * total(np.ones_like(a), wa)
    k1 = _SQRT_HALF_PI / (3.0 * s**2) * total(a - s, wa)
    k2 = _SQRT_HALF_PI / (36.0 * z**7) * total(
        (6.0 * s**3 + 2.0 * s**2) + (2.0 * s**2 - 5.0 * s) * a + (1.0 - 2.0 * s) * a**2, wa
    ) - _SQRT_HALF_PI / (18.0 * z**3) * total(b, wb)
    k3 = _SQRT_HALF_PI / (3240.0 * s**5) * total(
        (5.0 - 30.0 * s) * a**3
        + (212.0 * s**2 - 60.0 * s) * a**2
        + (135.0 * s**2 - 96.0 * s**3) * a
        - (30.0 * s**3 + 90.0 * s**4),
        wa,
    ) + _SQRT_HALF_PI / (108.0 * s**3) * total((3.0 * s - b) * b, wb)
    root = math.sqrt(n)
    out[ok] = (k0 + k1 / root + k2 / n + k3 / (n * root))[:, 0]
    return out


def kolmogorov_sf(d: ArrayLike, n: int) -> np.ndarray:
    """``P(D_n >= d)``: the two-sided one-sample KS statistic's survival function.

    The same figure as ``scipy.stats.kstwo.sf(d, n)``, for every ``d`` at once (``n`` an
    integer >= 1). ``ks_2samp``'s asymptotic p-value is this at ``n = round(n1 n2 /
    (n1 + n2))``.

    Examples
    --------
    >>> p = kolmogorov_sf([0.05, 0.1, 0.3], 100)
    >>> [float(v) for v in np.round(p, 6)]
    [0.953216, 0.252693, 0.0]
    """
    if n < 1 or int(n) != n:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    x = np.atleast_1d(np.asarray(d, dtype=np.float64))
    if np.any(np.isnan(x)):
        raise ValueError("d holds NaN values")
    out = np.ones_like(x)
    out[x >= 1.0] = 0.0
    t = n * x
    todo = (x < 1.0) & (t > 0.5)
    low = todo & (t <= 1.0)  # Ruben-Gambino: P(D_n < d) = n!/n^n (2t - 1)^n
    if np.any(low):
        log_f = _log_factorial_over_power(n)
        out[low] = 1.0 - np.exp(log_f + n * np.log(2.0 * t[low] - 1.0))
    todo &= ~low
    high = todo & (t >= n - 1)  # Ruben-Gambino: P(D_n >= d) = 2 (1 - d)^n
    out[high] = 2.0 * (1.0 - x[high]) ** n
    todo &= ~high
    nxx = t * x
    if n <= 140:
        one_sided = todo & ((x >= 0.5) | (nxx > 4.0))
        exact = todo & ~one_sided
    else:
        out[todo & (x < 0.5) & (nxx >= 370.0)] = 0.0
        one_sided = todo & ((x >= 0.5) | ((nxx >= 2.2) & (nxx < 370.0)))
        rest = todo & (x < 0.5) & (nxx < 2.2)
        exact = rest & (n <= 100_000) & (n * x**1.5 <= 1.4)
        pelz = rest & ~exact
        if np.any(pelz):
            out[pelz] = 1.0 - _pelz_good_cdf(n, x[pelz])
    if np.any(one_sided):
        out[one_sided] = 2.0 * smirnov_sf(n, x[one_sided])
    if np.any(exact):
        out[exact] = 1.0 - _durbin_cdf(n, x[exact])
    return np.clip(out, 0.0, 1.0)
