"""monitoring.binned, .ks and .drift against scipy and direct formulas, and on digits."""

from __future__ import annotations

import doctest
import json
import math
import time

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from monitoring import binned, drift, ks
from monitoring.binned import bin_counts, bin_counts_matrix, js_distance, psi, quantile_edges
from monitoring.drift import (
    DriftReport,
    FeatureDrift,
    InputDriftDetector,
    benjamini_hochberg,
    prediction_drift,
)
from monitoring.ks import ks_2samp_columns

# --------------------------------------------------------------------------- binning


def _direct_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bounds = np.concatenate(([-np.inf], edges, [np.inf]))
    return np.array(
        [np.sum((x > lo) & (x <= hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    )


def test_quantile_edges_on_digits_columns(digits: dict[str, np.ndarray]) -> None:
    X = digits["train"]
    n_constant = 0
    for j in range(X.shape[1]):
        x = X[:, j]
        edges = quantile_edges(x, 10)
        levels = np.arange(1, 10) / 10
        expected = np.unique(np.quantile(x, levels, method="inverted_cdf"))
        np.testing.assert_array_equal(edges, expected[expected < x.max()])
        assert np.all(np.diff(edges) > 0)
        counts = bin_counts(x, edges)
        np.testing.assert_array_equal(counts, _direct_counts(x, edges))
        assert counts.sum() == len(x)
        assert np.all(counts > 0)  # every reference bin is populated
        if x.min() == x.max():
            n_constant += 1
            assert edges.size == 0
    assert n_constant >= 1  # digits has always-blank pixels


def test_quantile_edges_continuous_and_checks() -> None:
    x = np.random.default_rng(0).normal(size=5000)
    edges = quantile_edges(x, 10)
    assert edges.size == 9
    np.testing.assert_allclose(bin_counts(x, edges), 500, atol=1)
    assert quantile_edges(x, 1).size == 0
    assert quantile_edges(np.full(10, 3.0)).size == 0
    with pytest.raises(ValueError, match="n_bins"):
        quantile_edges(x, 0)
    with pytest.raises(ValueError, match="x"):
        quantile_edges(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x"):
        quantile_edges(np.array([]))


def test_bins_are_right_closed() -> None:
    np.testing.assert_array_equal(bin_counts([1.0, 1.0, 2.0, 2.5, 3.0], [1.0, 2.0]), [2, 1, 2])
    np.testing.assert_array_equal(bin_counts([5.0, -5.0], []), [2])


def test_bin_counts_matrix_equals_per_column(digits: dict[str, np.ndarray]) -> None:
    X = digits["train"]
    edges = [quantile_edges(X[:, j]) for j in range(X.shape[1])]
    window = digits["test"]
    matrix = bin_counts_matrix(window, edges)
    for j in range(X.shape[1]):
        np.testing.assert_array_equal(matrix[j], _direct_counts(window[:, j], edges[j]))
    with pytest.raises(ValueError, match="edges"):
        bin_counts_matrix(window[:, :3], edges)


# --------------------------------------------------------------------------- distances


def _psi_direct(ref: np.ndarray, cur: np.ndarray, eps: float) -> float:
    k = len(ref)
    total = 0.0
    for r, c in zip(ref / ref.sum(), cur / cur.sum(), strict=True):
        p = (r + eps) / (1 + eps * k)
        q = (c + eps) / (1 + eps * k)
        total += (q - p) * math.log(q / p)
    return total


@pytest.mark.parametrize("seed", range(4))
def test_psi_matches_direct_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 50, 12)
    cur = rng.integers(0, 50, 12)
    ref[[2, 5]] = 0  # empty reference bins
    cur[[5, 7]] = 0  # empty current bins
    for eps in (1e-4, 1e-2):
        assert psi(ref, cur, eps) == pytest.approx(_psi_direct(ref, cur, eps), rel=1e-12)


def test_psi_properties() -> None:
    assert psi([2, 4, 0, 6], [1, 2, 0, 3]) == 0.0  # identical proportions
    assert psi([0.25, 0.75], [25, 75]) == pytest.approx(psi([1, 3], [100, 300]), abs=1e-15)
    big = psi([1000, 0], [0, 1000])
    assert math.isfinite(big) and big > 10
    # Without empty bins and small epsilon: the textbook formula.
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
    assert psi(p, q, 1e-12) == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-9)
    with pytest.raises(ValueError, match="epsilon"):
        psi([1, 2], [1, 2], 0.0)
    with pytest.raises(ValueError, match="current_counts"):
        psi([1, 2], [0, 0])
    with pytest.raises(ValueError, match="bins"):
        psi([1, 2], [1, 2, 3])


@pytest.mark.parametrize("seed", range(4))
def test_js_distance_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 30, 9).astype(float)
    cur = rng.integers(0, 30, 9).astype(float)
    ref[1] = 0
    cur[[1, 4]] = 0
    expected = jensenshannon(ref, cur, base=2)
    assert js_distance(ref, cur) == pytest.approx(expected, abs=1e-12)
    assert js_distance(ref, ref * 3) == pytest.approx(0.0, abs=1e-7)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- KS


def _assert_ks_matches_scipy(ref: np.ndarray, cur: np.ndarray) -> None:
    stat, pvalue = ks_2samp_columns(ref, cur)
    assert stat.dtype == np.float64 and pvalue.dtype == np.float64
    for j in range(ref.shape[1]):
        expected = stats.ks_2samp(ref[:, j], cur[:, j], method="asymp")
        assert stat[j] == pytest.approx(expected.statistic, abs=1e-9), j
        assert pvalue[j] == pytest.approx(expected.pvalue, abs=1e-9), j


def test_ks_matches_scipy_on_digits_with_ties(digits: dict[str, np.ndarray]) -> None:
    ks._SF_CACHE.clear()
    _assert_ks_matches_scipy(digits["train"], digits["test"])
    shifted = digits["test"].copy()
    shifted[:, 20:30] += 2.0
    _assert_ks_matches_scipy(digits["train"], shifted)
    # float64 current with the same values takes the same path and gives the same answer.
    _assert_ks_matches_scipy(digits["train"].astype(np.float64), digits["val"])


@pytest.mark.parametrize(("n1", "n2"), [(700, 300), (1000, 40), (60, 25), (500, 1)])
def test_ks_matches_scipy_on_continuous_data(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 + n2)
    ref = rng.normal(size=(n1, 12))
    cur = rng.normal(size=(n2, 12)) + np.linspace(0.0, 1.5, 12)
    _assert_ks_matches_scipy(ref, cur)  # float64: argsort path
    _assert_ks_matches_scipy(ref.astype(np.float32), cur.astype(np.float32))  # packed keys


def test_ks_mixed_rounded_values_and_signed_zero() -> None:
    rng = np.random.default_rng(5)
    ref = rng.integers(-3, 4, (300, 4)).astype(np.float32) / 2
    cur = rng.integers(-3, 4, (200, 4)).astype(np.float32) / 2
    cur[:50, 0] = -0.0
    ref[:50, 1] = -0.0
    _assert_ks_matches_scipy(ref, cur)
    _assert_ks_matches_scipy(ref, cur.astype(np.float64) + 1e-9)  # not float32: argsort path


def test_ks_ties_across_samples_in_float64() -> None:
    rng = np.random.default_rng(6)
    levels = np.array([0.1, 0.2, 0.3, 0.7])  # not float32 numbers: argsort path
    ref = rng.choice(levels, size=(400, 6), p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(levels, size=(150, 6), p=[0.1, 0.2, 0.3, 0.4])
    cur[:, 0] = rng.choice(levels, size=150, p=[0.4, 0.3, 0.2, 0.1])
    _assert_ks_matches_scipy(ref, cur)


def test_ks_signed_zero_ties_with_zero() -> None:
    ref = np.zeros((50, 1), dtype=np.float32)
    cur = np.full((40, 1), -0.0, dtype=np.float32)
    stat, pvalue = ks_2samp_columns(ref, cur)
    assert (stat[0], pvalue[0]) == (0.0, 1.0)
    _assert_ks_matches_scipy(ref, cur)


def test_ks_constant_columns() -> None:
    ref = np.zeros((100, 2))
    cur = np.zeros((30, 2))
    cur[:, 1] = 1.0
    stat, pvalue = ks_2samp_columns(ref, cur)
    assert stat[0] == 0.0 and pvalue[0] == 1.0
    assert stat[1] == 1.0 and pvalue[1] == pytest.approx(
        stats.ks_2samp(ref[:, 1], cur[:, 1], method="asymp").pvalue, abs=1e-12
    )
    with pytest.raises(ValueError, match="current"):
        ks_2samp_columns(ref, np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="columns"):
        ks_2samp_columns(ref, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="current"):
        ks_2samp_columns(ref, np.zeros((0, 2)))


def test_ks_is_fast_for_784_columns() -> None:
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (1000, 784)).astype(np.float32)
    cur = rng.integers(0, 256, (1000, 784)).astype(np.float32)
    best = math.inf
    for _ in range(3):
        ks._SF_CACHE.clear()  # cold: every p-value computed afresh
        start = time.perf_counter()
        stat, _ = ks_2samp_columns(ref, cur)
        best = min(best, time.perf_counter() - start)
    # ~30 ms on the development machine; the bound only catches a lost vectorisation.
    assert best < 0.3
    j = 401
    assert stat[j] == pytest.approx(stats.ks_2samp(ref[:, j], cur[:, j]).statistic, abs=1e-12)


# --------------------------------------------------------------------------- BH


def _bh_direct(p: np.ndarray, alpha: float) -> np.ndarray:
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    k = 0
    for rank, i in enumerate(ranked, start=1):
        if p[i] <= rank * alpha / m:
            k = rank
    reject = np.zeros(m, dtype=bool)
    reject[ranked[:k]] = True
    return reject


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_scipy_and_direct(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=80), rng.uniform(0, 0.002, size=20)])
    p[:3] = p[3]  # ties
    for alpha in (0.01, 0.05, 0.2):
        reject = benjamini_hochberg(p, alpha)
        np.testing.assert_array_equal(reject, stats.false_discovery_control(p) <= alpha)
        np.testing.assert_array_equal(reject, _bh_direct(p, alpha))
    assert benjamini_hochberg(np.array([])).size == 0
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg(p, 1.5)
    with pytest.raises(ValueError, match="pvalues"):
        benjamini_hochberg(np.array([0.1, 1.2]))


# --------------------------------------------------------------------------- detector


Reference = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]


def _reference(X_train: np.ndarray, sample_rows: int = 1000, seed: int = 0) -> Reference:
    """(sample, edges, counts) as a profile holds them."""
    edges = [quantile_edges(X_train[:, j]) for j in range(X_train.shape[1])]
    rows = np.sort(np.random.default_rng(seed).choice(len(X_train), sample_rows, replace=False))
    return X_train[rows], edges, bin_counts_matrix(X_train, edges)


def test_report_figures_match_direct_computation(digits: dict[str, np.ndarray]) -> None:
    sample, edges, counts = _reference(digits["train"])
    window = digits["test"][:250].copy()
    window[:, 10] += 3.0
    report = InputDriftDetector().evaluate(sample, edges, counts, window)
    expected_p = []
    for f in report.features:
        j = f.index
        cur_counts = _direct_counts(window[:, j], edges[j])
        ref_counts = counts[j]
        assert f.name == f"f{j}"
        assert f.psi == pytest.approx(
            _psi_direct(ref_counts, cur_counts, 1e-4), rel=1e-12, abs=1e-15
        )
        assert f.js_distance == pytest.approx(
            jensenshannon(ref_counts, cur_counts, base=2), abs=1e-9
        )
        ks = stats.ks_2samp(sample[:, j], window[:, j], method="asymp")
        assert f.ks_statistic == pytest.approx(ks.statistic, abs=1e-12)
        assert f.ks_pvalue == pytest.approx(ks.pvalue, abs=1e-9)
        expected_p.append(ks.pvalue)
    adjusted = stats.false_discovery_control(np.array(expected_p))
    psis = np.array([f.psi for f in report.features])
    drifted = (adjusted < 0.05) & (psis >= 0.1)
    np.testing.assert_array_equal([f.drifted for f in report.features], drifted)
    assert report.features[10].drifted
    assert report.drift_share == pytest.approx(drifted.mean())
    assert report.drift_detected == (drifted.mean() >= 0.1)
    assert report.n_rows == 250
    # Without the effect-size floor the verdict is the BH decision alone, not raw p < alpha.
    null = InputDriftDetector(min_psi=0.0).evaluate(sample, edges, counts, digits["test"][:250])
    raw = np.array([f.ks_pvalue for f in null.features])
    assert np.sum(raw < 0.05) >= 1
    np.testing.assert_array_equal(
        [f.drifted for f in null.features], stats.false_discovery_control(raw) < 0.05
    )
    assert not null.drift_detected


def test_in_distribution_windows_rarely_alarm(digits: dict[str, np.ndarray]) -> None:
    ref = _reference(digits["train"])
    held_out = np.concatenate([digits["val"], digits["test"]])
    rng = np.random.default_rng(42)
    detector = InputDriftDetector()
    alarms = 0
    for _ in range(40):
        window = held_out[rng.choice(len(held_out), 500, replace=False)]
        report = detector.evaluate(*ref, window)
        alarms += report.drift_detected
        assert all(math.isfinite(v) for f in report.features for v in (f.psi, f.ks_pvalue))
    assert alarms <= 2  # at most 5% of 40 windows (measured: 0)


def test_shifted_features_are_found(digits: dict[str, np.ndarray]) -> None:
    ref = _reference(digits["train"])
    held_out = np.concatenate([digits["val"], digits["test"]])
    std = digits["train"].std(axis=0)
    rng = np.random.default_rng(7)
    subset = rng.choice(np.argsort(-std)[:32], 16, replace=False)
    detector = InputDriftDetector()
    for _ in range(10):
        window = held_out[rng.choice(len(held_out), 500, replace=False)].copy()
        window[:, subset] += 4.0
        report = detector.evaluate(*ref, window)
        flagged = [f.index for f in report.features if f.drifted]
        assert report.drift_detected
        assert np.isin(flagged, subset).mean() >= 0.8
        assert np.isin(subset, flagged).mean() >= 0.8  # and most of the subset is found
        worst = report.worst(16)
        assert np.isin([f.index for f in worst], subset).mean() >= 0.8


def test_tiny_windows_and_constant_features_stay_finite(digits: dict[str, np.ndarray]) -> None:
    ref = _reference(digits["train"])
    detector = InputDriftDetector()
    for window in (digits["test"][:1], np.zeros((5, 64)), np.full((3, 64), 16.0)):
        report = detector.evaluate(*ref, window)
        text = json.dumps(report.to_dict(), allow_nan=False)
        assert '"features"' in text
    with pytest.raises(ValueError, match="features"):
        detector.evaluate(*ref, np.zeros((5, 10)))
    with pytest.raises(ValueError, match="current"):
        detector.evaluate(*ref, np.zeros((0, 64)))


def test_float64_windows_are_compared_in_float32() -> None:
    rng = np.random.default_rng(3)
    values = rng.choice([0.1, 0.2, 0.7], size=(2000, 3))
    ref32 = values.astype(np.float32)
    edges = [quantile_edges(ref32[:, j]) for j in range(3)]
    counts = bin_counts_matrix(ref32, edges)
    report = InputDriftDetector().evaluate(ref32[:1000], edges, counts, values[1000:])
    for f in report.features:
        assert f.ks_statistic < 0.1 and not f.drifted
    assert [f.psi for f in report.features] == pytest.approx(
        [psi(counts[j], bin_counts(ref32[1000:, j], edges[j])) for j in range(3)]
    )


def test_worst_orders_by_psi_then_ks() -> None:
    features = tuple(
        FeatureDrift(i, f"f{i}", p, 0.0, k, 0.5, False)
        for i, (p, k) in enumerate([(0.1, 0.2), (0.3, 0.1), (0.3, 0.4), (0.05, 0.9)])
    )
    report = DriftReport(4, features, 0.0, False, 0.05, 0.1, 0.1)
    assert [f.index for f in report.worst(3)] == [2, 1, 0]
    assert report.worst(0) == []
    with pytest.raises(ValueError, match="k"):
        report.worst(-1)


def test_detector_parameters_are_checked() -> None:
    detector = InputDriftDetector(alpha=0.01, min_psi=0.2, share_threshold=0.5)
    assert (detector.alpha, detector.min_psi, detector.share_threshold) == (0.01, 0.2, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        InputDriftDetector(alpha=0.0)
    with pytest.raises(ValueError, match="min_psi"):
        InputDriftDetector(min_psi=-1.0)
    with pytest.raises(ValueError, match="share_threshold"):
        InputDriftDetector(share_threshold=0.0)


# --------------------------------------------------------------------------- prediction drift


def test_prediction_drift_matches_scipy() -> None:
    rng = np.random.default_rng(11)
    share = np.array([0.3, 0.3, 0.2, 0.2, 0.0])  # class 4 never predicted on the reference
    ref_conf = rng.beta(8, 2, 2000)
    edges = quantile_edges(ref_conf)
    ref_counts = bin_counts(ref_conf, edges)
    predicted = rng.choice(5, 400, p=[0.25, 0.25, 0.2, 0.2, 0.1])
    conf = rng.beta(5, 2, 400)
    result = prediction_drift(share, edges, ref_counts, predicted, conf)

    observed = np.bincount(predicted, minlength=5)
    smoothed = (share + 1e-4) / (1 + 5e-4)
    expected = stats.chisquare(observed, 400 * smoothed)
    assert result.chi2_statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.chi2_pvalue == pytest.approx(expected.pvalue, abs=1e-12)
    assert result.chi2_pvalue < 1e-6  # class 4 appeared
    assert result.class_psi == pytest.approx(_psi_direct(share, observed, 1e-4), rel=1e-12)
    cur_counts = _direct_counts(conf, edges)
    assert result.confidence_psi == pytest.approx(
        _psi_direct(ref_counts, cur_counts, 1e-4), rel=1e-12
    )
    gap = np.abs(np.cumsum(ref_counts) / 2000 - np.cumsum(cur_counts) / 400).max()
    assert result.confidence_ks_statistic == pytest.approx(gap, abs=1e-12)
    assert result.mean_confidence == pytest.approx(conf.mean())
    assert result.class_share == pytest.approx(tuple(observed / 400))
    json.dumps(result.to_dict(), allow_nan=False)


def test_prediction_drift_quiet_when_nothing_changes() -> None:
    rng = np.random.default_rng(12)
    share = np.array([0.5, 0.3, 0.2])
    ref_conf = rng.beta(8, 2, 2000)
    edges = quantile_edges(ref_conf)
    result = prediction_drift(
        share, edges, bin_counts(ref_conf, edges), rng.choice(3, 500, p=share), rng.beta(8, 2, 500)
    )
    assert result.chi2_pvalue > 0.01
    assert result.class_psi < 0.05 and result.confidence_psi < 0.1
    with pytest.raises(ValueError, match="predicted"):
        prediction_drift(share, edges, bin_counts(ref_conf, edges), np.array([0, 3]), [0.9, 0.9])
    with pytest.raises(ValueError, match="predicted"):
        prediction_drift(share, edges, bin_counts(ref_conf, edges), np.array([], int), [])
    with pytest.raises(ValueError, match="confidences"):
        prediction_drift(share, edges, bin_counts(ref_conf, edges), np.array([0, 1]), [0.9])


def test_docstring_examples() -> None:
    for module in (binned, ks, drift):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
