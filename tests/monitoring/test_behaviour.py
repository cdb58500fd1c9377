"""Seeded behaviour of the monitors on digits with the real trained, calibrated model and
its registered reference profile (the model and profile ``argus serve`` would use)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.store import StoredVersion
from monitoring.drift import InputDriftDetector
from monitoring.performance import estimated_accuracy
from monitoring.profile import ReferenceProfile
from training.config import TrainConfig
from training.data import load_dataset, split_dataset


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    c = TrainConfig()
    split = split_dataset(load_dataset("digits"), c.val_fraction, c.test_fraction, c.seed)
    return {"split": split}


def served(version: StoredVersion) -> tuple[ort.InferenceSession, ReferenceProfile]:
    session = ort.InferenceSession(str(version.model_path))
    return session, ReferenceProfile.from_dict(version.read_profile())


def held_out(world: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    split = world["split"]
    return split.X_test, split.y_test  # type: ignore[attr-defined]


def test_label_free_estimate_tracks_realized_accuracy(
    world: dict[str, object], registered: list[StoredVersion]
) -> None:
    session, _ = served(registered[0])
    X, y = held_out(world)
    (proba,) = session.run(None, {"input": X})
    rng = np.random.default_rng(5)
    gaps = []
    for _ in range(50):
        rows = rng.choice(len(X), size=len(X), replace=True)
        realized = float(np.mean(proba[rows].argmax(axis=1) == y[rows]))
        gaps.append(abs(estimated_accuracy(proba[rows]) - realized))
    print(f"\n|estimate - realized| over 50 windows: mean {np.mean(gaps):.4f}, max {max(gaps):.4f}")
    assert np.mean(gaps) <= 0.03


def test_in_distribution_windows_rarely_alarm(
    world: dict[str, object], registered: list[StoredVersion]
) -> None:
    _, profile = served(registered[0])
    X, _ = held_out(world)
    rng = np.random.default_rng(6)
    detector = InputDriftDetector()
    alarms = 0
    for _ in range(40):
        window = X[rng.choice(len(X), size=200, replace=False)]
        report = detector.evaluate(
            profile.sample, profile.edges, profile.reference_counts, window, profile.feature_names
        )
        alarms += report.drift_detected
    print(f"\ndataset-level drift in {alarms} of 40 in-distribution windows")
    assert alarms <= 2  # at most 5%


def test_a_shift_in_known_features_is_detected_there(
    world: dict[str, object], registered: list[StoredVersion]
) -> None:
    _, profile = served(registered[0])
    X, _ = held_out(world)
    rng = np.random.default_rng(7)
    informative = np.flatnonzero(X.std(axis=0) > 3.0)
    shifted = rng.choice(informative, size=12, replace=False)
    window = X[rng.choice(len(X), size=250, replace=False)].copy()
    window[:, shifted] = np.clip(window[:, shifted] + 5.0, 0, 16)
    report = InputDriftDetector().evaluate(
        profile.sample, profile.edges, profile.reference_counts, window, profile.feature_names
    )
    flagged = {f.index for f in report.features if f.drifted}
    inside = len(flagged & set(shifted.tolist())) / max(1, len(flagged))
    print(f"\nshift: {len(flagged)} flagged, {inside:.0%} inside the shifted subset")
    assert report.drift_detected and inside >= 0.8


def test_rows_that_are_not_digits_are_anomalous(
    world: dict[str, object], registered: list[StoredVersion]
) -> None:
    _, profile = served(registered[0])
    X, _ = held_out(world)
    det = profile.anomaly
    rng = np.random.default_rng(8)
    noise = rng.uniform(0, 16, size=(500, 64)).astype(np.float32)
    in_rate = float(det.is_anomalous(det.score(X)).mean())
    noise_rate = float(det.is_anomalous(det.score(noise)).mean())
    print(f"\nanomalous: {in_rate:.3f} of held-out digits, {noise_rate:.3f} of uniform noise")
    assert in_rate <= 0.03 and noise_rate >= 0.95
