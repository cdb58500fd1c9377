"""monitoring.profile: building on digits, bounded sample, JSON round trip, schema check."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from monitoring import profile as profile_module
from monitoring.binned import bin_counts, quantile_edges
from monitoring.drift import InputDriftDetector
from monitoring.profile import SCHEMA_VERSION, ReferenceProfile, build_profile


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, test_size=0.4, stratify=y, random_state=0
    )
    X_val, _, y_val, _ = train_test_split(
        X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
    )
    # A nearest-centroid softmax stands in for the model's held-out probabilities.
    centroids = np.stack([X_train[y_train == c].mean(axis=0) for c in range(10)])
    logits = -((X_val[:, None, :] - centroids[None]) ** 2).sum(axis=2) / 50.0
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    return {"train": X_train, "val": X_val, "prob": prob, "y_val": y_val}


@pytest.fixture(scope="module")
def built(digits: dict[str, np.ndarray]) -> ReferenceProfile:
    return build_profile(
        digits["train"], digits["prob"], X_calibration=digits["val"], sample_size=500, seed=3
    )


def test_built_on_digits(digits: dict[str, np.ndarray], built: ReferenceProfile) -> None:
    X = digits["train"]
    assert built.schema == SCHEMA_VERSION
    assert (built.n_features, built.n_classes, built.n_reference) == (64, 10, len(X))
    assert built.feature_names == tuple(f"f{j}" for j in range(64))
    constant = 0
    for j in range(64):
        np.testing.assert_array_equal(built.edges[j], quantile_edges(X[:, j], 10))
        np.testing.assert_array_equal(
            built.reference_counts[j], bin_counts(X[:, j], built.edges[j])
        )
        assert built.reference_counts[j].sum() == len(X)
        if X[:, j].min() == X[:, j].max():
            constant += 1
            assert built.edges[j].size == 0 and built.reference_counts[j].tolist() == [len(X)]
    assert constant >= 1
    predicted = digits["prob"].argmax(axis=1)
    np.testing.assert_allclose(built.class_share, np.bincount(predicted, minlength=10) / 359)
    assert sum(built.class_share) == pytest.approx(1.0)
    confidence = digits["prob"].max(axis=1)
    np.testing.assert_array_equal(built.confidence_edges, quantile_edges(confidence, 10))
    np.testing.assert_array_equal(
        built.confidence_counts, bin_counts(confidence, built.confidence_edges)
    )
    assert built.confidence_counts.sum() == len(confidence)
    scores = built.anomaly.score(digits["val"])
    assert built.anomaly.threshold_ == pytest.approx(np.quantile(scores, 0.99))


def test_sample_is_bounded_seeded_and_real_rows(
    digits: dict[str, np.ndarray], built: ReferenceProfile
) -> None:
    X = digits["train"]
    assert built.sample.shape == (500, 64) and built.sample.dtype == np.float32
    rows = {row.tobytes() for row in X}
    assert all(row.tobytes() in rows for row in built.sample)
    assert len({row.tobytes() for row in built.sample}) >= 490  # drawn without replacement
    again = build_profile(X, digits["prob"], sample_size=500, seed=3)
    np.testing.assert_array_equal(again.sample, built.sample)
    other = build_profile(X, digits["prob"], sample_size=500, seed=4)
    assert not np.array_equal(other.sample, built.sample)
    whole = build_profile(X, digits["prob"], sample_size=5000)
    np.testing.assert_array_equal(whole.sample, X)


def test_json_round_trip(digits: dict[str, np.ndarray], built: ReferenceProfile) -> None:
    text = built.to_json()
    back = ReferenceProfile.from_json(text)
    assert back.to_json() == text
    for name in ("schema", "n_features", "n_classes", "feature_names", "n_reference"):
        assert getattr(back, name) == getattr(built, name)
    assert back.class_share == built.class_share
    for a, b in zip(back.edges, built.edges, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(back.reference_counts, built.reference_counts, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.sample, built.sample)
    assert back.sample.dtype == np.float32
    np.testing.assert_array_equal(back.confidence_edges, built.confidence_edges)
    np.testing.assert_array_equal(back.confidence_counts, built.confidence_counts)
    rows = np.concatenate([digits["val"], np.full((2, 64), 16.0)])
    np.testing.assert_array_equal(back.anomaly.score(rows), built.anomaly.score(rows))
    assert back.anomaly.threshold_ == built.anomaly.threshold_
    assert json.loads(text)["schema"] == SCHEMA_VERSION


def test_unknown_schema_is_rejected(built: ReferenceProfile) -> None:
    d = built.to_dict()
    d["schema"] = 99
    with pytest.raises(ValueError, match="schema 99"):
        ReferenceProfile.from_dict(d)
    del d["schema"]
    with pytest.raises(ValueError, match="schema None"):
        ReferenceProfile.from_dict(d)
    with pytest.raises(ValueError, match="object"):
        ReferenceProfile.from_json("[1, 2]")


def test_arrays_are_read_only(built: ReferenceProfile) -> None:
    with pytest.raises(ValueError):
        built.sample[0, 0] = 1.0
    with pytest.raises(ValueError):
        built.edges[20][0] = 1.0


def test_profile_feeds_the_drift_detector(
    digits: dict[str, np.ndarray], built: ReferenceProfile
) -> None:
    report = InputDriftDetector().evaluate(
        built.sample,
        built.edges,
        built.reference_counts,
        digits["val"].astype(np.float64),
        feature_names=built.feature_names,
    )
    assert not report.drift_detected
    assert report.features[5].name == "f5"


def test_float64_reference_values_keep_their_ties() -> None:
    # 0.1 is not a float32 number: the profile and a float64 window must still agree.
    rng = np.random.default_rng(0)
    X = rng.choice([0.1, 0.3, 0.7], size=(3000, 2))
    prob = np.full((10, 2), 0.5)
    built = build_profile(X, prob, sample_size=1000)
    report = InputDriftDetector().evaluate(
        built.sample, built.edges, built.reference_counts, X[:500]
    )
    assert all(f.ks_statistic < 0.1 for f in report.features)
    assert all(f.psi < 0.05 for f in report.features)


def test_bad_inputs_are_refused(digits: dict[str, np.ndarray]) -> None:
    X, prob = digits["train"], digits["prob"]
    bad = X.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="X_reference"):
        build_profile(bad, prob)
    with pytest.raises(ValueError, match="heldout_probabilities"):
        build_profile(X, np.full((5, 10), np.inf))
    with pytest.raises(ValueError, match="X_calibration"):
        build_profile(X, prob, X_calibration=X[:, :10])
    with pytest.raises(ValueError, match="feature_names"):
        build_profile(X, prob, feature_names=["a", "b"])
    with pytest.raises(ValueError, match="sample_size"):
        build_profile(X, prob, sample_size=0)
    named = build_profile(X[:50], prob, feature_names=[f"px{j}" for j in range(64)])
    assert named.feature_names[63] == "px63"


def test_docstring_examples() -> None:
    assert doctest.testmod(profile_module).failed == 0
