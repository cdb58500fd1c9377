"""monitoring.multivariate against scipy's Mann-Whitney U; false alarms and power on digits.

The detector is fitted as ``build_profile`` does (train rows, threshold and reference
scores from val); clean and shifted windows are drawn, seeded and with replacement, from
test, and tested as the live verdict does: their anomaly scores against the profile's
``reference_scores``. The shifts keep every column's marginal within the window, so the
per-feature verdict (``InputDriftDetector``) stays quiet while the multivariate one fires.
"""

from __future__ import annotations

import doctest
import json
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from bench.multivariate_power import Shift, shuffle_columns, splice_halves, swap
from monitoring import multivariate
from monitoring.drift import InputDriftDetector
from monitoring.multivariate import MultivariateDriftDetector, MultivariateDriftReport
from monitoring.profile import ReferenceProfile, build_profile

SIZES = (200, 500, 1000)


@pytest.fixture(scope="module")
def profile(digits: dict[str, np.ndarray]) -> ReferenceProfile:
    prob = np.full((len(digits["val"]), 10), 0.1)  # prediction drift is not under test
    return build_profile(digits["train"], prob, X_calibration=digits["val"], seed=0)


# --------------------------------------------------------------------------- the test itself


@pytest.mark.parametrize(
    ("case", "n_window", "n_reference", "shift"),
    [("continuous", 1000, 2000, 0.3), ("ties", 300, 700, 0.0), ("small", 9, 12, 1.0),
     ("lower", 400, 500, -0.5)],
)  # fmt: skip
def test_statistic_and_pvalue_match_scipy(
    case: str, n_window: int, n_reference: int, shift: float
) -> None:
    rng = np.random.default_rng(len(case))
    reference = rng.chisquare(5, n_reference)
    window = rng.chisquare(5, n_window) + shift
    if case == "ties":
        reference, window = np.round(reference), np.round(window)
    report = MultivariateDriftDetector().evaluate(reference, window)
    expected = stats.mannwhitneyu(window, reference, alternative="greater", method="asymptotic")
    assert report.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert report.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    labels = np.r_[np.zeros(n_reference), np.ones(n_window)]
    auc = roc_auc_score(labels, np.r_[reference, window])
    assert report.effect == pytest.approx(2.0 * auc - 1.0, abs=1e-12)
    assert (report.window_rows, report.reference_rows) == (n_window, n_reference)
    assert report.detected == (report.p_value < 0.05 and report.effect >= 0.1)


def test_verdict_needs_both_significance_and_effect() -> None:
    rng = np.random.default_rng(0)
    reference = rng.chisquare(5, 2000)
    small = rng.chisquare(5, 20000) + 0.3  # significant, small effect (0.067)
    report = MultivariateDriftDetector().evaluate(reference, small)
    assert report.p_value < 1e-4 and 0.0 < report.effect < 0.1 and not report.detected
    assert MultivariateDriftDetector(min_effect=0.0).evaluate(reference, small).detected
    tiny = rng.chisquare(5, 5) + 3.0  # large effect, too few rows to be significant
    report = MultivariateDriftDetector().evaluate(reference, tiny)
    assert report.effect > 0.3 and report.p_value > 0.05 and not report.detected
    constant = MultivariateDriftDetector().evaluate(np.ones(5), np.ones(7))
    assert (constant.p_value, constant.effect, constant.detected) == (1.0, 0.0, False)


def test_report_to_dict() -> None:
    report = MultivariateDriftDetector(alpha=0.01, min_effect=0.2).evaluate([1.0, 2.0], [3.0])
    assert isinstance(report, MultivariateDriftReport)
    d = report.to_dict()
    assert d == {
        "statistic": 2.0,
        "p_value": report.p_value,
        "effect": 1.0,
        "window_rows": 1,
        "reference_rows": 2,
        "detected": False,
        "alpha": 0.01,
        "min_effect": 0.2,
    }
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(AttributeError):
        report.detected = True  # type: ignore[misc]


def test_bad_parameters_are_named() -> None:
    for alpha in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            MultivariateDriftDetector(alpha=alpha)
    for min_effect in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="min_effect"):
            MultivariateDriftDetector(min_effect=min_effect)
    det = MultivariateDriftDetector()
    with pytest.raises(ValueError, match="reference_scores"):
        det.evaluate(np.ones((3, 2)), [1.0])
    with pytest.raises(ValueError, match="reference_scores"):
        det.evaluate([], [1.0])
    with pytest.raises(ValueError, match="window_scores"):
        det.evaluate([1.0], [np.nan])


def test_evaluate_is_cheap() -> None:
    rng = np.random.default_rng(0)
    reference, window = rng.chisquare(5, 2000), rng.chisquare(5, 1000)
    det = MultivariateDriftDetector()
    times = []
    for _ in range(50):
        start = time.perf_counter()
        det.evaluate(reference, window)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 5e-3  # measured: 0.16 ms


def test_docstring_examples() -> None:
    assert doctest.testmod(multivariate).failed == 0


# --------------------------------------------------------------------------- score and profile


def test_reconstruction_error_agrees_with_sklearn_pca(
    digits: dict[str, np.ndarray], profile: ReferenceProfile
) -> None:
    det = profile.anomaly
    scaler = StandardScaler().fit(digits["train"].astype(np.float64))
    Z = scaler.transform(digits["train"].astype(np.float64))
    pca = PCA(n_components=det.components_.shape[0], svd_solver="full").fit(Z)
    rows = np.concatenate([digits["test"], np.full((2, 64), 16.0)])
    z = (rows.astype(np.float64) - det.mean_) / det.scale_  # constant pixels keep scale 1
    rebuilt = pca.inverse_transform(pca.transform(z - pca.mean_)) + pca.mean_
    ours = det.reconstruction_error(rows)
    np.testing.assert_allclose(ours, np.sum((z - rebuilt) ** 2, axis=1), rtol=1e-8, atol=1e-9)
    proj = z @ det.components_.T
    mahalanobis = np.sum(proj**2 / det.explained_variance_, axis=1)
    np.testing.assert_allclose(det.score(rows), mahalanobis + ours / det.residual_variance_)
    assert ours.dtype == np.float64 and ours.min() >= 0.0


def test_profile_keeps_held_out_scores(
    digits: dict[str, np.ndarray], profile: ReferenceProfile
) -> None:
    ref_scores = profile.reference_scores
    assert ref_scores is not None and ref_scores.shape == (len(digits["val"]),)
    val_scores = profile.anomaly.score(digits["val"])
    np.testing.assert_array_equal(ref_scores, val_scores)
    # the rows that set the threshold
    assert profile.anomaly.threshold_ == pytest.approx(np.quantile(val_scores, 0.99))
    with pytest.raises(ValueError):
        ref_scores[0] = 1.0  # read-only
    prob = np.full((10, 10), 0.1)
    bounded = build_profile(
        digits["train"], prob, X_calibration=digits["val"], seed=0, reference_scores_size=100
    )
    assert bounded.reference_scores is not None and bounded.reference_scores.shape == (100,)
    assert set(bounded.reference_scores.tolist()) <= set(ref_scores.tolist())
    assert bounded.anomaly.threshold_ == profile.anomaly.threshold_  # from every val row
    again = build_profile(
        digits["train"], prob, X_calibration=digits["val"], seed=0, reference_scores_size=100
    )
    np.testing.assert_array_equal(again.reference_scores, bounded.reference_scores)
    other = build_profile(
        digits["train"], prob, X_calibration=digits["val"], seed=1, reference_scores_size=100
    )
    assert not np.array_equal(other.reference_scores, bounded.reference_scores)
    # Without held-out rows there is no unbiased reference.
    assert build_profile(digits["train"], prob).reference_scores is None
    with pytest.raises(ValueError, match="reference_scores_size"):
        build_profile(digits["train"], prob, reference_scores_size=0)


def test_profile_json_round_trip_and_old_profiles(profile: ReferenceProfile) -> None:
    text = profile.to_json()
    back = ReferenceProfile.from_json(text)
    assert back.to_json() == text
    assert back.reference_scores is not None
    np.testing.assert_array_equal(back.reference_scores, profile.reference_scores)
    old = profile.to_dict()
    del old["reference_scores"]  # a profile written before the field existed
    loaded = ReferenceProfile.from_dict(old)
    assert loaded.reference_scores is None
    assert "reference_scores" not in loaded.to_dict()
    assert loaded.to_json() == json.dumps(old, separators=(",", ":"))
    for bad in ([[1.0, 2.0]], [], [1.0, -1.0], [1.0, float("nan")]):
        d = profile.to_dict()
        d["reference_scores"] = bad
        with pytest.raises(ValueError, match="reference_scores"):
            ReferenceProfile.from_dict(d)


# --------------------------------------------------------------------------- false alarms


def test_clean_digits_windows_rarely_alarm(
    digits: dict[str, np.ndarray], profile: ReferenceProfile
) -> None:
    assert profile.reference_scores is not None
    test_scores = profile.anomaly.score(digits["test"])
    det = MultivariateDriftDetector()
    rng = np.random.default_rng(7)
    for n in SIZES:
        alarms = 0
        for _ in range(200):
            rows = rng.integers(0, len(test_scores), n)  # scores are per row: index them
            alarms += det.evaluate(profile.reference_scores, test_scores[rows]).detected
        assert alarms / 200 <= 0.05  # measured: 0 of 200 at every size


def test_level_on_exchangeable_windows() -> None:
    # Fresh reference and window from one source: the share with p < alpha is alpha.
    from monitoring.anomaly import SubspaceAnomalyDetector

    rng = np.random.default_rng(11)
    mixing = rng.normal(size=(3, 10))

    def draw(rows: int) -> np.ndarray:
        return rng.normal(size=(rows, 3)) @ mixing + 0.3 * rng.normal(size=(rows, 10))

    anomaly = SubspaceAnomalyDetector().fit(draw(2000), draw(500))
    det = MultivariateDriftDetector()
    significant = detected = 0
    for _ in range(600):
        report = det.evaluate(anomaly.score(draw(2000)), anomaly.score(draw(500)))
        significant += report.p_value < det.alpha
        detected += report.detected
    assert 0.03 <= significant / 600 <= 0.08  # measured: 0.047
    assert detected / 600 <= 0.01  # min_effect on top: measured 0.0017


def test_scores_of_fitted_rows_would_bias_the_test(
    digits: dict[str, np.ndarray], profile: ReferenceProfile
) -> None:
    # Why the reference must be held out: fitted rows sit closer to their own subspace.
    fitted = profile.anomaly.score(digits["train"])
    clean = profile.anomaly.score(np.concatenate([digits["val"], digits["test"]]))
    report = MultivariateDriftDetector().evaluate(fitted, clean)
    assert report.p_value < 0.01 and report.effect > 0.05  # measured: p 0.0017, effect 0.082


# --------------------------------------------------------------------------- power


@pytest.mark.parametrize(
    ("name", "shift", "least_multivariate"),
    [
        ("shuffle 8 cols", shuffle_columns(range(24, 32)), 1.0),  # measured 1.0
        # measured 0.60-0.65 on these 20 windows; 0.49-0.57 over 200 in the bench
        ("shuffle 16 cols, 20% rows", shuffle_columns(range(24, 40), 0.2), 0.3),
        ("spliced halves", splice_halves(), 1.0),  # measured 1.0
        ("swap 29<->50", swap(29, 50), 1.0),  # measured 1.0 (r=-0.26, train KS 0.04)
    ],
)
def test_marginal_preserving_shifts_are_detected(
    digits: dict[str, np.ndarray],
    profile: ReferenceProfile,
    name: str,
    shift: Shift,
    least_multivariate: float,
) -> None:
    assert profile.reference_scores is not None
    multi, features = MultivariateDriftDetector(), InputDriftDetector()
    rng = np.random.default_rng(len(name))
    for n in SIZES:
        hits = per_feature = 0
        for _ in range(20):
            W = shift(digits["test"][rng.integers(0, len(digits["test"]), n)].copy(), rng)
            scores = profile.anomaly.score(W)  # what the prediction log holds
            hits += multi.evaluate(profile.reference_scores, scores).detected
            per_feature += features.evaluate(
                profile.sample, profile.edges, profile.reference_counts, W
            ).drift_detected
        assert hits / 20 >= least_multivariate, (name, n, hits)
        assert per_feature == 0, (name, n, per_feature)  # measured: 0 in every cell


def test_swapping_near_duplicate_features_is_invisible(
    digits: dict[str, np.ndarray], profile: ReferenceProfile
) -> None:
    # Pixels 2 and 58 (r=0.93, train KS 0.04) relate to the rest alike: swapping them
    # changes neither the marginals nor the subspace. A documented limit, not a goal.
    assert profile.reference_scores is not None
    rng = np.random.default_rng(3)
    W = swap(2, 58)(digits["test"][rng.integers(0, len(digits["test"]), 1000)].copy(), rng)
    report = MultivariateDriftDetector().evaluate(
        profile.reference_scores, profile.anomaly.score(W)
    )
    assert not report.detected and report.effect < 0.0
