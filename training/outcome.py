"""What a training run produced: ``TrainingOutcome`` and the ``DatasetInfo`` it carries.

``training/pipeline.py`` makes one; ``training/report.py`` renders it and
``training/publish.py`` registers it. Keeping it apart keeps those imports one-way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitoring.performance import ClassificationReport
from training import gradcheck as _gradcheck
from training.calibration import Calibration
from training.config import TrainConfig
from training.data import Dataset
from training.verdict import Verdict


@dataclass(frozen=True)
class DatasetInfo:
    """What a model card records about the training data."""

    source: str
    fingerprint: str
    n_rows: int
    n_features: int
    n_classes: int
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, ds: Dataset) -> DatasetInfo:
        return cls(
            source=ds.source,
            fingerprint=ds.fingerprint,
            n_rows=len(ds.y),
            n_features=ds.n_features,
            n_classes=ds.n_classes,
            feature_names=ds.feature_names,
            class_names=ds.class_names,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "n_rows": self.n_rows,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "feature_names": list(self.feature_names),
            "class_names": list(self.class_names),
        }


@dataclass(frozen=True)
class TrainingOutcome:
    """Everything a run produced. Arrays are for the reference profile: ``X_train`` and
    ``X_val`` in raw feature units, ``val_probabilities`` the calibrated probabilities of the
    validation rows (labels ``y_val``)."""

    onnx_bytes: bytes
    config: TrainConfig
    dataset: DatasetInfo
    split_sizes: dict[str, int]
    history: dict[str, Any]
    verdict: Verdict
    best_epoch: int
    calibration: Calibration
    evaluation: ClassificationReport
    parity_max_abs_diff: float
    gradient_check: _gradcheck.GradCheckResult | None
    training_time_s: float
    wall_time_s: float
    X_train: np.ndarray = field(repr=False)
    X_val: np.ndarray = field(repr=False)
    y_val: np.ndarray = field(repr=False)
    val_probabilities: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays, no model bytes), e.g. for a model card."""
        grad = self.gradient_check
        return {
            "config": self.config.to_dict(),
            "dataset": self.dataset.to_dict(),
            "split_sizes": dict(self.split_sizes),
            "history": self.history,
            "verdict": self.verdict.to_dict(),
            "best_epoch": self.best_epoch,
            "calibration": self.calibration.to_dict(),
            "evaluation": self.evaluation.to_dict(),
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "gradient_check": None if grad is None else grad.to_dict(),
            "training_time_s": self.training_time_s,
            "wall_time_s": self.wall_time_s,
        }
