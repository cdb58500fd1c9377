"""Is a candidate version worse than the live one? Figures on the same rows, and a verdict.

A **shadow** predicts rows the live version answered, so both versions' predictions on
each row can be paired: agreement is the share of rows where both predicted the same
label, and on the rows that got a label the two accuracies rest on exactly the same rows.
The verdict uses the exact McNemar test: only the discordant pairs speak, ``b`` rows the
live version got right and the candidate wrong, ``c`` the reverse. If the two were
equally accurate, ``b`` would be Binomial(b + c, 1/2); the one-sided p-value is
``P(B >= b)``, the same as ``scipy.stats.binomtest(b, b + c, 0.5, alternative="greater")``.

A **canary** answers other rows than the live version, so its accuracy is compared with
the live one's as two independent proportions: the one-sided pooled two-proportion z-test
(the square of its statistic is the uncorrected chi-square of the 2x2 table).

Either way the candidate is judged **worse** only when the test rejects at ``alpha`` AND
its accuracy is lower than live's by more than ``margin`` (default 0.01): a difference
that is significant but too small to matter raises no alarm, as the effect-size minimums
of the drift verdicts do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from monitoring.binned import psi
from monitoring.tails import binomial_half_sf, normal_cdf


@dataclass(frozen=True)
class Verdict:
    """The worse-than-live verdict: the test, its p-value and the rows behind it."""

    test: str  # "mcnemar" or "two-proportion"
    p_value: float | None
    accuracy_delta: float | None  # candidate minus live
    rows: int  # labelled pairs (shadow) or labelled rows of both (canary)
    discordant: int | None  # McNemar's b + c
    worse: bool
    margin: float
    alpha: float

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PairedFigures:
    """Live against a shadow on the same rows (``rows``: shadowed rows compared)."""

    rows: int
    agreement: float | None
    labelled: int
    live_accuracy: float | None
    candidate_accuracy: float | None
    class_psi: float | None  # predicted-class distributions, live as the reference
    verdict: Verdict

    def to_dict(self) -> dict[str, object]:
        return {**{k: v for k, v in self.__dict__.items() if k != "verdict"},
                "verdict": self.verdict.to_dict()}  # fmt: skip


def _check(margin: float, alpha: float) -> None:
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def mcnemar_worse(
    b: int, c: int, rows: int, *, margin: float = 0.01, alpha: float = 0.05
) -> Verdict:
    """Exact one-sided McNemar verdict from the discordant pair counts.

    ``b``: labelled rows live got right and the candidate wrong; ``c``: the reverse;
    ``rows``: all labelled pairs (the accuracy delta is ``(c - b) / rows``).

    Examples
    --------
    >>> v = mcnemar_worse(12, 2, 400)
    >>> round(v.p_value, 4), v.accuracy_delta, v.worse
    (0.0065, -0.025, True)
    """
    _check(margin, alpha)
    if min(b, c) < 0 or b + c > rows:
        raise ValueError(f"need 0 <= b, c and b + c <= rows, got b={b}, c={c}, rows={rows}")
    if rows == 0:
        return Verdict("mcnemar", None, None, 0, 0, False, margin, alpha)
    m = b + c
    # P(B >= b) for B ~ Binomial(m, 1/2); 1.0 when there is no discordant pair
    p_value = binomial_half_sf(b, m) if m else 1.0
    delta = (c - b) / rows
    worse = p_value < alpha and delta < -margin
    return Verdict("mcnemar", p_value, delta, rows, m, worse, margin, alpha)


def two_proportion_worse(
    live_correct: int,
    live_rows: int,
    candidate_correct: int,
    candidate_rows: int,
    *,
    margin: float = 0.01,
    alpha: float = 0.05,
) -> Verdict:
    """One-sided pooled two-proportion z-test that the candidate is less accurate.

    Examples
    --------
    >>> v = two_proportion_worse(980, 1000, 180, 200)
    >>> round(v.accuracy_delta, 3), v.p_value < 0.001, v.worse
    (-0.08, True, True)
    """
    _check(margin, alpha)
    for name, k, n in (("live", live_correct, live_rows), ("candidate", candidate_correct,
                                                           candidate_rows)):  # fmt: skip
        if not 0 <= k <= n:
            raise ValueError(f"{name}: need 0 <= correct <= rows, got {k} of {n}")
    rows = live_rows + candidate_rows
    if live_rows == 0 or candidate_rows == 0:
        return Verdict("two-proportion", None, None, rows, None, False, margin, alpha)
    p1, p2 = live_correct / live_rows, candidate_correct / candidate_rows
    pooled = (live_correct + candidate_correct) / rows
    se = math.sqrt(pooled * (1 - pooled) * (1 / live_rows + 1 / candidate_rows))
    delta = p2 - p1
    if se == 0:  # both all right or all wrong: no evidence either way
        p_value = 1.0 if delta >= 0 else 0.0
    else:
        p_value = normal_cdf(delta / se)
    worse = p_value < alpha and delta < -margin
    return Verdict("two-proportion", p_value, delta, rows, None, worse, margin, alpha)


def paired_figures(
    live_labels: ArrayLike,
    candidate_labels: ArrayLike,
    true_labels: ArrayLike,
    *,
    n_classes: int,
    margin: float = 0.01,
    alpha: float = 0.05,
) -> PairedFigures:
    """Agreement, same-row accuracies and the McNemar verdict of a shadow.

    Row ``i`` is one row both versions predicted; ``true_labels[i]`` is its label, or a
    negative number while it has none.

    Examples
    --------
    >>> f = paired_figures([0, 1, 1, 2], [0, 1, 2, 2], [0, 1, 1, -1], n_classes=3)
    >>> f.agreement, f.labelled, f.live_accuracy, f.candidate_accuracy
    (0.75, 3, 1.0, 0.6666666666666666)
    """
    live = np.asarray(live_labels, dtype=np.int64)
    cand = np.asarray(candidate_labels, dtype=np.int64)
    true = np.asarray(true_labels, dtype=np.int64)
    if not live.shape == cand.shape == true.shape or live.ndim != 1:
        raise ValueError(
            "live_labels, candidate_labels and true_labels must be 1-d and of one length, "
            f"got {live.shape}, {cand.shape}, {true.shape}"
        )
    n = len(live)
    known = true >= 0
    live_right, cand_right = live[known] == true[known], cand[known] == true[known]
    b = int(np.sum(live_right & ~cand_right))
    c = int(np.sum(~live_right & cand_right))
    labelled = int(known.sum())
    class_psi = None
    if n:
        counts = [np.bincount(x, minlength=n_classes)[:n_classes] for x in (live, cand)]
        class_psi = psi(counts[0], counts[1])
    return PairedFigures(
        rows=n,
        agreement=float(np.mean(live == cand)) if n else None,
        labelled=labelled,
        live_accuracy=float(np.mean(live_right)) if labelled else None,
        candidate_accuracy=float(np.mean(cand_right)) if labelled else None,
        class_psi=class_psi,
        verdict=mcnemar_worse(b, c, labelled, margin=margin, alpha=alpha),
    )
