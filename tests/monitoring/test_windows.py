"""Every window figure against an independent batch computation on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, ks_2samp, mannwhitneyu
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from monitoring.binned import bin_counts
from monitoring.profile import build_profile
from monitoring.windows import window_figures


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def scenario() -> dict[str, np.ndarray]:
    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    rng = np.random.default_rng(3)
    order = rng.permutation(len(X))
    train, held, live = order[:900], order[900:1300], order[1300:]
    # a crude nearest-class-mean "model", so probabilities are real and imperfect
    means = np.stack([X[train][y[train] == c].mean(axis=0) for c in range(10)])

    def proba(rows: np.ndarray) -> np.ndarray:
        return softmax(-((rows[:, None, :] - means[None]) ** 2).sum(axis=2) / 400.0)

    profile = build_profile(X[train], proba(X[held]), X_calibration=X[held], seed=1)
    Xl = X[live].copy()
    Xl[:100, 20:30] += 6.0  # some drift
    P = proba(Xl).astype(np.float32)
    scores = profile.anomaly.score(Xl)
    labelled = rng.random(len(Xl)) < 0.6
    return {
        "profile": profile,  # type: ignore[dict-item]
        "X": Xl,
        "P": P,
        "pred": P.argmax(axis=1),
        "conf": P.max(axis=1),
        "scores": scores,
        "anomalous": scores > profile.anomaly.threshold_,
        "true": y[live],
        "labelled": labelled,
        "delays": rng.exponential(60.0, size=len(Xl)),
    }


def test_window_figures_equal_batch_computations(scenario: dict[str, np.ndarray]) -> None:
    s = scenario
    profile = s["profile"]
    lab = s["labelled"]
    f = window_figures(
        model="m",
        version="v",
        profile=profile,  # type: ignore[arg-type]
        inputs=s["X"],
        predicted=s["pred"],
        confidences=s["conf"],
        probabilities=s["P"],
        anomalous=s["anomalous"],
        anomaly_scores=s["scores"],
        labelled_predicted=s["pred"][lab],
        labelled_true=s["true"][lab],
        label_delays=s["delays"][lab],
        predictions_total=len(s["X"]),
        labelled_total=int(lab.sum()),
    )
    y_true, y_pred = s["true"][lab], s["pred"][lab]
    p = f.performance
    assert p is not None
    assert p.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    np.testing.assert_allclose(p.precision, prec)
    np.testing.assert_allclose(p.recall, rec)
    np.testing.assert_allclose(p.f1, f1)
    assert p.macro_f1 == pytest.approx(f1.mean())
    np.testing.assert_array_equal(np.array(p.confusion), confusion_matrix(y_true, y_pred))
    assert f.label_coverage == pytest.approx(lab.mean())
    assert f.estimated_accuracy == pytest.approx(float(np.mean(s["P"].max(axis=1))), rel=1e-6)
    assert f.label_delay_quantiles is not None
    assert f.label_delay_quantiles["p50"] == pytest.approx(np.median(s["delays"][lab]))
    assert f.anomaly_ratio == pytest.approx(np.mean(s["anomalous"]))

    drift = f.drift
    assert drift is not None and drift.n_rows == len(s["X"])
    for j in (0, 5, 21, 25, 40, 63):
        feat = drift.features[j]
        ref_counts = np.asarray(profile.reference_counts[j], dtype=float)  # type: ignore[attr-defined]
        cur_counts = bin_counts(s["X"][:, j], profile.edges[j]).astype(float)  # type: ignore[attr-defined]
        eps = 1e-4
        k = len(ref_counts)
        pr = (ref_counts / ref_counts.sum() + eps) / (1 + eps * k)
        qr = (cur_counts / cur_counts.sum() + eps) / (1 + eps * k)
        assert feat.psi == pytest.approx(float(np.sum((qr - pr) * np.log(qr / pr))), abs=1e-9)
        expected_js = jensenshannon(
            ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum(), base=2
        )
        assert feat.js_distance == pytest.approx(float(np.nan_to_num(expected_js)), abs=1e-9)
        ks = ks_2samp(profile.sample[:, j], s["X"][:, j], method="asymp")  # type: ignore[attr-defined]
        assert feat.ks_statistic == pytest.approx(ks.statistic, abs=1e-12)
        assert feat.ks_pvalue == pytest.approx(ks.pvalue, rel=1e-9, abs=1e-12)
    flagged = [feat.index for feat in drift.features if feat.drifted]
    assert flagged and set(flagged) <= set(range(20, 30))
    pd = f.prediction_drift
    assert pd is not None
    counts = np.bincount(s["pred"], minlength=10)
    share = np.asarray(profile.class_share) + 1e-4  # type: ignore[attr-defined]
    expected = len(s["pred"]) * share / share.sum()
    assert pd.chi2_pvalue == pytest.approx(chisquare(counts, expected).pvalue, rel=1e-9)

    multi = f.multivariate_drift  # the window's stored anomaly scores against held-out ones
    assert multi is not None and multi.window_rows == len(s["scores"])
    reference = profile.reference_scores  # type: ignore[attr-defined]
    u = mannwhitneyu(s["scores"], reference, alternative="greater", method="asymptotic")
    assert multi.statistic == pytest.approx(u.statistic, rel=1e-12)
    assert multi.p_value == pytest.approx(u.pvalue, rel=1e-9, abs=1e-15)
    assert multi.effect == pytest.approx(2 * u.statistic / (len(s["scores"]) * len(reference)) - 1)
    assert f.to_dict()["multivariate_drift"]["p_value"] == multi.p_value


def test_empty_windows_give_no_figures_not_nan(scenario: dict[str, np.ndarray]) -> None:
    s = scenario
    empty = np.zeros(0)
    f = window_figures(
        model="m",
        version="v",
        profile=s["profile"],  # type: ignore[arg-type]
        inputs=np.zeros((0, 64), dtype=np.float32),
        predicted=empty.astype(int),
        confidences=empty,
        probabilities=np.zeros((0, 10)),
        anomalous=empty.astype(bool),
        anomaly_scores=empty,
        labelled_predicted=empty.astype(int),
        labelled_true=empty.astype(int),
        label_delays=empty,
        predictions_total=0,
        labelled_total=0,
    )
    d = f.to_dict()
    assert d["performance"] is None and d["drift"] is None and d["label_coverage"] is None
    assert d["estimated_accuracy"] is None and d["anomaly"]["ratio"] is None
    assert d["multivariate_drift"] is None
