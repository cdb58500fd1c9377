"""Two-sample Kolmogorov-Smirnov tests of every column of two matrices at once.

The same statistic and asymptotic p-value as ``scipy.stats.ks_2samp(..., method="asymp")``
per column, computed for all columns together (a constant feature gives a statistic of 0
and a p-value of 1), so a 784-feature window is tested in milliseconds. The p-values come
from ``monitoring/kolmogorov.py`` (numpy), so a serving worker never imports scipy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from monitoring.kolmogorov import kolmogorov_sf

_SF_CACHE: dict[tuple[int, float], float] = {}
_SF_CACHE_LIMIT = 20_000  # about 3 MB at most


def _kolmogorov_sf(d: np.ndarray, n: int) -> np.ndarray:
    """``scipy.stats.kstwo.sf(d, n)`` (``monitoring/kolmogorov.py``), once per distinct
    statistic, memoised: window sizes repeat, so statistics repeat."""
    values = np.unique(d)
    listed = values.tolist()
    known = [_SF_CACHE.get((n, v)) for v in listed]
    missing = [v for v, p in zip(listed, known, strict=True) if p is None]
    if missing:
        fresh = dict(zip(missing, kolmogorov_sf(np.array(missing), n).tolist(), strict=True))
        if len(_SF_CACHE) + len(fresh) > _SF_CACHE_LIMIT:
            _SF_CACHE.clear()
        _SF_CACHE.update(((n, v), p) for v, p in fresh.items())
        known = [fresh[v] if p is None else p for v, p in zip(listed, known, strict=True)]
    return np.array(known, dtype=np.float64)[np.searchsorted(values, d)]


def _order_keys(x: np.ndarray) -> np.ndarray:
    """int32 keys of float32 values with the same order and the same ties (-0.0 == 0.0)."""
    bits = (x + np.float32(0.0)).view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _block_rows(total: int) -> int:
    """Columns processed together: about 256 KB per temporary array (a scrape's
    temporaries are what a worker's allocator keeps afterwards)."""
    return max(1, min(128, (1 << 15) // total))


def _ks_extremes_float32(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Signed extremes of ``n1 * n2 * (F_ref - F_cur)`` per column, via one int64 sort.

    Each value becomes ``key << 1 | sample`` (0 = reference, 1 = current): sorting these
    orders by value and puts, within a tie, the reference copies first. With ``c2`` the
    running count of current values, ``n1 * n2 * (F_ref - F_cur) = pos * n2 - c2 * N`` at
    sorted position ``pos`` (1-based). The minimum over all positions is reached at the
    end of a tie group; the maximum is taken over tie-group ends only.
    """
    n1, n2, d = ref.shape[0], cur.shape[0], ref.shape[1]
    total = n1 + n2
    block = _block_rows(total)
    scaled_pos = np.arange(1, total + 1, dtype=np.int64) * n2
    out = np.empty((2, d), dtype=np.int64)
    buf = np.empty((min(block, d), total), dtype=np.int64)
    work = np.empty_like(buf)
    for start in range(0, d, block):  # keys and temporaries per block: a few MB at most
        stop = min(start + block, d)
        keys, gap = buf[: stop - start], work[: stop - start]
        keys[:, :n1] = _order_keys(ref[:, start:stop]).T
        keys[:, n1:] = _order_keys(cur[:, start:stop]).T
        keys <<= 1
        keys[:, n1:] |= 1
        keys.sort(axis=1)
        np.bitwise_and(keys, 1, out=gap)
        np.cumsum(gap, axis=1, out=gap)
        gap *= total
        np.subtract(scaled_pos, gap, out=gap)
        out[0, start:stop] = gap.min(axis=1)
        keys >>= 1
        gap[:, :-1][keys[:, :-1] == keys[:, 1:]] = 0
        out[1, start:stop] = gap.max(axis=1)
    return out


def _ks_extremes_generic(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Same as :func:`_ks_extremes_float32` for any float64 data, through an argsort.

    The argsort does not order a tie group by sample, so both extremes are taken over
    tie-group ends only.
    """
    n1, n2, d = ref.shape[0], cur.shape[0], ref.shape[1]
    total = n1 + n2
    block = _block_rows(total)
    scaled_pos = np.arange(1, total + 1, dtype=np.int64) * n2
    out = np.empty((2, d), dtype=np.int64)
    buf = np.empty((min(block, d), total), dtype=np.float64)
    for start in range(0, d, block):
        stop = min(start + block, d)
        values = buf[: stop - start]
        values[:, :n1] = ref[:, start:stop].T
        values[:, n1:] = cur[:, start:stop].T
        order = np.argsort(values, axis=1)
        values = np.take_along_axis(values, order, axis=1)
        gap = scaled_pos - np.cumsum(order >= n1, axis=1) * total
        gap[:, :-1][values[:, :-1] == values[:, 1:]] = 0
        out[0, start:stop] = gap.min(axis=1)
        out[1, start:stop] = gap.max(axis=1)
    return out


def as_float_matrix(a: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be two-dimensional, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _float32_exact(a: np.ndarray) -> np.ndarray | None:
    if a.dtype == np.float32:
        return a
    a32 = a.astype(np.float32)
    return a32 if np.array_equal(a32, a) else None


def ks_2samp_columns(reference: ArrayLike, current: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample two-sided KS statistic and asymptotic p-value of every column at once.

    Column ``j`` gives the same figures as
    ``scipy.stats.ks_2samp(reference[:, j], current[:, j], method="asymp")``: the statistic
    is the largest gap between the two empirical CDFs evaluated at every observed value
    (ties counted on both sides, as scipy does), and the p-value is
    ``kstwo.sf(D, round(n1 * n2 / (n1 + n2)))``. Constant equal columns give (0.0, 1.0).

    Data exactly representable in float32 (the model's input type) take a sort of packed
    integer keys; other data an argsort. Both compute the same integer gaps.

    Parameters
    ----------
    reference : array_like, shape (n1, d)
    current : array_like, shape (n2, d)

    Returns
    -------
    statistic, pvalue : ndarray of float64, shape (d,)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stat, p = ks_2samp_columns(rng.normal(size=(500, 2)), rng.normal(0.3, 1, (400, 2)))
    >>> np.round(stat, 3), bool(p[0] < 0.01)
    (array([0.227, 0.138]), True)
    """
    ref = as_float_matrix(reference, "reference")
    cur = as_float_matrix(current, "current")
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} columns but current has {cur.shape[1]}")
    n1, n2 = ref.shape[0], cur.shape[0]
    if ref.shape[1] == 0:
        return np.zeros(0), np.ones(0)
    ref32, cur32 = _float32_exact(ref), _float32_exact(cur)
    if ref32 is not None and cur32 is not None:
        lo, hi = _ks_extremes_float32(ref32, cur32)
    else:
        lo, hi = _ks_extremes_generic(ref.astype(np.float64), cur.astype(np.float64))
    statistic = np.maximum(hi, -lo) / float(n1 * n2)
    m, n = max(n1, n2), min(n1, n2)
    en = int(np.round(m * n / (m + n)))
    return statistic, _kolmogorov_sf(statistic, en)
