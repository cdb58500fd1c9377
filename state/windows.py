"""The rows one version's window figures rest on, read from the shared state.

``StateWindows.read`` takes a version's input, prediction and labelled windows and its
lifetime counts from any ``StateStore``; ``figures`` hands them to
``monitoring.windows.window_figures``. Every worker and replica that reads the same rows
reports the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitoring.profile import ReferenceProfile
from monitoring.windows import WindowFigures, window_figures
from state.types import Counts, LabelledWindow, PredictionWindow, StateStore


@dataclass(frozen=True, eq=False)
class StateWindows:
    """The rows one version's figures rest on, as read from the shared state."""

    model: str
    version: str
    inputs: np.ndarray
    predictions: PredictionWindow
    labelled: LabelledWindow
    counts: Counts

    @classmethod
    def read(
        cls, state: StateStore, model: str, version: str, input_rows: int, label_rows: int
    ) -> StateWindows:
        return cls(
            model,
            version,
            state.input_window(model, version, input_rows),
            state.prediction_window(model, version, input_rows),
            state.labelled_window(model, version, label_rows),
            state.counts(model, version),
        )

    def figures(self, profile: ReferenceProfile) -> WindowFigures:
        p, lab = self.predictions, self.labelled
        return window_figures(
            model=self.model,
            version=self.version,
            profile=profile,
            inputs=self.inputs,
            predicted=p.labels,
            confidences=p.confidences,
            probabilities=p.probabilities,
            anomalous=p.anomalous,
            anomaly_scores=p.anomaly_scores,
            labelled_predicted=lab.predicted,
            labelled_true=lab.true,
            label_delays=lab.feedback_t - lab.t,
            predictions_total=self.counts.predictions,
            labelled_total=self.counts.labelled,
        )
