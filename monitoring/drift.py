"""Input and prediction drift: the per-feature verdicts and the dataset-level decision.

The figures come from ``monitoring/binned.py`` (PSI and Jensen-Shannon on the reference
profile's bins) and ``monitoring/ks.py`` (column-wise KS tests); this module controls false
alarms across features (Benjamini-Hochberg plus a minimum effect size) and compares
predicted-class and confidence distributions with the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from monitoring.binned import (
    PSI_EPSILON,
    bin_counts,
    count_matrix,
    js_rows,
    proportion_rows,
    psi,
    psi_rows,
)
from monitoring.ks import as_float_matrix, ks_2samp_columns
from monitoring.tails import chi2_sf


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
    >>> from monitoring.binned import bin_counts_matrix, quantile_edges
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
        cur = as_float_matrix(current, "current").astype(ref.dtype, copy=False)
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
        current_counts, n_bins = count_matrix(cur.astype(np.float64), edges)
        reference = np.zeros(current_counts.shape, dtype=np.float64)
        for j, counts in enumerate(reference_counts):
            row = np.asarray(counts, dtype=np.float64).ravel()
            if row.size != n_bins[j]:
                raise ValueError(
                    f"reference_counts[{j}] has {row.size} bins but edges[{j}] makes {n_bins[j]}"
                )
            reference[j, : row.size] = row
        p = proportion_rows(reference, "reference_counts")
        q = proportion_rows(current_counts.astype(np.float64), "current")
        psi_values = psi_rows(p, q, n_bins, PSI_EPSILON)
        js_values = js_rows(p, q)
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
    >>> from monitoring.binned import bin_counts, quantile_edges
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
    pvalue = chi2_sf(chi2, k - 1) if k > 1 else 1.0
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
