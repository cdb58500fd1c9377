"""Input and prediction drift: binned distances, column-wise KS tests and their verdicts.

Binning convention (used everywhere in this module): interior cut points ``e_0 < e_1 < ...``
define right-closed bins ``(-inf, e_0], (e_0, e_1], ..., (e_last, +inf)``, so bin ``i`` of a
value ``x`` is the number of cut points strictly below ``x``.

Every figure is finite: empty bins are smoothed before a logarithm, constant features give
one bin and a KS statistic of 0, and empty inputs are refused with a ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

# --------------------------------------------------------------------------- binning


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


def _count_matrix(A: np.ndarray, edges: Sequence[ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
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
    counts, sizes = _count_matrix(np.asarray(X, dtype=np.float64), edges)
    return [row[:k] for row, k in zip(counts, sizes.tolist(), strict=True)]


# --------------------------------------------------------------------------- distances

PSI_EPSILON = 1e-4
"""Default smoothing share of :func:`psi` (also used by the detectors)."""

#
# Both distances are computed row-wise on (features, bins) matrices of proportions whose
# unused bins are zero in both: such bins add exactly nothing to either figure.


def _proportion_rows(counts: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    total = counts.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"{name} is empty (its counts sum to 0)")
    return counts / total


def _psi_rows(p: np.ndarray, q: np.ndarray, n_bins: np.ndarray, epsilon: float) -> np.ndarray:
    norm = (1.0 + epsilon * n_bins.astype(np.float64))[:, None]
    ps = (p + epsilon) / norm
    qs = (q + epsilon) / norm
    return np.maximum(0.0, np.sum((qs - ps) * np.log(qs / ps), axis=1))


def _js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
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
        _proportion_rows(r[None, :], "reference_counts"),
        _proportion_rows(c[None, :], "current_counts"),
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
    return float(_psi_rows(p, q, np.array([p.shape[1]]), epsilon)[0])


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
    return float(_js_rows(p, q)[0])


# --------------------------------------------------------------------------- KS tests

_SF_CACHE: dict[tuple[float, float], float] = {}
_SF_CACHE_LIMIT = 200_000


def _kolmogorov_sf(d: np.ndarray, n: float) -> np.ndarray:
    """``scipy.stats.kstwo.sf(d, n)``, vectorised where scipy's own branch is closed-form.

    For ``n * d**2`` above 4 scipy evaluates ``2 * smirnov(n, d)`` (Miller's formula, used
    for every ``n``); that is computed here in one call. The remaining statistics go to
    ``kstwo.sf`` once per distinct value, memoised: window sizes repeat, so statistics
    repeat.
    """
    out = np.ones_like(d)
    t = n * d
    big = (t * d > 4.0) & (d < 1.0)
    out[big] = np.clip(2.0 * special.smirnov(n, d[big]), 0.0, 1.0)
    out[d >= 1.0] = 0.0
    rest = ~big & (d < 1.0) & (t > 0.5)
    if np.any(rest):
        values = np.unique(d[rest]).tolist()
        known = [_SF_CACHE.get((n, v)) for v in values]
        missing = [v for v, p in zip(values, known, strict=True) if p is None]
        if missing:
            fresh = dict(zip(missing, stats.kstwo.sf(np.array(missing), n).tolist(), strict=True))
            if len(_SF_CACHE) + len(fresh) > _SF_CACHE_LIMIT:
                _SF_CACHE.clear()
            _SF_CACHE.update(((n, v), p) for v, p in fresh.items())
            known = [fresh[v] if p is None else p for v, p in zip(values, known, strict=True)]
        out[rest] = np.array(known)[np.searchsorted(np.array(values), d[rest])]
    return np.clip(out, 0.0, 1.0)


def _order_keys(x: np.ndarray) -> np.ndarray:
    """int32 keys of float32 values with the same order and the same ties (-0.0 == 0.0)."""
    bits = (x + np.float32(0.0)).view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _block_rows(total: int) -> int:
    """Columns processed together: about a megabyte of keys per temporary array."""
    return max(1, min(128, (1 << 17) // total))


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
    kr, kc = _order_keys(ref), _order_keys(cur)
    scaled_pos = np.arange(1, total + 1, dtype=np.int64) * n2
    out = np.empty((2, d), dtype=np.int64)
    buf = np.empty((min(block, d), total), dtype=np.int64)
    for start in range(0, d, block):
        stop = min(start + block, d)
        keys = buf[: stop - start]
        keys[:, :n1] = kr[:, start:stop].T
        keys[:, n1:] = kc[:, start:stop].T
        keys <<= 1
        keys[:, n1:] |= 1
        keys.sort(axis=1)
        gap = scaled_pos - np.cumsum(keys & 1, axis=1) * total
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


def _as_float_matrix(a: ArrayLike, name: str) -> np.ndarray:
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
    ref = _as_float_matrix(reference, "reference")
    cur = _as_float_matrix(current, "current")
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
    en = float(np.round(m * n / (m + n)))
    return statistic, _kolmogorov_sf(statistic, en)


def benjamini_hochberg(pvalues: ArrayLike, alpha: float = 0.05) -> np.ndarray:
    """Rejections of the Benjamini-Hochberg step-up procedure at false discovery rate alpha.

    With sorted p-values ``p_(1) <= ... <= p_(m)``, reject the hypotheses of the ``k``
    smallest, where ``k`` is the largest index with ``p_(k) <= k * alpha / m``.

    Examples
    --------
    >>> benjamini_hochberg([0.001, 0.02, 0.03, 0.5], alpha=0.05)
    array([ True,  True,  True, False])
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("pvalues must lie in [0, 1]")
    reject = np.zeros(p.size, dtype=bool)
    if p.size == 0:
        return reject
    order = np.argsort(p, kind="stable")
    below = p[order] <= alpha * np.arange(1, p.size + 1) / p.size
    if np.any(below):
        k = int(np.nonzero(below)[0].max())
        reject[order[: k + 1]] = True
    return reject


# --------------------------------------------------------------------------- input drift


@dataclass(frozen=True)
class FeatureDrift:
    """Drift figures of one feature in one window."""

    index: int
    name: str
    psi: float
    js_distance: float
    ks_statistic: float
    ks_pvalue: float
    drifted: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "psi": self.psi,
            "js_distance": self.js_distance,
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of one window and the dataset-level verdict."""

    n_rows: int
    features: tuple[FeatureDrift, ...]
    drift_share: float
    drift_detected: bool
    alpha: float
    min_psi: float
    share_threshold: float

    def worst(self, k: int) -> list[FeatureDrift]:
        """The ``k`` features with the largest PSI (ties: larger KS statistic first)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ranked = sorted(self.features, key=lambda f: (-f.psi, -f.ks_statistic, f.index))
        return ranked[:k]

    def to_dict(self) -> dict[str, object]:
        return {
            "n_rows": self.n_rows,
            "drift_share": self.drift_share,
            "drift_detected": self.drift_detected,
            "n_drifted": sum(f.drifted for f in self.features),
            "alpha": self.alpha,
            "min_psi": self.min_psi,
            "share_threshold": self.share_threshold,
            "features": [f.to_dict() for f in self.features],
        }


class InputDriftDetector:
    """Per-feature and dataset-level input drift of a window against a reference profile.

    A feature drifts when its KS p-value, adjusted over all features with
    Benjamini-Hochberg, rejects at ``alpha`` AND its PSI is at least ``min_psi`` (a
    minimum effect size, so that large windows do not alarm on trivial differences). The
    dataset drifts when the share of drifted features is at least ``share_threshold``.

    Parameters
    ----------
    alpha : float
        False discovery rate of the per-feature KS tests.
    min_psi : float
        Smallest PSI that counts as drift.
    share_threshold : float
        Share of drifted features that raises dataset drift.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(size=(2000, 5))
    >>> edges = [quantile_edges(ref[:, j]) for j in range(5)]
    >>> counts = bin_counts_matrix(ref, edges)
    >>> cur = rng.normal(size=(500, 5))
    >>> cur[:, 0] += 1.0
    >>> report = InputDriftDetector().evaluate(ref[:1000], edges, counts, cur)
    >>> [f.drifted for f in report.features], report.drift_detected
    ([True, False, False, False, False], True)
    """

    def __init__(
        self, alpha: float = 0.05, min_psi: float = 0.1, share_threshold: float = 0.1
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not (min_psi >= 0.0 and math.isfinite(min_psi)):
            raise ValueError(f"min_psi must be finite and >= 0, got {min_psi}")
        if not 0.0 < share_threshold <= 1.0:
            raise ValueError(f"share_threshold must be in (0, 1], got {share_threshold}")
        self.alpha = alpha
        self.min_psi = min_psi
        self.share_threshold = share_threshold

    def evaluate(
        self,
        reference_sample: np.ndarray,
        edges: Sequence[np.ndarray],
        reference_counts: Sequence[np.ndarray],
        current: np.ndarray,
        feature_names: Sequence[str] | None = None,
    ) -> DriftReport:
        """Drift of the ``current`` window.

        Parameters
        ----------
        reference_sample : ndarray, shape (m, d)
            Reference rows for the KS tests. ``current`` is cast to its dtype first, so
            values that were equal before a float32 round trip stay equal (ties matter for
            KS on discrete features).
        edges, reference_counts : sequence of ndarray, length d
            Cut points and reference bin counts per feature (see :func:`quantile_edges`).
        current : ndarray, shape (n, d)
            The window; at least one row.
        feature_names : sequence of str, optional
            Default ``f0 .. f{d-1}``.
        """
        ref = np.asarray(reference_sample)
        if ref.dtype != np.float32:
            ref = ref.astype(np.float64)
        if ref.ndim != 2:
            raise ValueError(f"reference_sample must be two-dimensional, got shape {ref.shape}")
        cur = _as_float_matrix(current, "current").astype(ref.dtype, copy=False)
        d = ref.shape[1]
        if cur.shape[1] != d:
            raise ValueError(f"current has {cur.shape[1]} features but the reference has {d}")
        if len(edges) != d or len(reference_counts) != d:
            raise ValueError(
                f"edges and reference_counts must have one entry per feature ({d}), "
                f"got {len(edges)} and {len(reference_counts)}"
            )
        names = [f"f{j}" for j in range(d)] if feature_names is None else list(feature_names)
        if len(names) != d:
            raise ValueError(f"feature_names has {len(names)} entries for {d} features")
        current_counts, n_bins = _count_matrix(cur.astype(np.float64), edges)
        reference = np.zeros(current_counts.shape, dtype=np.float64)
        for j, counts in enumerate(reference_counts):
            row = np.asarray(counts, dtype=np.float64).ravel()
            if row.size != n_bins[j]:
                raise ValueError(
                    f"reference_counts[{j}] has {row.size} bins but edges[{j}] makes {n_bins[j]}"
                )
            reference[j, : row.size] = row
        p = _proportion_rows(reference, "reference_counts")
        q = _proportion_rows(current_counts.astype(np.float64), "current")
        psi_values = _psi_rows(p, q, n_bins, PSI_EPSILON)
        js_values = _js_rows(p, q)
        ks_stat, ks_p = ks_2samp_columns(ref, cur)
        drifted = benjamini_hochberg(ks_p, self.alpha) & (psi_values >= self.min_psi)
        features = tuple(
            FeatureDrift(
                index=j,
                name=names[j],
                psi=float(psi_values[j]),
                js_distance=float(js_values[j]),
                ks_statistic=float(ks_stat[j]),
                ks_pvalue=float(ks_p[j]),
                drifted=bool(drifted[j]),
            )
            for j in range(d)
        )
        share = sum(f.drifted for f in features) / d if d else 0.0
        return DriftReport(
            n_rows=int(cur.shape[0]),
            features=features,
            drift_share=float(share),
            drift_detected=bool(d > 0 and share >= self.share_threshold),
            alpha=self.alpha,
            min_psi=self.min_psi,
            share_threshold=self.share_threshold,
        )


# --------------------------------------------------------------------------- prediction drift


@dataclass(frozen=True)
class PredictionDrift:
    """Drift of the model's outputs in one window against the held-out reference.

    Attributes
    ----------
    n_rows : int
        Rows in the window.
    class_psi : float
        PSI of the predicted-class shares.
    chi2_pvalue : float
        Chi-square goodness-of-fit p-value of the predicted-class counts against the
        (smoothed) reference shares.
    confidence_psi : float
        PSI of the binned confidence (largest probability) distribution.
    confidence_ks_statistic : float
        Largest gap between the binned confidence CDFs, evaluated at the reference cut
        points (a lower bound of the exact KS statistic).
    chi2_statistic : float
        The chi-square statistic behind ``chi2_pvalue``.
    mean_confidence : float
        Mean largest probability of the window.
    class_share : tuple of float
        Predicted-class shares of the window.
    """

    n_rows: int
    class_psi: float
    chi2_pvalue: float
    confidence_psi: float
    confidence_ks_statistic: float
    chi2_statistic: float
    mean_confidence: float
    class_share: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "n_rows": self.n_rows,
            "class_psi": self.class_psi,
            "chi2_statistic": self.chi2_statistic,
            "chi2_pvalue": self.chi2_pvalue,
            "confidence_psi": self.confidence_psi,
            "confidence_ks_statistic": self.confidence_ks_statistic,
            "mean_confidence": self.mean_confidence,
            "class_share": list(self.class_share),
        }


CLASS_SHARE_EPSILON = 1e-4
"""Share added to every reference class before the chi-square test (then renormalised)."""


def prediction_drift(
    reference_class_share: Sequence[float] | np.ndarray,
    reference_confidence_edges: ArrayLike,
    reference_confidence_counts: ArrayLike,
    predicted: ArrayLike,
    confidences: ArrayLike,
) -> PredictionDrift:
    """Compare a window's predicted classes and confidences with the reference.

    The expected count of class ``c`` is ``n * (s_c + eps) / (1 + eps * K)`` with the
    reference share ``s_c`` and ``eps = CLASS_SHARE_EPSILON``, so a class never predicted
    on the reference gives a large but finite chi-square contribution.

    Parameters
    ----------
    reference_class_share : sequence of float, length K
        Predicted-class shares on held-out reference rows.
    reference_confidence_edges, reference_confidence_counts : ndarray
        Binned largest-probability distribution on held-out reference rows.
    predicted : ndarray of int, shape (n,)
        Predicted class ids of the window, in ``[0, K)``.
    confidences : ndarray, shape (n,)
        Largest probability of each row.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.uniform(0.5, 1.0, 1000)
    >>> edges = quantile_edges(conf)
    >>> pd = prediction_drift([0.5, 0.5], edges, bin_counts(conf, edges),
    ...                       rng.integers(0, 2, 300), rng.uniform(0.5, 1.0, 300))
    >>> bool(pd.chi2_pvalue > 0.05), pd.confidence_psi < 0.1
    (True, True)
    """
    share = np.asarray(reference_class_share, dtype=np.float64).ravel()
    if share.size == 0 or not np.all(np.isfinite(share)) or np.any(share < 0):
        raise ValueError("reference_class_share must be non-empty, finite and non-negative")
    if share.sum() <= 0:
        raise ValueError("reference_class_share sums to 0")
    k = share.size
    pred = np.asarray(predicted)
    if pred.ndim != 1 or pred.size == 0:
        raise ValueError("predicted must be a non-empty one-dimensional array")
    if not np.issubdtype(pred.dtype, np.integer):
        if not np.array_equal(pred, np.round(pred)):
            raise ValueError("predicted must hold integer class ids")
        pred = pred.astype(np.int64)
    if pred.min() < 0 or pred.max() >= k:
        raise ValueError(f"predicted holds class ids outside [0, {k})")
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    if conf.size != pred.size:
        raise ValueError(f"confidences has {conf.size} rows but predicted has {pred.size}")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidences holds NaN or infinite values")
    n = pred.size
    observed = np.bincount(pred, minlength=k).astype(np.float64)
    smoothed = share / share.sum()
    smoothed = (smoothed + CLASS_SHARE_EPSILON) / (1.0 + CLASS_SHARE_EPSILON * k)
    expected = n * smoothed
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    pvalue = float(stats.chi2.sf(chi2, k - 1)) if k > 1 else 1.0
    ref_counts = np.asarray(reference_confidence_counts, dtype=np.float64).ravel()
    if not np.all(np.isfinite(ref_counts)) or np.any(ref_counts < 0) or ref_counts.sum() <= 0:
        raise ValueError("reference_confidence_counts must be non-negative with a positive sum")
    cur_counts = bin_counts(conf, reference_confidence_edges)
    if cur_counts.size != ref_counts.size:
        raise ValueError(
            f"reference_confidence_counts has {ref_counts.size} bins but the edges make "
            f"{cur_counts.size}"
        )
    ref_cdf = np.cumsum(ref_counts) / ref_counts.sum()
    cur_cdf = np.cumsum(cur_counts) / n
    return PredictionDrift(
        n_rows=n,
        class_psi=psi(share, observed),
        chi2_pvalue=min(1.0, max(0.0, pvalue)),
        confidence_psi=psi(ref_counts, cur_counts),
        confidence_ks_statistic=float(np.max(np.abs(ref_cdf - cur_cdf))),
        chi2_statistic=chi2,
        mean_confidence=float(conf.mean()),
        class_share=tuple(float(v) for v in observed / n),
    )
