"""The reference profile: what "normal" looks like for one model version.

Built once at training time from the training inputs and the model's outputs on held-out
rows, stored next to the model as JSON, and read by every serving worker. It holds what
the monitors compare a window against: per-feature bins and counts (PSI, JS), a bounded
row sample (KS), the fitted anomaly detector, the held-out distributions of predicted
classes and confidences (prediction drift), and the anomaly scores of held-out rows
(multivariate drift, ``monitoring/multivariate.py``).

Inputs are taken in float32, the model's input type: the bins, the sample and the drift
detector's cast of each window then agree on ties whatever precision the rows travelled
in.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from monitoring.anomaly import SubspaceAnomalyDetector
from monitoring.binned import bin_counts, bin_counts_matrix, quantile_edges

SCHEMA_VERSION = 1

REFERENCE_SCORES_SIZE = 2000
"""Most held-out anomaly scores a profile keeps for the multivariate drift test."""


def _readonly(a: ArrayLike, dtype: type[np.generic]) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


def _encode_array(a: np.ndarray) -> dict[str, object]:
    data = np.ascontiguousarray(a, dtype="<f4")
    return {
        "dtype": "float32",
        "shape": list(data.shape),
        "base64": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def _decode_array(d: Mapping[str, Any]) -> np.ndarray:
    if d.get("dtype") != "float32":
        raise ValueError(f"sample dtype must be float32, got {d.get('dtype')!r}")
    shape = tuple(int(v) for v in d["shape"])
    raw = base64.b64decode(str(d["base64"]))
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Reference distributions of one model version (arrays are read-only copies).

    Attributes
    ----------
    schema : int
        Layout version of the stored form, ``SCHEMA_VERSION``.
    n_features, n_classes : int
        Input width and number of classes.
    feature_names : tuple of str
    n_reference : int
        Rows the bins were built from.
    edges, reference_counts : tuple of ndarray
        Per feature: cut points (:func:`monitoring.binned.quantile_edges`) and the reference
        counts in those bins (each sums to ``n_reference``).
    sample : ndarray of float32, shape (m, n_features)
        Seeded random sample of the reference rows for KS tests.
    anomaly : SubspaceAnomalyDetector
        Fitted and calibrated.
    class_share : tuple of float
        Predicted-class shares on held-out rows.
    confidence_edges, confidence_counts : ndarray
        Binned largest-probability distribution on held-out rows.
    reference_scores : ndarray of float64, shape (r,), or None
        ``anomaly.score`` of up to ``REFERENCE_SCORES_SIZE`` held-out rows the detector
        was not fitted on (the calibration rows that set its threshold), the reference of
        :class:`monitoring.multivariate.MultivariateDriftDetector`: a window's stored
        anomaly scores are tested against them. ``None`` when the profile was built
        without held-out rows, or before this field existed (its JSON then has no
        ``reference_scores`` key).
    """

    schema: int
    n_features: int
    n_classes: int
    feature_names: tuple[str, ...]
    n_reference: int
    edges: tuple[np.ndarray, ...]
    reference_counts: tuple[np.ndarray, ...]
    sample: np.ndarray
    anomaly: SubspaceAnomalyDetector
    class_share: tuple[float, ...]
    confidence_edges: np.ndarray
    confidence_counts: np.ndarray
    reference_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.schema != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported profile schema {self.schema!r}; this version reads schema "
                f"{SCHEMA_VERSION}"
            )
        d = self.n_features
        if len(self.feature_names) != d or len(self.edges) != d or len(self.reference_counts) != d:
            raise ValueError(
                f"feature_names, edges and reference_counts need n_features={d} entries"
            )
        if len(self.class_share) != self.n_classes:
            raise ValueError(f"class_share needs n_classes={self.n_classes} entries")
        set_ = object.__setattr__
        set_(self, "edges", tuple(_readonly(e, np.float64) for e in self.edges))
        set_(self, "reference_counts", tuple(_readonly(c, np.int64) for c in self.reference_counts))
        for j, (e, c) in enumerate(zip(self.edges, self.reference_counts, strict=True)):
            if c.shape != (e.size + 1,):
                raise ValueError(f"reference_counts[{j}] must have len(edges[{j}]) + 1 entries")
            if c.min() < 0 or c.sum() != self.n_reference:
                raise ValueError(f"reference_counts[{j}] must be counts summing to n_reference")
        set_(self, "sample", _readonly(self.sample, np.float32))
        if self.sample.ndim != 2 or self.sample.shape[1] != d:
            raise ValueError(f"sample must have shape (rows, n_features={d})")
        set_(self, "confidence_edges", _readonly(self.confidence_edges, np.float64))
        set_(self, "confidence_counts", _readonly(self.confidence_counts, np.int64))
        if self.confidence_counts.shape != (self.confidence_edges.size + 1,):
            raise ValueError("confidence_counts must have len(confidence_edges) + 1 entries")
        if self.anomaly.n_features_in_ != d:
            raise ValueError(
                f"anomaly detector was fitted on {self.anomaly.n_features_in_} "
                f"features, not n_features={d}"
            )
        if self.reference_scores is not None:
            ref_scores = _readonly(self.reference_scores, np.float64)
            if ref_scores.ndim != 1 or ref_scores.size == 0:
                raise ValueError("reference_scores must be a non-empty one-dimensional array")
            if not np.all(np.isfinite(ref_scores)) or ref_scores.min() < 0.0:
                raise ValueError("reference_scores must be finite and non-negative")
            set_(self, "reference_scores", ref_scores)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary; the sample is base64 of little-endian float32.

        ``reference_scores`` is a list of floats (exact through JSON), left out when None so
        such a profile's JSON is what earlier versions wrote.
        """
        out: dict[str, object] = {
            "schema": self.schema,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "feature_names": list(self.feature_names),
            "n_reference": self.n_reference,
            "edges": [e.tolist() for e in self.edges],
            "reference_counts": [c.tolist() for c in self.reference_counts],
            "sample": _encode_array(self.sample),
            "anomaly": self.anomaly.to_dict(),
            "class_share": list(self.class_share),
            "confidence_edges": self.confidence_edges.tolist(),
            "confidence_counts": self.confidence_counts.tolist(),
        }
        if self.reference_scores is not None:
            out["reference_scores"] = self.reference_scores.tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        """Inverse of :meth:`to_dict`; an unknown ``schema`` is a ``ValueError``."""
        schema = d.get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported profile schema {schema!r}; this version reads schema {SCHEMA_VERSION}"
            )
        return cls(
            schema=int(schema),
            n_features=int(d["n_features"]),
            n_classes=int(d["n_classes"]),
            feature_names=tuple(str(v) for v in d["feature_names"]),
            n_reference=int(d["n_reference"]),
            edges=tuple(np.asarray(e, dtype=np.float64) for e in d["edges"]),
            reference_counts=tuple(np.asarray(c, dtype=np.int64) for c in d["reference_counts"]),
            sample=_decode_array(d["sample"]),
            anomaly=SubspaceAnomalyDetector.from_dict(d["anomaly"]),
            class_share=tuple(float(v) for v in d["class_share"]),
            confidence_edges=np.asarray(d["confidence_edges"], dtype=np.float64),
            confidence_counts=np.asarray(d["confidence_counts"], dtype=np.int64),
            reference_scores=(
                None
                if d.get("reference_scores") is None
                else np.asarray(d["reference_scores"], dtype=np.float64)
            ),
        )

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, s: str) -> ReferenceProfile:
        """Inverse of :meth:`to_json`."""
        d = json.loads(s)
        if not isinstance(d, dict):
            raise ValueError("profile JSON must be an object")
        return cls.from_dict(d)


def _finite_2d(a: ArrayLike, name: str, dtype: type[np.generic]) -> np.ndarray:
    arr = np.asarray(a, dtype=dtype)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty two-dimensional array, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def build_profile(
    X_reference: ArrayLike,
    heldout_probabilities: ArrayLike,
    *,
    X_calibration: ArrayLike | None = None,
    feature_names: Sequence[str] | None = None,
    n_bins: int = 10,
    sample_size: int = 1000,
    target_fpr: float = 0.01,
    seed: int = 0,
    reference_scores_size: int = REFERENCE_SCORES_SIZE,
) -> ReferenceProfile:
    """Build the reference profile of a model version.

    Parameters
    ----------
    X_reference : array_like, shape (n, d)
        Training inputs in raw units (cast to float32); at least 2 rows.
    heldout_probabilities : array_like, shape (m, n_classes)
        Model probabilities on held-out rows: predicted-class shares and the binned
        confidence distribution come from them.
    X_calibration : array_like, shape (k, d), optional
        Held-out inputs that calibrate the anomaly threshold (else the training rows).
        Their anomaly scores become ``reference_scores`` (without them it is None: the
        training rows' scores are biased low).
    feature_names : sequence of str, optional
        Default ``f0 .. f{d-1}``.
    n_bins : int
        Bins per feature before merging repeated cut points.
    sample_size : int
        Most reference rows kept for KS tests (a seeded sample without replacement).
    target_fpr : float
        Anomaly detector's target false-alarm rate.
    seed : int
        Seed of the sample and of the subsample of reference scores.
    reference_scores_size : int
        Most held-out anomaly scores kept (a seeded subsample without replacement when
        ``X_calibration`` has more rows; the threshold is set from every row).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(3000, 4))
    >>> prob = rng.dirichlet(np.ones(3), size=500)
    >>> profile = build_profile(X, prob, sample_size=200, seed=0)
    >>> profile.sample.shape, [int(c.sum()) for c in profile.reference_counts]
    ((200, 4), [3000, 3000, 3000, 3000])
    """
    if sample_size < 1:
        raise ValueError(f"sample_size must be >= 1, got {sample_size}")
    if reference_scores_size < 1:
        raise ValueError(f"reference_scores_size must be >= 1, got {reference_scores_size}")
    X = _finite_2d(X_reference, "X_reference", np.float32)
    n, d = X.shape
    if n < 2:
        raise ValueError(f"X_reference needs at least 2 rows, got {n}")
    prob = _finite_2d(heldout_probabilities, "heldout_probabilities", np.float64)
    cal = None
    if X_calibration is not None:
        cal = _finite_2d(X_calibration, "X_calibration", np.float32)
        if cal.shape[1] != d:
            raise ValueError(f"X_calibration has {cal.shape[1]} columns but X_reference has {d}")
    if feature_names is None:
        names = tuple(f"f{j}" for j in range(d))
    else:
        names = tuple(str(v) for v in feature_names)
        if len(names) != d:
            raise ValueError(f"feature_names has {len(names)} entries for {d} features")
    edges = tuple(quantile_edges(X[:, j], n_bins) for j in range(d))
    counts = tuple(bin_counts_matrix(X, edges))
    if n > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
        sample = X[rows]
    else:
        sample = X
    detector = SubspaceAnomalyDetector(target_fpr=target_fpr).fit(X, cal)
    ref_scores = None
    if cal is not None:
        if cal.shape[0] > reference_scores_size:
            rng = np.random.default_rng([seed, 1])
            cal = cal[np.sort(rng.choice(cal.shape[0], reference_scores_size, replace=False))]
        ref_scores = detector.score(cal)
    n_classes = prob.shape[1]
    predicted = prob.argmax(axis=1)
    share = np.bincount(predicted, minlength=n_classes) / prob.shape[0]
    confidence = prob.max(axis=1)
    confidence_edges = quantile_edges(confidence, n_bins)
    return ReferenceProfile(
        schema=SCHEMA_VERSION,
        n_features=d,
        n_classes=n_classes,
        feature_names=names,
        n_reference=n,
        edges=edges,
        reference_counts=counts,
        sample=sample,
        anomaly=detector,
        class_share=tuple(float(v) for v in share),
        confidence_edges=confidence_edges,
        confidence_counts=bin_counts(confidence, confidence_edges),
        reference_scores=ref_scores,
    )
