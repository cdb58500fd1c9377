"""Per-row anomaly score: how unlikely a row is under a probabilistic PCA of the reference.

The reference rows are standardised, their covariance diagonalised, and the top ``k``
principal directions kept (enough for ``variance_kept`` of the variance, at most
``max_components``). A row's score is its Mahalanobis distance within that subspace plus
its residual energy (what the subspace does not explain) divided by the mean discarded
variance. This is twice the negative log-likelihood of a probabilistic PCA model up to a
constant, so rows far from the reference manifold (noise, constant images, shifted
sensors) score high even when each single feature looks plausible. Scoring a batch is one
matrix product, cheap enough for every served row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

MIN_RESIDUAL_VARIANCE = 1e-6
"""Floor of the residual variance, in standardised units (keeps scores finite)."""


def _finite_matrix(X: ArrayLike, name: str) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"{name} must be two-dimensional, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return A


class SubspaceAnomalyDetector:
    """Probabilistic-PCA anomaly score with a threshold calibrated to a target false-alarm rate.

    Parameters
    ----------
    variance_kept : float
        Share of the standardised variance the principal subspace must explain, in (0, 1].
    max_components : int
        Upper bound on the subspace dimension ``k``.
    target_fpr : float
        Intended share of normal rows flagged; the threshold is the ``1 - target_fpr``
        quantile of the scores of the calibration rows.

    Attributes
    ----------
    mean_, scale_ : ndarray, shape (d,)
        Standardisation (population std; zero std replaced by 1).
    components_ : ndarray, shape (k, d)
        Orthonormal principal directions, by decreasing variance.
    explained_variance_ : ndarray, shape (k,)
        Variance along each direction (covariance with ``n - 1``, as scikit-learn's PCA).
    residual_variance_ : float
        Mean variance of the discarded directions, at least ``MIN_RESIDUAL_VARIANCE``.
    threshold_ : float
        Scores above it are anomalous.
    n_features_in_ : int
        Number of columns seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(2000, 2))
    >>> X = latent @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(2000, 6))
    >>> det = SubspaceAnomalyDetector(target_fpr=0.01).fit(X[:1500], X[1500:])
    >>> det.components_.shape
    (2, 6)
    >>> outliers = rng.normal(size=(100, 6))
    >>> float(det.is_anomalous(det.score(outliers)).mean())
    1.0
    """

    mean_: np.ndarray
    scale_: np.ndarray
    components_: np.ndarray
    explained_variance_: np.ndarray
    residual_variance_: float
    threshold_: float
    n_features_in_: int

    def __init__(
        self, variance_kept: float = 0.95, max_components: int = 50, target_fpr: float = 0.01
    ) -> None:
        if not 0.0 < variance_kept <= 1.0:
            raise ValueError(f"variance_kept must be in (0, 1], got {variance_kept}")
        if max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
        self.variance_kept = float(variance_kept)
        self.max_components = int(max_components)
        self.target_fpr = float(target_fpr)

    def fit(
        self, X: np.ndarray, X_calibration: np.ndarray | None = None
    ) -> SubspaceAnomalyDetector:
        """Fit the subspace on ``X`` and calibrate the threshold.

        Parameters
        ----------
        X : ndarray, shape (n, d)
            Reference rows, at least 2.
        X_calibration : ndarray, shape (m, d), optional
            Held-out normal rows for the threshold. Without them the fit rows are used,
            which gives a lower threshold (fit rows score lower than new rows) and so a
            realised false-alarm rate above ``target_fpr``.
        """
        A = _finite_matrix(X, "X")
        n, d = A.shape
        if n < 2 or d < 1:
            raise ValueError(f"X needs at least 2 rows and 1 column, got shape {A.shape}")
        mean = A.mean(axis=0)
        scale = A.std(axis=0)
        scale[scale <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
        Z = (A - mean) / scale
        cov = (Z.T @ Z) / (n - 1)
        eigval, eigvec = np.linalg.eigh(cov)
        eigval = np.clip(eigval[::-1], 0.0, None)
        eigvec = eigvec[:, ::-1]
        total = float(eigval.sum())
        k = 0
        if total > 0.0:
            ratio = np.cumsum(eigval) / total
            k = int(np.searchsorted(ratio, self.variance_kept - 1e-12, side="left")) + 1
            positive = int(np.sum(eigval > 1e-10 * eigval[0]))
            k = min(k, self.max_components, positive, d)
        components = eigvec[:, :k].T.copy()
        # Deterministic signs: the largest-magnitude entry of each direction is positive.
        if k:
            pivot = components[np.arange(k), np.argmax(np.abs(components), axis=1)]
            components *= np.where(pivot < 0, -1.0, 1.0)[:, None]
        discarded = eigval[k:]
        residual = float(discarded.mean()) if discarded.size else 0.0
        self.mean_ = mean
        self.scale_ = scale
        self.components_ = components
        self.explained_variance_ = eigval[:k].copy()
        self.residual_variance_ = max(residual, MIN_RESIDUAL_VARIANCE)
        self.n_features_in_ = d
        scores = self._score(Z) if X_calibration is None else self.score(X_calibration)
        if scores.size == 0:
            raise ValueError("X_calibration has no rows")
        self.threshold_ = float(np.quantile(scores, 1.0 - self.target_fpr))
        return self

    def _check(self, X: ArrayLike) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise RuntimeError("SubspaceAnomalyDetector is not fitted: call fit first")
        A = _finite_matrix(X, "X")
        if A.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {A.shape[1]} columns but the detector was fitted with "
                f"n_features={self.n_features_in_}"
            )
        return A

    def _score(self, Z: np.ndarray) -> np.ndarray:
        P = Z @ self.components_.T
        inside = np.square(P)
        mahalanobis = inside @ (1.0 / self.explained_variance_)
        residual = np.einsum("ij,ij->i", Z, Z) - inside.sum(axis=1)
        return mahalanobis + np.maximum(residual, 0.0) / self.residual_variance_

    def score(self, X: ArrayLike) -> np.ndarray:
        """Anomaly score of each row (float64, higher is more anomalous).

        Parameters
        ----------
        X : array_like, shape (n, n_features)
        """
        A = self._check(X)
        return self._score((A - self.mean_) / self.scale_)

    def reconstruction_error(self, X: ArrayLike) -> np.ndarray:
        """Squared distance of each standardised row from the principal subspace.

        The residual energy inside :meth:`score`: ``score = mahalanobis +
        reconstruction_error / residual_variance_``. It leaves out the within-subspace
        Mahalanobis term, so it reacts to rows whose features no longer go together (they
        leave the subspace) with less noise than the full score. The live multivariate
        drift verdict tests the stored full scores instead, which cost nothing at scrape
        time (``monitoring/multivariate.py``); ``bench/multivariate_power.py`` compares
        both.

        Parameters
        ----------
        X : array_like, shape (n, n_features)

        Returns
        -------
        ndarray of float64, shape (n,)
            Non-negative, in squared standardised units.
        """
        A = self._check(X)
        Z = (A - self.mean_) / self.scale_
        inside = np.square(Z @ self.components_.T).sum(axis=1)
        return np.maximum(np.einsum("ij,ij->i", Z, Z) - inside, 0.0)

    def is_anomalous(self, scores: ArrayLike) -> np.ndarray:
        """Boolean mask ``scores > threshold_``."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError("SubspaceAnomalyDetector is not fitted: call fit first")
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    def to_dict(self) -> dict[str, object]:
        """JSON-ready state (floats round-trip exactly through JSON)."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError("SubspaceAnomalyDetector is not fitted: call fit first")
        return {
            "variance_kept": self.variance_kept,
            "max_components": self.max_components,
            "target_fpr": self.target_fpr,
            "n_features_in": self.n_features_in_,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "components": self.components_.tolist(),
            "explained_variance": self.explained_variance_.tolist(),
            "residual_variance": self.residual_variance_,
            "threshold": self.threshold_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubspaceAnomalyDetector:
        """Inverse of :meth:`to_dict`; checks that the shapes agree."""
        det = cls(
            variance_kept=float(d["variance_kept"]),
            max_components=int(d["max_components"]),
            target_fpr=float(d["target_fpr"]),
        )
        n_features = int(d["n_features_in"])
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        variance = np.asarray(d["explained_variance"], dtype=np.float64).reshape(-1)
        components = np.asarray(d["components"], dtype=np.float64).reshape(
            variance.size, n_features
        )
        if mean.shape != (n_features,) or scale.shape != (n_features,):
            raise ValueError(f"mean and scale must have n_features={n_features} entries")
        residual = float(d["residual_variance"])
        threshold = float(d["threshold"])
        if (
            not np.all(np.isfinite(components))
            or not np.all(np.isfinite(mean))
            or not np.all(scale > 0)
            or not np.all(variance > 0)
            or not residual > 0
            or not math.isfinite(threshold)
        ):
            raise ValueError("anomaly detector state holds non-finite or non-positive values")
        det.mean_ = mean
        det.scale_ = scale
        det.components_ = components
        det.explained_variance_ = variance
        det.residual_variance_ = residual
        det.threshold_ = threshold
        det.n_features_in_ = n_features
        return det
