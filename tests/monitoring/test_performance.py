"""monitoring.performance against scikit-learn and direct formulas on the same data."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from monitoring import performance
from monitoring.performance import (
    ClassificationReport,
    classification_report,
    estimated_accuracy,
    expected_calibration_error,
)


def _labels_with_gaps(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Class 4 is never predicted; class 6 is predicted but never true."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, 4, n))
    y_pred[y_pred == 4] = 3
    y_pred[rng.choice(n, 7, replace=False)] = 6
    return y_true, y_pred


def _assert_matches_sklearn(
    report: ClassificationReport, y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]
) -> None:
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0, average=None
    )
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0, average="macro"
    )
    assert report.labels == tuple(labels)
    assert report.n == len(y_true)
    assert report.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    np.testing.assert_allclose(report.precision, p, atol=1e-12)
    np.testing.assert_allclose(report.recall, r, atol=1e-12)
    np.testing.assert_allclose(report.f1, f, atol=1e-12)
    np.testing.assert_array_equal(report.support, s)
    assert report.macro_precision == pytest.approx(mp, abs=1e-12)
    assert report.macro_recall == pytest.approx(mr, abs=1e-12)
    assert report.macro_f1 == pytest.approx(mf, abs=1e-12)
    np.testing.assert_array_equal(
        np.array(report.confusion), confusion_matrix(y_true, y_pred, labels=labels)
    )


@pytest.mark.parametrize("seed", range(5))
def test_default_labels_match_sklearn(seed: int) -> None:
    y_true, y_pred = _labels_with_gaps(seed)
    report = classification_report(y_true, y_pred)
    assert report.labels == (0, 1, 2, 3, 4, 6)
    assert report.precision[4] == 0.0  # never predicted: zero division -> 0
    assert report.recall[5] == 0.0  # never true
    _assert_matches_sklearn(report, y_true, y_pred, [0, 1, 2, 3, 4, 6])


@pytest.mark.parametrize("labels", [[0, 2, 7], [6, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_explicit_labels_match_sklearn(labels: list[int]) -> None:
    y_true, y_pred = _labels_with_gaps(11)
    report = classification_report(y_true, y_pred, labels=labels)
    _assert_matches_sklearn(report, y_true, y_pred, sorted(labels))


def test_perfect_and_constant_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = classification_report(y, y)
    assert perfect.accuracy == 1.0 and perfect.macro_f1 == 1.0
    constant = classification_report(y, np.zeros_like(y))
    _assert_matches_sklearn(constant, y, np.zeros_like(y), [0, 1, 2])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="y_true is empty"):
        classification_report([], [])
    with pytest.raises(ValueError, match="y_pred"):
        classification_report([0, 1], [0])
    with pytest.raises(ValueError, match="labels"):
        classification_report([0, 1], [0, 1], labels=[1, 1])
    with pytest.raises(ValueError, match="y_true"):
        classification_report([0.5, 1.0], [0, 1])


def test_report_round_trips_through_json() -> None:
    y_true, y_pred = _labels_with_gaps(3)
    report = classification_report(y_true, y_pred)
    back = ClassificationReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back == report


def test_stats_text_holds_every_figure() -> None:
    y_true, y_pred = _labels_with_gaps(4)
    report = classification_report(y_true, y_pred)
    names = ["zero", "one", "two", "three", "four", "six"]
    text = report.stats(names)
    lines = text.splitlines()
    assert lines[0] == "========== Evaluation Metrics =========="
    assert "# of classes:  6" in text
    assert f"Accuracy:      {report.accuracy:.4f}" in text
    assert f"Precision:     {report.macro_precision:.4f}" in text
    assert f"Recall:        {report.macro_recall:.4f}" in text
    assert f"F1 Score:      {report.macro_f1:.4f}" in text
    table = lines[lines.index("---------- Per class ----------") + 2 :][:6]
    for i, row in enumerate(table):
        fields = row.split()
        assert fields[0] == names[i]
        assert [float(v) for v in fields[1:4]] == pytest.approx(
            [report.precision[i], report.recall[i], report.f1[i]], abs=5e-5
        )
        assert int(fields[4]) == report.support[i]
    start = next(i for i, line in enumerate(lines) if line.startswith("---------- Confusion"))
    assert lines[start + 1].split() == names
    for i, row in enumerate(lines[start + 2 : start + 8]):
        fields = row.split()
        assert fields[0] == names[i]
        assert [int(v) for v in fields[1:]] == list(report.confusion[i])
    assert "0" in report.stats()  # label ids when no names are given
    with pytest.raises(ValueError, match="class_names"):
        report.stats(["only", "two"])


def _ece_loop(prob: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    bounds = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = bounds[b], bounds[b + 1]
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += abs(correct[inside].mean() - conf[inside].mean()) * inside.sum() / len(y)
    return float(total)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_direct_loop(n_bins: int) -> None:
    rng = np.random.default_rng(7)
    prob = rng.dirichlet(np.full(4, 0.7), size=3000)
    y = rng.integers(0, 4, 3000)
    # Rows whose confidence sits exactly on a bin boundary.
    bounds = np.linspace(0.0, 1.0, n_bins + 1)
    on_edge = bounds[(bounds >= 0.5) & (bounds < 1.0)]
    for i, c in enumerate(on_edge):
        prob[i] = [c, 1.0 - c, 0.0, 0.0]
    ece = expected_calibration_error(prob, y, n_bins=n_bins)
    assert ece == pytest.approx(_ece_loop(prob, y, n_bins), abs=1e-12)
    assert ece > 0.1  # random labels: confident and wrong


def test_ece_bins_are_right_closed() -> None:
    # 0.6 sits on a boundary of 5 bins: it belongs to (0.4, 0.6], not to (0.6, 0.8].
    edge = np.linspace(0.0, 1.0, 6)[3]  # the float the bins are cut at
    prob = np.array([[edge, 1.0 - edge], [0.7, 0.3]])
    y = np.array([0, 1])  # first right, second wrong
    expected = abs(1.0 - edge) / 2 + abs(0.0 - 0.7) / 2
    assert expected_calibration_error(prob, y, n_bins=5) == pytest.approx(expected, abs=1e-12)
    assert _ece_loop(prob, y, 5) == pytest.approx(expected, abs=1e-12)


def test_ece_is_small_for_calibrated_and_large_for_sharpened_probabilities() -> None:
    rng = np.random.default_rng(8)
    prob = rng.dirichlet(np.ones(3), size=20000)
    y = (prob.cumsum(axis=1) < rng.random(20000)[:, None]).sum(axis=1)
    assert expected_calibration_error(prob, y) < 0.02
    sharp = prob**4 / (prob**4).sum(axis=1, keepdims=True)
    assert expected_calibration_error(sharp, y) > 0.1
    assert expected_calibration_error(sharp, y) == pytest.approx(_ece_loop(sharp, y, 15), abs=1e-12)


def test_estimated_accuracy_tracks_realised_accuracy_when_calibrated() -> None:
    rng = np.random.default_rng(2024)
    n = 20000
    logits = rng.normal(0.0, 2.0, (n, 10))
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (prob.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    realised = float(np.mean(prob.argmax(axis=1) == y))
    est = estimated_accuracy(prob)
    assert est == pytest.approx(float(prob.max(axis=1).mean()), abs=1e-12)
    assert abs(est - realised) < 0.01
    # The same labels under over-confident probabilities: the estimate is off.
    sharp = prob**3 / (prob**3).sum(axis=1, keepdims=True)
    assert estimated_accuracy(sharp) - realised > 0.05


def test_probability_checks() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        estimated_accuracy(np.array([[0.5, 0.2]]))
    with pytest.raises(ValueError, match="probabilities"):
        estimated_accuracy(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="probabilities"):
        estimated_accuracy(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([[1.0, 0.0]]), [0], n_bins=0)
    with pytest.raises(ValueError, match="y_true"):
        expected_calibration_error(np.array([[1.0, 0.0]]), [0, 1])


def test_docstring_examples() -> None:
    assert doctest.testmod(performance).failed == 0
