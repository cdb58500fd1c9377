"""Candidate against live: every figure against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, chi2_contingency
from sklearn.metrics import accuracy_score

from monitoring.compare import mcnemar_worse, paired_figures, two_proportion_worse


def test_paired_figures_equal_batch_computations() -> None:
    rng = np.random.default_rng(4)
    n = 600
    true = rng.integers(0, 10, size=n)
    live = np.where(rng.random(n) < 0.95, true, rng.integers(0, 10, size=n))
    cand = np.where(rng.random(n) < 0.85, true, rng.integers(0, 10, size=n))
    labelled = np.where(rng.random(n) < 0.6, true, -1)
    f = paired_figures(live, cand, labelled, n_classes=10)
    known = labelled >= 0
    assert f.rows == n and f.labelled == int(known.sum())
    assert f.agreement == pytest.approx(np.mean(live == cand))
    assert f.live_accuracy == pytest.approx(accuracy_score(true[known], live[known]))
    assert f.candidate_accuracy == pytest.approx(accuracy_score(true[known], cand[known]))
    b = int(np.sum((live[known] == true[known]) & (cand[known] != true[known])))
    c = int(np.sum((live[known] != true[known]) & (cand[known] == true[known])))
    v = f.verdict
    assert v.discordant == b + c and v.rows == int(known.sum())
    assert v.p_value == pytest.approx(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    assert v.accuracy_delta == pytest.approx(f.candidate_accuracy - f.live_accuracy)
    assert v.worse  # about 10 points worse on ~360 labelled rows
    p = np.bincount(live, minlength=10) / n
    q = np.bincount(cand, minlength=10) / n
    eps = 1e-4
    ps, qs = (p + eps) / (1 + 10 * eps), (q + eps) / (1 + 10 * eps)
    assert f.class_psi == pytest.approx(float(np.sum((qs - ps) * np.log(qs / ps))))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (0, 3), (12, 2), (40, 31), (7, 7)])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(b: int, c: int) -> None:
    v = mcnemar_worse(b, c, 500)
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert v.p_value == pytest.approx(expected, rel=1e-12)
    assert v.accuracy_delta == pytest.approx((c - b) / 500)


def test_the_verdict_needs_both_significance_and_the_margin() -> None:
    assert mcnemar_worse(12, 2, 400).worse  # p 0.0065, 2.5 points worse
    assert not mcnemar_worse(60, 40, 100_000).worse  # significant, but 0.02 points
    assert not mcnemar_worse(3, 0, 100).worse  # 3 points, but p = 0.125
    assert not mcnemar_worse(2, 12, 400).worse  # better
    assert mcnemar_worse(0, 0, 0).p_value is None
    with pytest.raises(ValueError, match="margin"):
        mcnemar_worse(1, 1, 10, margin=-0.1)
    with pytest.raises(ValueError, match="rows"):
        mcnemar_worse(8, 8, 10)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2"), [(980, 1000, 180, 200), (450, 500, 460, 500), (90, 100, 85, 100)]
)
def test_two_proportion_test_against_the_chi_square_of_the_table(
    k1: int, n1: int, k2: int, n2: int
) -> None:
    v = two_proportion_worse(k1, n1, k2, n2)
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    two_sided = chi2_contingency(table, correction=False).pvalue
    delta = k2 / n2 - k1 / n1
    expected = two_sided / 2 if delta < 0 else 1 - two_sided / 2
    assert v.p_value == pytest.approx(expected, rel=1e-9)
    assert v.accuracy_delta == pytest.approx(delta)
    assert v.worse == (expected < 0.05 and delta < -0.01)
    assert two_proportion_worse(0, 0, 5, 5).p_value is None
