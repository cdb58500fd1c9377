"""One training run end to end, from a config to an exportable, evaluated model.

load_dataset -> stratified split -> train (listeners, early stopping, verdict) -> optional
gradient check -> temperature calibration on validation -> evaluation of the calibrated
model on test -> ONNX export and parity check on test. Registration in the model store is
not done here (see ``models/``); the outcome holds everything it needs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np

from monitoring.performance import classification_report
from training import gradcheck as _gradcheck
from training.calibration import fit_temperature
from training.config import TrainConfig
from training.data import load_dataset, split_dataset
from training.export import calibrated_probabilities, export_onnx, parity_check
from training.loop import predict_logits, train
from training.outcome import DatasetInfo, TrainingOutcome

#: Training rows the optional gradient check differentiates.
GRADCHECK_ROWS = 16
#: Parameters it checks at most (a seeded subset beyond this; all of the digits net's 7510).
GRADCHECK_MAX_PARAMS = 10_000
#: Largest tolerated |onnxruntime - torch| probability difference.
PARITY_TOLERANCE = 1e-5


def run(
    config: TrainConfig,
    *,
    progress: bool = False,
    gradient_check: bool = False,
    out: TextIO | None = sys.stderr,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainingOutcome:
    """Run the whole training pipeline for ``config``.

    Parameters
    ----------
    progress : bool
        Show a progress bar over epochs (when ``out`` is a terminal).
    gradient_check : bool
        Check the trained net's gradients on :data:`GRADCHECK_ROWS` training rows.
    out : text stream or None
        Receives the loss listener's lines; None is quiet.

    Raises
    ------
    DataError
        Unusable data (from :func:`training.data.load_dataset` and the split).
    ExportError
        When the export fails or the ONNX graph disagrees with torch.
    """
    start = clock()
    ds = load_dataset(config.source, config.label_column)
    split = split_dataset(ds, config.val_fraction, config.test_fraction, config.seed)
    trained = train(config, split, progress=progress, out=out, clock=clock)
    model = trained.model

    grad = None
    if gradient_check:
        grad = _gradcheck.gradient_check(
            model,
            split.X_train[:GRADCHECK_ROWS],
            split.y_train[:GRADCHECK_ROWS],
            n_params=GRADCHECK_MAX_PARAMS,
            seed=config.seed,
        )

    val_logits = predict_logits(model, split.X_val).numpy()
    calibration = fit_temperature(val_logits, split.y_val, n_bins=config.calibration_bins)
    T = calibration.temperature

    def torch_fn(X: np.ndarray) -> np.ndarray:
        return calibrated_probabilities(model, T, X)

    test_probabilities = torch_fn(split.X_test)
    evaluation = classification_report(
        split.y_test, test_probabilities.argmax(axis=1), labels=list(range(ds.n_classes))
    )
    onnx_bytes = export_onnx(model, T, ds.n_features, split.X_train[:8])
    parity = parity_check(onnx_bytes, torch_fn, split.X_test, tolerance=PARITY_TOLERANCE)

    return TrainingOutcome(
        onnx_bytes=onnx_bytes,
        config=config,
        dataset=DatasetInfo.of(ds),
        split_sizes=split.sizes(),
        history=trained.history.to_dict(),
        verdict=trained.verdict,
        best_epoch=trained.best_epoch,
        calibration=calibration,
        evaluation=evaluation,
        parity_max_abs_diff=parity,
        gradient_check=grad,
        training_time_s=trained.wall_time_s,
        wall_time_s=clock() - start,
        X_train=split.X_train,
        X_val=split.X_val,
        y_val=split.y_val,
        val_probabilities=torch_fn(split.X_val),
    )
