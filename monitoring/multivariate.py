"""Multivariate input drift: does a window leave the reference's principal subspace?

Per-feature drift (``monitoring/drift.py``) tests each column's marginal, so a shift that
keeps every marginal but changes how the features go together (columns shuffled across
rows, records spliced from two halves, two correlated sensors swapped) is invisible to it.
Such rows leave the subspace the reference rows live in, and the anomaly model already
measures that. This module asks, for one window, whether its rows' stored anomaly scores
are stochastically larger than those of held-out reference rows (the profile's
``reference_scores``). The anomaly score is what :meth:`SubspaceAnomalyDetector.score`
gives every row at predict time: its Mahalanobis distance within the principal subspace
plus its residual energy (distance from the subspace) over the mean discarded variance.

Why the stored score: it is free at scrape time. Every served row's score is already in
the prediction log, so the verdict is a rank test on numbers at hand, whereas testing the
reconstruction error alone (:meth:`SubspaceAnomalyDetector.reconstruction_error`, the
residual term by itself) means projecting the whole input window at every scrape: 8-13 ms
for 1000 rows of 784 features, 15-25% of the ~55 ms of the window figures
(``bench/window_figures.py``).

What that costs in power, measured on scikit-learn's digits (``bench/multivariate_power.py``,
200 windows per cell of 200/500/1000 rows, reconstruction error vs score): equal on shifts
of every row, both detect all windows with 0 false alarms on clean ones (mean effect,
Cliff's delta below, 0.65 vs 0.54 for an 8-column shuffle, 0.61 vs 0.53 for spliced
halves, 0.32 vs 0.24 for a swap of two columns). The reconstruction error alone separates
better when only part of the rows shift, because the score adds the within-subspace
Mahalanobis term (38 components on digits), noise such shifts barely move: with a
16-column block shuffled in a fifth of the rows it detected 67/73/84% of windows against
51/49/57% (effect 0.12 vs 0.10), and with a fifth of the rows spliced 27/18/8% against
20/8/2% (effect 0.08 vs 0.06; weak for both).

Why the verdict controls false alarms
-------------------------------------
The test is the one-sided Mann-Whitney U test of the window against the reference, in
its normal approximation with tie and continuity corrections (``scipy.stats.mannwhitneyu
(window, reference, alternative="greater", method="asymptotic")``). When the window rows
and the reference rows are independent draws from one distribution, every ordering of the
pooled scores is equally likely, so ``P(p_value < alpha) <= alpha`` up to the normal
approximation (already close at tens of rows). This needs reference rows the detector was
NOT fitted on: fitted rows lie closer to their own subspace and their scores are smaller
(against the digits training rows, the 719 clean held-out rows give p = 0.002, effect
0.08); ``build_profile`` therefore stores the scores of its held-out calibration rows (the
rows that set the anomaly threshold), and none without them.

One reference serves every window, so the error rate conditional on that reference is not
exactly ``alpha``: as windows grow the p-value measures the reference's own sampling error,
and a test alone would fire on every large window for some references. The effect size
bounds this. It is Cliff's delta, ``2 * U / (n_window * n_reference) - 1``, the
probability that a window score exceeds a reference score minus the reverse: 0 without
drift, 1 when every window score is larger. A reference of ``m`` rows moves it by about
``1 / sqrt(3 m)`` (0.03 for the 359 held-out digits, 0.013 for 2000 rows), so the default
``min_effect = 0.1`` sits more than three such deviations away: a window is flagged only
when ``p_value < alpha`` AND ``effect >= min_effect``, which keeps large clean windows quiet
whatever the reference drew, as the PSI minimum does per feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from monitoring.tails import normal_cdf


def _scores(a: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty one-dimensional array, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


@dataclass(frozen=True)
class MultivariateDriftReport:
    """Multivariate drift verdict of one window.

    Attributes
    ----------
    statistic : float
        Mann-Whitney U of the window against the reference (ties count one half).
    p_value : float
        One-sided p-value (window larger), normal approximation with tie and continuity
        corrections.
    effect : float
        Cliff's delta ``2 * statistic / (window_rows * reference_rows) - 1``, in [-1, 1].
    window_rows, reference_rows : int
    detected : bool
        ``p_value < alpha and effect >= min_effect``.
    alpha, min_effect : float
        The detector's hyperparameters.
    """

    statistic: float
    p_value: float
    effect: float
    window_rows: int
    reference_rows: int
    detected: bool
    alpha: float
    min_effect: float

    def to_dict(self) -> dict[str, object]:
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "effect": self.effect,
            "window_rows": self.window_rows,
            "reference_rows": self.reference_rows,
            "detected": self.detected,
            "alpha": self.alpha,
            "min_effect": self.min_effect,
        }


class MultivariateDriftDetector:
    """One-sided Mann-Whitney test of window scores against held-out reference scores.

    Parameters
    ----------
    alpha : float
        Significance level, in (0, 1): the false-alarm rate of the test on windows drawn
        from the reference distribution.
    min_effect : float
        Smallest Cliff's delta that counts as drift, in [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.chisquare(5, 2000)
    >>> det = MultivariateDriftDetector()
    >>> det.evaluate(reference, rng.chisquare(5, 500)).detected
    False
    >>> report = det.evaluate(reference, rng.chisquare(7, 500))
    >>> report.detected, round(report.effect, 2)
    (True, 0.33)
    """

    def __init__(self, alpha: float = 0.05, min_effect: float = 0.1) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not 0.0 <= min_effect < 1.0:
            raise ValueError(f"min_effect must be in [0, 1), got {min_effect}")
        self.alpha = float(alpha)
        self.min_effect = float(min_effect)

    def evaluate(
        self, reference_scores: ArrayLike, window_scores: ArrayLike
    ) -> MultivariateDriftReport:
        """Test whether ``window_scores`` are stochastically larger than the reference.

        Parameters
        ----------
        reference_scores : array_like, shape (m,)
            Scores of held-out rows the scoring model was not fitted on (the profile's
            ``reference_scores``).
        window_scores : array_like, shape (n,)
            Scores of the window's rows, same scoring (for the profile's reference:
            ``profile.anomaly.score(rows)``, as stored in the prediction log).

        Returns
        -------
        MultivariateDriftReport
        """
        ref = np.sort(_scores(reference_scores, "reference_scores"))
        win = _scores(window_scores, "window_scores")
        n1, n2 = win.size, ref.size
        below = np.searchsorted(ref, win, side="left")
        not_above = np.searchsorted(ref, win, side="right")
        u = float(below.sum() + not_above.sum()) / 2.0
        pooled = np.sort(np.concatenate([ref, win]))
        starts = np.flatnonzero(np.r_[True, pooled[1:] != pooled[:-1], True])
        ties = np.diff(starts).astype(np.float64)
        n = n1 + n2
        tie_term = float(np.sum(ties**3 - ties)) / (n * (n - 1)) if n > 1 else 0.0
        variance = n1 * n2 / 12.0 * ((n + 1) - tie_term)
        if variance > 0.0:
            z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
            p_value = min(1.0, max(0.0, normal_cdf(-z)))
        else:  # every score equal: no evidence either way
            p_value = 1.0
        effect = 2.0 * u / (n1 * n2) - 1.0
        return MultivariateDriftReport(
            statistic=u,
            p_value=p_value,
            effect=effect,
            window_rows=int(n1),
            reference_rows=int(n2),
            detected=bool(p_value < self.alpha and effect >= self.min_effect),
            alpha=self.alpha,
            min_effect=self.min_effect,
        )
