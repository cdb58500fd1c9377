"""Training listeners, the per-epoch history and early stopping.

The loop in :mod:`training.loop` calls every :class:`TrainingListener` at the start, after
each minibatch (``on_iteration``), after each epoch (``on_epoch_end``) and at the end, like
DeepLearning4j's ``TrainingListener``. Shipped listeners: :class:`LossListener` (DL4J's
``ScoreIterationListener``) and :class:`ProgressListener` (a tqdm bar over epochs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from tqdm import tqdm


@dataclass(frozen=True)
class EpochMetrics:
    """Figures of one finished epoch (1-based); losses are mean cross-entropy in nats."""

    epoch: int
    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    improved: bool


@dataclass(frozen=True)
class History:
    """Per-epoch curves of a run (index 0 is epoch 1) and the sampled minibatch losses.

    ``best_epoch`` (1-based) is the epoch whose weights the trained model holds;
    ``stop_reason`` is ``"early stopping"`` or ``"max_epochs"``.
    """

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    iteration_loss: tuple[tuple[int, float], ...]
    best_epoch: int
    stop_reason: str
    n_classes: int

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason == "early stopping"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["iteration_loss"] = [list(p) for p in self.iteration_loss]
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            d[key] = list(d[key])
        d["epochs_run"] = self.epochs_run
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(
            train_loss=tuple(float(v) for v in d["train_loss"]),
            val_loss=tuple(float(v) for v in d["val_loss"]),
            train_accuracy=tuple(float(v) for v in d["train_accuracy"]),
            val_accuracy=tuple(float(v) for v in d["val_accuracy"]),
            iteration_loss=tuple((int(i), float(v)) for i, v in d["iteration_loss"]),
            best_epoch=int(d["best_epoch"]),
            stop_reason=str(d["stop_reason"]),
            n_classes=int(d["n_classes"]),
        )


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs.

    An epoch improves when its loss is below the best so far by more than ``min_delta``;
    a NaN loss never improves. After ``patience`` epochs in a row without an improvement
    ``should_stop`` becomes True.

    Examples
    --------
    >>> es = EarlyStopping(patience=2, min_delta=0.0)
    >>> for loss in [1.0, 0.5, 0.6, 0.7]:
    ...     _ = es.update(loss)
    >>> es.best_epoch, es.should_stop
    (2, True)
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = math.inf
        self.best_epoch = 0
        self.epoch = 0
        self.wait = 0
        self.improved = False

    def update(self, val_loss: float) -> EarlyStopping:
        """Record the next epoch's validation loss."""
        self.epoch += 1
        self.improved = val_loss < self.best_loss - self.min_delta  # False for NaN
        if self.improved:
            self.best_loss = val_loss
            self.best_epoch = self.epoch
            self.wait = 0
        else:
            self.wait += 1
        return self

    @property
    def should_stop(self) -> bool:
        return self.epoch > 0 and not self.improved and self.wait >= self.patience


class TrainingListener:
    """Base listener: override the hooks you need; each does nothing by default."""

    def on_train_start(self, max_epochs: int, iterations_per_epoch: int) -> None:
        """Called once before the first minibatch."""

    def on_iteration(self, iteration: int, epoch: int, loss: float) -> None:
        """Called after every minibatch step; ``iteration`` counts from 1 across epochs."""

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        """Called after each epoch's evaluation on the training and validation rows."""

    def on_train_end(self, history: History) -> None:
        """Called once, after the best weights are restored."""


class LossListener(TrainingListener):
    """Record (and print, when ``out`` is given) the minibatch loss every ``log_every``
    iterations, like DL4J's ``ScoreIterationListener``.

    The loss is the minibatch's mean cross-entropy, without the L2 term. Lines go through
    ``tqdm.write`` so they do not tear a progress bar.
    """

    def __init__(self, log_every: int = 10, out: TextIO | None = None) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.log_every = log_every
        self.out = out
        self.scores: list[tuple[int, float]] = []

    def on_iteration(self, iteration: int, epoch: int, loss: float) -> None:
        if iteration % self.log_every:
            return
        self.scores.append((iteration, loss))
        if self.out is not None:
            tqdm.write(f"Score at iteration {iteration} is {loss:.6f}", file=self.out)


class ProgressListener(TrainingListener):
    """A tqdm bar over epochs showing the latest losses and validation accuracy.

    Shown only when ``enabled`` and ``out`` is a terminal.
    """

    def __init__(self, enabled: bool = True, out: TextIO | None = None) -> None:
        self.out = out
        self.enabled = bool(enabled and out is not None and _isatty(out))
        self._bar: tqdm[Any] | None = None

    def on_train_start(self, max_epochs: int, iterations_per_epoch: int) -> None:
        if self.enabled:
            self._bar = tqdm(total=max_epochs, desc="training", unit="epoch", file=self.out)

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                train_loss=f"{metrics.train_loss:.4f}",
                val_loss=f"{metrics.val_loss:.4f}",
                val_acc=f"{metrics.val_accuracy:.4f}",
            )
            self._bar.update(1)

    def on_train_end(self, history: History) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False
