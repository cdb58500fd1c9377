"""The synthetic traffic scenarios of ``argus simulate`` (``argus/simulate.py``).

Rows come from scikit-learn's bundled 8x8 digits (no download), so every row has a true
label (but the noise rows of ``anomaly``). A scenario decides what the rows look like:

``clean``
    digits drawn uniformly, as in training.
``drift``
    the same draws with ``drift_shift`` (default +4) added to ``drift_features`` (default:
    16 informative but mostly dark pixels), clipped to 0..16; every other feature is
    untouched.
``anomaly``
    the same draws with a share ``anomaly_fraction`` of the rows replaced by uniform noise
    on 0..16: rows that are not digits at all, so they carry no label.
``prior-shift``
    digits of a few classes only (``prior_classes``); each row is still an untouched digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from errors import ArgusError

SCENARIOS = ("clean", "drift", "anomaly", "prior-shift")
PIXEL_MAX = 16.0


@dataclass(frozen=True)
class DigitsPool:
    """The rows traffic is drawn from: digits features (0..16), targets, feature names."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]


@lru_cache(maxsize=1)
def digits_pool() -> DigitsPool:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn ships with the train extra
        raise ArgusError(
            "argus simulate draws rows from scikit-learn's digits: "
            "pip install 'argus-serving[train]'"
        ) from None
    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64)
    X.setflags(write=False)
    y = np.asarray(bunch.target, dtype=np.int64)
    y.setflags(write=False)
    return DigitsPool(X, y, tuple(str(n) for n in bunch.feature_names))


def default_drift_features(pool: DigitsPool, k: int = 16) -> tuple[int, ...]:
    """``k`` informative pixels (variance above 1) that are mostly dark: the lowest means.

    Ink appearing where digits rarely have any is the drift a changed scanner or a new
    preprocessing step produces; on the default model +4 on these pixels costs several
    points of accuracy, where the same shift on the busiest pixels barely shows.
    """
    informative = np.flatnonzero(pool.X.var(axis=0) > 1.0)
    order = informative[np.argsort(pool.X.mean(axis=0)[informative], kind="stable")]
    if len(order) < k:
        raise ValueError(f"only {len(order)} informative features, asked for {k}")
    return tuple(sorted(int(i) for i in order[:k]))


@dataclass(frozen=True)
class Scenario:
    """What the rows of one scenario look like; ``rows(n, rng)`` draws a batch.

    Examples
    --------
    >>> s = Scenario.build("drift")
    >>> X, y = s.rows(4, np.random.default_rng(0))
    >>> X.shape, y.shape
    ((4, 64), (4,))
    """

    name: str
    pool: DigitsPool
    drift_features: tuple[int, ...] = ()
    drift_shift: float = 4.0
    anomaly_fraction: float = 0.3
    prior_classes: tuple[int, ...] = (0, 1, 7)

    @classmethod
    def build(
        cls,
        name: str,
        *,
        pool: DigitsPool | None = None,
        drift_features: Sequence[int] | None = None,
        drift_shift: float = 4.0,
        anomaly_fraction: float = 0.3,
        prior_classes: Sequence[int] = (0, 1, 7),
    ) -> Scenario:
        if name not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {name!r}")
        pool = pool or digits_pool()
        d = pool.X.shape[1]
        feats = (
            default_drift_features(pool)
            if drift_features is None
            else tuple(sorted({int(i) for i in drift_features}))
        )
        if not feats or not all(0 <= i < d for i in feats):
            raise ValueError(f"drift_features must be non-empty indices in [0, {d}), got {feats}")
        if not np.isfinite(drift_shift) or drift_shift == 0:
            raise ValueError(f"drift_shift must be finite and non-zero, got {drift_shift}")
        if not 0.0 < anomaly_fraction <= 1.0:
            raise ValueError(f"anomaly_fraction must be in (0, 1], got {anomaly_fraction}")
        classes = tuple(sorted({int(c) for c in prior_classes}))
        known = set(np.unique(pool.y).tolist())
        if not classes or not set(classes) <= known:
            raise ValueError(f"prior_classes must be non-empty classes of {sorted(known)}")
        return cls(name, pool, feats, float(drift_shift), float(anomaly_fraction), classes)

    @property
    def n_features(self) -> int:
        return int(self.pool.X.shape[1])

    def rows(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows and their true labels (``-1`` for a row that is not a digit)."""
        X, y = self.pool.X, self.pool.y
        if self.name == "prior-shift":
            candidates = np.flatnonzero(np.isin(y, self.prior_classes))
            idx = candidates[rng.integers(0, len(candidates), n)]
        else:
            idx = rng.integers(0, len(X), n)
        rows = X[idx].copy()
        labels = y[idx].copy()
        if self.name == "drift":
            cols = list(self.drift_features)
            rows[:, cols] = np.clip(rows[:, cols] + self.drift_shift, 0.0, PIXEL_MAX)
        elif self.name == "anomaly":
            noisy = rng.random(n) < self.anomaly_fraction
            rows[noisy] = rng.uniform(0.0, PIXEL_MAX, size=(int(noisy.sum()), X.shape[1]))
            labels[noisy] = -1
        return rows, labels
