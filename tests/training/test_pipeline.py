from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import accuracy_score, f1_score

from errors import DataError
from training.config import TrainConfig
from training.outcome import TrainingOutcome
from training.pipeline import run
from training.report import render_report


def test_defaults_on_digits_reach_the_accuracy_bar(outcome: TrainingOutcome) -> None:
    ev = outcome.evaluation
    assert ev.accuracy >= 0.96
    assert ev.n == outcome.split_sizes["test"]
    assert outcome.verdict.kind == "fitting well"
    assert outcome.parity_max_abs_diff <= 1e-5
    assert outcome.gradient_check is not None and outcome.gradient_check.passed
    assert outcome.calibration.nll_after <= outcome.calibration.nll_before
    assert 1 <= outcome.best_epoch <= outcome.history["epochs_run"] <= 200


def test_outcome_describes_the_data_and_split(outcome: TrainingOutcome) -> None:
    ds = outcome.dataset
    assert (ds.source, ds.n_rows, ds.n_features, ds.n_classes) == ("digits", 1797, 64, 10)
    assert len(ds.fingerprint) == 64 and ds.class_names == tuple("0123456789")
    assert outcome.split_sizes == {"train": 1259, "val": 269, "test": 269}
    assert outcome.X_train.shape == (1259, 64) and outcome.X_val.shape == (269, 64)
    assert outcome.val_probabilities.shape == (269, 10)
    np.testing.assert_allclose(outcome.val_probabilities.sum(axis=1), 1, atol=1e-5)


def test_the_onnx_model_is_the_served_model(outcome: TrainingOutcome) -> None:
    sess = ort.InferenceSession(outcome.onnx_bytes, providers=["CPUExecutionProvider"])
    (probs,) = sess.run(None, {"input": outcome.X_val})
    np.testing.assert_allclose(probs, outcome.val_probabilities, atol=1e-5)
    # evaluation figures agree with scikit-learn on the validation rows' predictions
    acc = accuracy_score(outcome.y_val, probs.argmax(1))
    assert acc == pytest.approx(outcome.history["val_accuracy"][outcome.best_epoch - 1])


def test_evaluation_matches_sklearn_on_test(outcome: TrainingOutcome) -> None:
    ev = outcome.evaluation
    # rebuild predictions from the confusion matrix (rows true, columns predicted)
    cm = np.asarray(ev.confusion)
    y_true = np.repeat(np.arange(10), cm.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(10), row) for row in cm])
    assert ev.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_summary_is_json_and_the_report_says_everything(outcome: TrainingOutcome) -> None:
    d = json.loads(json.dumps(outcome.to_dict()))
    assert d["config"] == TrainConfig().to_dict()
    assert d["verdict"]["kind"] == outcome.verdict.kind
    text = render_report(outcome)
    for needle in (
        "train 1259 / validation 269 / test 269",
        f"best epoch {outcome.best_epoch}",
        "Early stopping",
        "FITTING WELL",
        f"temperature {outcome.calibration.temperature:.4f}",
        "ECE",
        "parity",
        "Gradient check passed",
        "Accuracy:",
        "Confusion matrix",
    ):
        assert needle in text, needle


def test_csv_source_end_to_end_with_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    names = np.array(["low", "mid", "high"])[np.digitize(X[:, 0] + 0.5 * X[:, 1], [-0.5, 0.5])]
    lines = ["f1,f2,f3,grade"] + [
        f"{a:.5f},{b:.5f},{c:.5f},{g}" for (a, b, c), g in zip(X, names, strict=True)
    ]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    c = TrainConfig(source=f"csv:{path}", label_column="grade", max_epochs=40, hidden=(16,))
    o = run(c, out=None)
    assert o.dataset.class_names == ("high", "low", "mid")
    assert o.dataset.feature_names == ("f1", "f2", "f3")
    assert o.evaluation.accuracy > 0.8
    assert o.gradient_check is None and "Gradient check not run" in render_report(o)


def test_bad_source_is_a_data_error() -> None:
    with pytest.raises(DataError, match="label column"):
        run(TrainConfig(source="csv:/nonexistent.csv"), out=None)
