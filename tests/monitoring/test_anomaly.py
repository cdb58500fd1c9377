"""monitoring.anomaly against scikit-learn's PCA and probabilistic-PCA likelihood; digits."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from monitoring import anomaly
from monitoring.anomaly import SubspaceAnomalyDetector


@pytest.fixture(scope="module")
def fitted(digits: dict[str, np.ndarray]) -> SubspaceAnomalyDetector:
    return SubspaceAnomalyDetector().fit(digits["train"], digits["val"])


def test_subspace_agrees_with_sklearn_pca(
    digits: dict[str, np.ndarray], fitted: SubspaceAnomalyDetector
) -> None:
    scaler = StandardScaler().fit(digits["train"].astype(np.float64))
    np.testing.assert_allclose(fitted.mean_, scaler.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fitted.scale_, scaler.scale_, rtol=1e-10)
    assert np.sum(fitted.scale_ == 1.0) >= 1  # constant pixels
    Z = scaler.transform(digits["train"].astype(np.float64))
    k = fitted.components_.shape[0]
    assert k == PCA(n_components=0.95, svd_solver="full").fit(Z).n_components_
    pca = PCA(n_components=k, svd_solver="full").fit(Z)
    np.testing.assert_allclose(fitted.explained_variance_, pca.explained_variance_, rtol=1e-8)
    cosines = np.abs(np.sum(fitted.components_ * pca.components_, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    assert fitted.residual_variance_ == pytest.approx(pca.noise_variance_, rel=1e-8)
    np.testing.assert_allclose(fitted.components_ @ fitted.components_.T, np.eye(k), atol=1e-10)


def test_score_is_the_ppca_negative_log_likelihood(
    digits: dict[str, np.ndarray], fitted: SubspaceAnomalyDetector
) -> None:
    # sklearn's PCA.score_samples is the probabilistic-PCA log-likelihood: our score must be
    # -2 times it plus one constant (log det of the covariance and 2*pi terms).
    scaler = StandardScaler().fit(digits["train"].astype(np.float64))
    Z = scaler.transform(digits["train"].astype(np.float64))
    pca = PCA(n_components=fitted.components_.shape[0], svd_solver="full").fit(Z)
    rows = np.concatenate([digits["test"], np.random.default_rng(0).uniform(0, 16, (50, 64))])
    ours = fitted.score(rows)
    theirs = -2.0 * pca.score_samples(scaler.transform(rows.astype(np.float64)))
    offset = theirs - ours
    np.testing.assert_allclose(offset, offset[0], rtol=1e-9, atol=1e-6 * np.abs(ours).max())
    # And directly: Mahalanobis in the subspace plus residual / mean discarded variance.
    z = (rows.astype(np.float64) - fitted.mean_) / fitted.scale_
    proj = z @ fitted.components_.T
    direct = (
        np.sum(proj**2 / fitted.explained_variance_, axis=1)
        + np.sum((z - proj @ fitted.components_) ** 2, axis=1) / fitted.residual_variance_
    )
    np.testing.assert_allclose(ours, direct, rtol=1e-9)
    assert ours.dtype == np.float64


def test_threshold_is_the_calibration_quantile(
    digits: dict[str, np.ndarray], fitted: SubspaceAnomalyDetector
) -> None:
    assert fitted.threshold_ == pytest.approx(np.quantile(fitted.score(digits["val"]), 0.99))
    own = SubspaceAnomalyDetector(target_fpr=0.05).fit(digits["train"])
    assert own.threshold_ == pytest.approx(np.quantile(own.score(digits["train"]), 0.95))


def test_held_out_digits_are_rarely_flagged(
    digits: dict[str, np.ndarray], fitted: SubspaceAnomalyDetector
) -> None:
    rate = fitted.is_anomalous(fitted.score(digits["test"])).mean()
    assert rate <= 0.03  # target 0.01 (measured: 0.011)


def test_rows_that_are_not_digits_are_flagged(
    digits: dict[str, np.ndarray], fitted: SubspaceAnomalyDetector
) -> None:
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 16, (500, 64))
    assert fitted.is_anomalous(fitted.score(noise)).mean() >= 0.95
    assert fitted.is_anomalous(fitted.score(np.full((3, 64), 16.0))).all()
    inverted = 16.0 - digits["test"]
    assert fitted.is_anomalous(fitted.score(inverted)).mean() >= 0.95
    salt = np.zeros((500, 64))
    for row in salt:
        row[rng.choice(64, 12, replace=False)] = 16.0  # 12 scattered full-ink pixels
    assert fitted.is_anomalous(fitted.score(salt)).mean() >= 0.9
    brighter = np.clip(digits["test"] + 4.0, 0, 16)  # a sensor offset on every pixel
    assert fitted.is_anomalous(fitted.score(brighter)).mean() >= 0.95


def test_round_trip_gives_identical_scores(
    digits: dict[str, np.ndarray], fitted: SubspaceAnomalyDetector
) -> None:
    back = SubspaceAnomalyDetector.from_dict(json.loads(json.dumps(fitted.to_dict())))
    rows = np.concatenate([digits["test"], np.full((2, 64), 16.0)])
    np.testing.assert_array_equal(back.score(rows), fitted.score(rows))
    assert back.threshold_ == fitted.threshold_
    assert (back.variance_kept, back.max_components, back.target_fpr) == (0.95, 50, 0.01)
    broken = fitted.to_dict()
    broken["scale"] = [0.0] * 64
    with pytest.raises(ValueError):
        SubspaceAnomalyDetector.from_dict(broken)


def test_wide_inputs_784_columns(digits: dict[str, np.ndarray]) -> None:
    # 28x28 images: each digit pixel becomes a 3x3 block, with a constant blank border.
    def upsample(X: np.ndarray) -> np.ndarray:
        images = np.kron(X.reshape(-1, 8, 8), np.ones((3, 3), dtype=np.float32))
        return np.pad(images, ((0, 0), (2, 2), (2, 2))).reshape(len(X), 784)

    rng = np.random.default_rng(2)
    train, val, test = (upsample(digits[k]) for k in ("train", "val", "test"))
    train = train + rng.normal(0, 0.3, train.shape).astype(np.float32)
    val = val + rng.normal(0, 0.3, val.shape).astype(np.float32)
    test = test + rng.normal(0, 0.3, test.shape).astype(np.float32)
    det = SubspaceAnomalyDetector(max_components=50).fit(train, val)
    assert det.components_.shape == (50, 784)
    assert det.is_anomalous(det.score(test)).mean() <= 0.03
    assert det.is_anomalous(det.score(rng.uniform(0, 16, (200, 784)))).mean() >= 0.95


def test_shapes_and_parameters_are_checked(fitted: SubspaceAnomalyDetector) -> None:
    with pytest.raises(ValueError, match="n_features=64"):
        fitted.score(np.zeros((2, 63)))
    with pytest.raises(ValueError, match="NaN"):
        fitted.score(np.full((1, 64), np.nan))
    with pytest.raises(ValueError, match="n_features"):
        SubspaceAnomalyDetector().fit(np.zeros((10, 64)) + np.arange(10)[:, None], np.zeros((5, 3)))
    with pytest.raises(ValueError, match="variance_kept"):
        SubspaceAnomalyDetector(variance_kept=0.0)
    with pytest.raises(ValueError, match="max_components"):
        SubspaceAnomalyDetector(max_components=0)
    with pytest.raises(ValueError, match="target_fpr"):
        SubspaceAnomalyDetector(target_fpr=1.0)
    with pytest.raises(RuntimeError, match="fit"):
        SubspaceAnomalyDetector().score(np.zeros((1, 3)))


def test_degenerate_reference_stays_finite() -> None:
    constant = SubspaceAnomalyDetector().fit(np.ones((20, 4)))
    assert constant.components_.shape == (0, 4)
    scores = constant.score(np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0]]))
    assert np.all(np.isfinite(scores)) and scores[0] == 0.0 and scores[1] > 0
    line = np.outer(np.arange(30.0), [1.0, 2.0, -1.0])  # rank one
    det = SubspaceAnomalyDetector(variance_kept=1.0).fit(line)
    assert det.components_.shape[0] == 1
    assert det.residual_variance_ == anomaly.MIN_RESIDUAL_VARIANCE
    assert np.all(np.isfinite(det.score(line + 1.0)))


def test_docstring_examples() -> None:
    assert doctest.testmod(anomaly).failed == 0
