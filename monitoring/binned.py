"""Binned distributions: reference-quantile cut points, bin counts, PSI and Jensen-Shannon.

Binning convention (used by every monitor): interior cut points ``e_0 < e_1 < ...`` define
right-closed bins ``(-inf, e_0], (e_0, e_1], ..., (e_last, +inf)``, so bin ``i`` of a value
``x`` is the number of cut points strictly below ``x``.

Every figure is finite: empty bins are smoothed before a logarithm, a constant feature
gets one bin, and empty inputs are refused with a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _finite_vector(x: ArrayLike, name: str) -> np.ndarray:
    v = np.asarray(x)
    if v.dtype != np.float32:
        v = v.astype(np.float64)
    v = v.ravel()
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return v


def quantile_edges(x: ArrayLike, n_bins: int = 10) -> np.ndarray:
    """Interior cut points at the reference quantiles ``1/n_bins, ..., (n_bins-1)/n_bins``.

    Quantiles use the inverted-CDF definition, so every cut point is an observed value;
    repeated cut points are merged and cut points at the maximum dropped. With right-closed
    bins every resulting bin holds at least one reference value, discrete features get
    fewer bins, and a constant feature gets none (an empty array: one bin).

    Parameters
    ----------
    x : array_like, shape (n,)
        Finite reference values of one feature.
    n_bins : int
        Number of bins wanted before merging.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).integers(0, 4, 1000).astype(float)
    >>> quantile_edges(x, n_bins=10)
    array([0., 1., 2.])
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    v = _finite_vector(x, "x")
    if n_bins == 1:
        return np.empty(0, dtype=np.float64)
    levels = np.arange(1, n_bins) / n_bins
    cuts = np.unique(np.quantile(v, levels, method="inverted_cdf"))
    return cuts[cuts < v.max()].astype(np.float64)


def bin_counts(x: ArrayLike, edges: ArrayLike) -> np.ndarray:
    """Counts of ``x`` in the ``len(edges) + 1`` right-closed bins cut at ``edges``.

    Examples
    --------
    >>> bin_counts([0.0, 1.0, 1.5, 3.0], [1.0, 2.0])
    array([2, 1, 1])
    """
    e = np.asarray(edges, dtype=np.float64).ravel()
    v = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(v).any():
        raise ValueError("x holds NaN values")
    return np.bincount(np.searchsorted(e, v, side="left"), minlength=e.size + 1)


def count_matrix(A: np.ndarray, edges: Sequence[ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """Bin counts of every column as one zero-padded (d, max bins) matrix, and bins per row.

    A value's bin is the number of cut points strictly below it, accumulated one cut-point
    rank at a time over all columns (cut points padded with +inf).
    """
    if A.ndim != 2:
        raise ValueError(f"X must be two-dimensional, got shape {A.shape}")
    d = A.shape[1]
    if d != len(edges):
        raise ValueError(f"X has {d} columns but edges has {len(edges)} entries")
    if np.isnan(A).any():
        raise ValueError("X holds NaN values")
    cuts = [np.asarray(e, dtype=np.float64).ravel() for e in edges]
    sizes = np.array([c.size for c in cuts], dtype=np.int64)
    width = int(sizes.max(initial=0)) + 1
    padded = np.full((d, width - 1), np.inf)
    for j, c in enumerate(cuts):
        padded[j, : c.size] = c
    idx = np.zeros(A.shape, dtype=np.intp)
    for r in range(width - 1):
        idx += A > padded[:, r]
    idx += np.arange(d) * width
    counts = np.bincount(idx.ravel(), minlength=d * width).reshape(d, width)
    return counts, sizes + 1


def bin_counts_matrix(X: ArrayLike, edges: Sequence[ArrayLike]) -> list[np.ndarray]:
    """Per-column :func:`bin_counts` of a 2-D array, one bin array per feature.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]])
    >>> [c.tolist() for c in bin_counts_matrix(X, [np.array([0.5]), np.array([])])]
    [[1, 2], [3]]
    """
    counts, sizes = count_matrix(np.asarray(X, dtype=np.float64), edges)
    return [row[:k] for row, k in zip(counts, sizes.tolist(), strict=True)]


# --------------------------------------------------------------------------- distances

PSI_EPSILON = 1e-4
"""Default smoothing share of :func:`psi` (also used by the detectors)."""

#
# Both distances are computed row-wise on (features, bins) matrices of proportions whose
# unused bins are zero in both: such bins add exactly nothing to either figure.


def proportion_rows(counts: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    total = counts.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"{name} is empty (its counts sum to 0)")
    return counts / total


def psi_rows(p: np.ndarray, q: np.ndarray, n_bins: np.ndarray, epsilon: float) -> np.ndarray:
    norm = (1.0 + epsilon * n_bins.astype(np.float64))[:, None]
    ps = (p + epsilon) / norm
    qs = (q + epsilon) / norm
    return np.maximum(0.0, np.sum((qs - ps) * np.log(qs / ps), axis=1))


def js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)
    safe_m = np.where(m > 0, m, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / safe_m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / safe_m), 0.0).sum(axis=1)
    return np.minimum(1.0, np.sqrt(np.maximum(0.0, 0.5 * (kl_p + kl_q))))


def _pair(reference_counts: ArrayLike, current_counts: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(reference_counts, dtype=np.float64).ravel()
    c = np.asarray(current_counts, dtype=np.float64).ravel()
    if r.size == 0:
        raise ValueError("reference_counts has no bins")
    if r.size != c.size:
        raise ValueError(f"reference_counts has {r.size} bins but current_counts has {c.size}")
    return (
        proportion_rows(r[None, :], "reference_counts"),
        proportion_rows(c[None, :], "current_counts"),
    )


def psi(
    reference_counts: ArrayLike, current_counts: ArrayLike, epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index between two binned distributions.

    With proportions ``r_i = c_i / n`` the smoothed shares are
    ``p_i = (r_i + epsilon) / (1 + epsilon * k)`` for ``k`` bins (reference ``p``, current
    ``q``), and ``psi = sum_i (q_i - p_i) * ln(q_i / p_i)``. Smoothing acts on proportions,
    so the figure does not depend on the window sizes (counts or shares give the same
    answer), is exactly 0 for identical proportions and finite for any counts.

    Parameters
    ----------
    reference_counts, current_counts : array_like
        Non-negative counts (or shares) per bin, same length, each with a positive sum.
    epsilon : float
        Smoothing share added to every bin; must be > 0.

    Examples
    --------
    >>> round(psi([50, 30, 20], [30, 30, 40]), 4)
    0.2406
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    p, q = _pair(reference_counts, current_counts)
    return float(psi_rows(p, q, np.array([p.shape[1]]), epsilon)[0])


def js_distance(reference_counts: ArrayLike, current_counts: ArrayLike) -> float:
    """Jensen-Shannon distance (base 2) between two binned distributions, in [0, 1].

    ``sqrt((KL(p || m) + KL(q || m)) / 2)`` with ``m = (p + q) / 2`` and ``0 log 0 = 0``;
    the same figure as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.

    Examples
    --------
    >>> round(js_distance([50, 30, 20], [30, 30, 40]), 4)
    0.2067
    """
    p, q = _pair(reference_counts, current_counts)
    return float(js_rows(p, q)[0])
