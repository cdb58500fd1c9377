"""The training loop: minibatch SGD, listeners, per-epoch evaluation, early stopping.

Deterministic for a given config: the initial weights come from a generator seeded with
``config.seed``, the minibatch order from one seeded with ``config.seed + 1``, and the loop
runs on ``config.threads`` torch threads (restored afterwards).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig
from training.data import Split
from training.monitor import (
    EarlyStopping,
    EpochMetrics,
    History,
    LossListener,
    ProgressListener,
    TrainingListener,
)
from training.net import MLP, build_model, feature_stats
from training.verdict import Verdict, fit_verdict

__all__ = ["TrainedNet", "Verdict", "evaluate", "fit_verdict", "predict_logits", "train"]

#: Rows per forward pass when evaluating whole parts of the data.
EVAL_CHUNK = 8192


@dataclass(frozen=True)
class TrainedNet:
    """The trained model (best epoch's weights, eval mode) and how it got there."""

    model: MLP
    history: History
    verdict: Verdict
    best_epoch: int
    wall_time_s: float


def predict_logits(model: nn.Module, X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``X`` in eval mode, without gradients, in chunks."""
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(Xt[i : i + EVAL_CHUNK]) for i in range(0, len(Xt), EVAL_CHUNK)])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(X, y)``."""
    logits = predict_logits(model, X)
    loss = float(F.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def train(
    config: TrainConfig,
    split: Split,
    *,
    progress: bool = False,
    out: TextIO | None = sys.stderr,
    listeners: Sequence[TrainingListener] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> TrainedNet:
    """Train :func:`training.net.build_model`'s MLP on ``split`` with early stopping.

    Each epoch shuffles the training rows, steps SGD (Nesterov momentum, L2 on the weights)
    over minibatches of ``config.batch_size``, then evaluates the loss and accuracy on all
    training and validation rows. Training stops after ``config.patience`` epochs without
    a validation-loss improvement of ``config.min_delta`` (or at ``config.max_epochs``) and
    the best epoch's weights are restored.

    Parameters
    ----------
    progress : bool
        Show a tqdm bar over epochs (only when ``out`` is a terminal).
    out : text stream or None
        Where the loss listener prints every ``config.log_every`` iterations; None is quiet.
    listeners : sequence of TrainingListener
        Extra listeners, called after the built-in ones.
    clock : callable
        Returns seconds; used for ``wall_time_s``.

    Raises
    ------
    ValueError
        Naming ``learning_rate`` when the loss becomes NaN or infinite.
    """
    start = clock()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, split, progress, out, listeners, start, clock)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    config: TrainConfig,
    split: Split,
    progress: bool,
    out: TextIO | None,
    extra: Sequence[TrainingListener],
    start: float,
    clock: Callable[[], float],
) -> TrainedNet:
    X_train = torch.as_tensor(np.asarray(split.X_train, dtype=np.float32))
    y_train = torch.as_tensor(np.asarray(split.y_train, dtype=np.int64))
    X_val = torch.as_tensor(np.asarray(split.X_val, dtype=np.float32))
    y_val = torch.as_tensor(np.asarray(split.y_val, dtype=np.int64))
    n_classes = split.n_classes
    mean, std = feature_stats(split.X_train)
    model = build_model(config, X_train.shape[1], n_classes, mean, std)

    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if not name.endswith("weight")]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": config.l2}, {"params": biases, "weight_decay": 0.0}],
        lr=config.learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    order = torch.Generator().manual_seed(config.seed + 1)
    loss_listener = LossListener(config.log_every, out)
    listeners: list[TrainingListener] = [loss_listener, ProgressListener(progress, out), *extra]
    stopper = EarlyStopping(config.patience, config.min_delta)
    curves: dict[str, list[float]] = {k: [] for k in ("tl", "vl", "ta", "va")}
    best_state = copy.deepcopy(model.state_dict())
    n = len(y_train)
    per_epoch = math.ceil(n / config.batch_size)
    for listener in listeners:
        listener.on_train_start(config.max_epochs, per_epoch)

    iteration = 0
    stop_reason = "max_epochs"
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(X_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            iteration += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(
                    f"training diverged: loss is {value} at iteration {iteration} (epoch "
                    f"{epoch}); lower learning_rate (now {config.learning_rate})"
                )
            for listener in listeners:
                listener.on_iteration(iteration, epoch, value)

        train_loss, train_acc = evaluate(model, X_train, y_train)
        val_loss, val_acc = evaluate(model, X_val, y_val)
        for key, v in (("tl", train_loss), ("vl", val_loss), ("ta", train_acc), ("va", val_acc)):
            curves[key].append(v)
        stopper.update(val_loss)
        if stopper.improved:
            best_state = copy.deepcopy(model.state_dict())
        metrics = EpochMetrics(epoch, train_loss, val_loss, train_acc, val_acc, stopper.improved)
        for listener in listeners:
            listener.on_epoch_end(metrics)
        if stopper.should_stop:
            stop_reason = "early stopping"
            break

    model.load_state_dict(best_state)
    model.eval()
    history = History(
        train_loss=tuple(curves["tl"]),
        val_loss=tuple(curves["vl"]),
        train_accuracy=tuple(curves["ta"]),
        val_accuracy=tuple(curves["va"]),
        iteration_loss=tuple(loss_listener.scores),
        best_epoch=max(stopper.best_epoch, 1),
        stop_reason=stop_reason,
        n_classes=n_classes,
    )
    for listener in listeners:
        listener.on_train_end(history)
    return TrainedNet(
        model=model,
        history=history,
        verdict=fit_verdict(history),
        best_epoch=history.best_epoch,
        wall_time_s=clock() - start,
    )
