"""Every window figure of one model version, from the rows its windows hold.

``window_figures`` is a pure function of the windows read from the state and the
version's reference profile, so every worker (and every replica) that reads the same
rows reports the same numbers, and each number can be checked against a batch
computation on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monitoring.drift import DriftReport, InputDriftDetector, PredictionDrift, prediction_drift
from monitoring.multivariate import MultivariateDriftDetector, MultivariateDriftReport
from monitoring.performance import ClassificationReport, classification_report, estimated_accuracy
from monitoring.profile import ReferenceProfile

DELAY_QUANTILES = (0.5, 0.9, 0.99)
SCORE_QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, eq=False)
class WindowFigures:
    """What the monitors say about one version right now; ``None`` where a window is empty."""

    model: str
    version: str
    input_rows: int
    prediction_rows: int
    labelled_rows: int
    predictions_total: int
    labelled_total: int
    label_coverage: float | None
    performance: ClassificationReport | None
    estimated_accuracy: float | None
    label_delay_quantiles: dict[str, float] | None
    drift: DriftReport | None
    multivariate_drift: MultivariateDriftReport | None
    prediction_drift: PredictionDrift | None
    anomaly_ratio: float | None
    anomaly_score_quantiles: dict[str, float] | None
    anomaly_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "windows": {
                "inputs": self.input_rows,
                "predictions": self.prediction_rows,
                "labels": self.labelled_rows,
            },
            "totals": {"predictions": self.predictions_total, "labelled": self.labelled_total},
            "label_coverage": self.label_coverage,
            "performance": self.performance.to_dict() if self.performance else None,
            "estimated_accuracy": self.estimated_accuracy,
            "label_delay_seconds": self.label_delay_quantiles,
            "drift": self.drift.to_dict() if self.drift else None,
            "multivariate_drift": (
                self.multivariate_drift.to_dict() if self.multivariate_drift else None
            ),
            "prediction_drift": (
                self.prediction_drift.to_dict() if self.prediction_drift else None
            ),
            "anomaly": {
                "ratio": self.anomaly_ratio,
                "threshold": self.anomaly_threshold,
                "score_quantiles": self.anomaly_score_quantiles,
            },
        }


def window_figures(
    *,
    model: str,
    version: str,
    profile: ReferenceProfile,
    inputs: np.ndarray,
    predicted: np.ndarray,
    confidences: np.ndarray,
    probabilities: np.ndarray,
    anomalous: np.ndarray,
    anomaly_scores: np.ndarray,
    labelled_predicted: np.ndarray,
    labelled_true: np.ndarray,
    label_delays: np.ndarray,
    predictions_total: int,
    labelled_total: int,
    detector: InputDriftDetector | None = None,
    multivariate: MultivariateDriftDetector | None = None,
) -> WindowFigures:
    """Compute all figures; each argument is a window already cut to its length.

    Examples
    --------
    See ``tests/monitoring/test_windows.py``: every field is compared with scikit-learn
    and scipy on the same rows.
    """
    detector = detector or InputDriftDetector()
    n_pred = len(predicted)
    drift = None
    if len(inputs):
        drift = detector.evaluate(
            profile.sample,
            profile.edges,
            profile.reference_counts,
            inputs,
            feature_names=profile.feature_names,
        )
    mdrift = None
    # The prediction window's stored anomaly scores: no projection of the inputs at scrape.
    if len(anomaly_scores) and profile.reference_scores is not None:  # older profiles lack them
        mdrift = (multivariate or MultivariateDriftDetector()).evaluate(
            profile.reference_scores, anomaly_scores
        )
    pdrift = None
    if n_pred:
        pdrift = prediction_drift(
            profile.class_share,
            profile.confidence_edges,
            profile.confidence_counts,
            predicted,
            confidences,
        )
    performance = None
    delays = None
    if len(labelled_true):
        performance = classification_report(labelled_true, labelled_predicted)
        delays = _quantiles(label_delays, DELAY_QUANTILES)
    return WindowFigures(
        model=model,
        version=version,
        input_rows=len(inputs),
        prediction_rows=n_pred,
        labelled_rows=len(labelled_true),
        predictions_total=predictions_total,
        labelled_total=labelled_total,
        label_coverage=(labelled_total / predictions_total) if predictions_total else None,
        performance=performance,
        estimated_accuracy=estimated_accuracy(probabilities) if n_pred else None,
        label_delay_quantiles=delays,
        drift=drift,
        multivariate_drift=mdrift,
        prediction_drift=pdrift,
        anomaly_ratio=float(np.mean(anomalous)) if n_pred else None,
        anomaly_score_quantiles=_quantiles(anomaly_scores, SCORE_QUANTILES) if n_pred else None,
        anomaly_threshold=float(profile.anomaly.threshold_),
    )


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> dict[str, float]:
    points = np.quantile(np.asarray(values, dtype=np.float64), qs)
    return {f"p{round(q * 100)}": float(v) for q, v in zip(qs, points, strict=True)}
