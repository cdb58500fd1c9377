from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score, log_loss

from training.config import TrainConfig
from training.data import Split
from training.loop import TrainedNet, evaluate, predict_logits, train
from training.monitor import EarlyStopping, EpochMetrics, History, TrainingListener
from training.verdict import (
    OVERFIT_ACCURACY_GAP,
    OVERFIT_EPOCHS_PAST_MIN,
    UNDERFIT_ACCURACY,
    fit_verdict,
)

# ---------------------------------------------------------------- early stopping


def test_early_stopping_on_a_synthetic_validation_curve() -> None:
    # falls to its minimum at epoch 10, then rises
    curve = [1.0 / e for e in range(1, 11)] + [0.1 + 0.01 * k for k in range(1, 30)]
    es = EarlyStopping(patience=5, min_delta=0.0)
    stopped_at = None
    for epoch, loss in enumerate(curve, start=1):
        es.update(loss)
        if es.should_stop:
            stopped_at = epoch
            break
    assert (es.best_epoch, stopped_at, es.best_loss) == (10, 15, 0.1)


def test_early_stopping_min_delta_ignores_tiny_improvements() -> None:
    es = EarlyStopping(patience=3, min_delta=0.01)
    for loss in [1.0, 0.995, 0.992, 0.991]:  # never 0.01 better than 1.0
        es.update(loss)
    assert es.best_epoch == 1 and es.should_stop
    es = EarlyStopping(patience=3, min_delta=0.01)
    for loss in [1.0, 0.995, 0.985, 0.98]:
        es.update(loss)
    assert es.best_epoch == 3 and not es.should_stop


def test_early_stopping_nan_never_improves_and_patience_zero() -> None:
    es = EarlyStopping(patience=2)
    for loss in [0.5, math.nan, math.nan]:
        es.update(loss)
    assert es.best_epoch == 1 and es.should_stop
    es = EarlyStopping(patience=0)
    assert not es.update(1.0).should_stop
    assert es.update(1.0).should_stop
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)


def _noisy_val_split() -> Split:
    """Learnable training rows, validation rows with random labels: the validation loss
    must turn upwards as the net grows confident, so early stopping fires."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    y_noise = rng.integers(0, 2, size=100)
    return Split(X[:200], y[:200], X[200:300], y_noise, X[300:], y[300:])


def test_train_stops_early_and_restores_the_best_epoch() -> None:
    split = _noisy_val_split()
    c = TrainConfig(hidden=(32,), max_epochs=300, patience=4, min_delta=0.0, learning_rate=0.05)
    net = train(c, split, out=None)
    h = net.history
    assert h.stop_reason == "early stopping" and h.stopped_early
    assert h.epochs_run == net.best_epoch + c.patience < c.max_epochs
    assert min(h.val_loss) == h.val_loss[net.best_epoch - 1]
    # the returned weights are the best epoch's, not the last one's
    loss, acc = evaluate(net.model, torch.as_tensor(split.X_val), torch.as_tensor(split.y_val))
    assert loss == pytest.approx(h.val_loss[net.best_epoch - 1], rel=1e-6)
    assert acc == pytest.approx(h.val_accuracy[net.best_epoch - 1])
    assert not net.model.training


# ---------------------------------------------------------------- verdict


def _history(
    tl: ArrayLike,
    vl: ArrayLike,
    ta: ArrayLike,
    va: ArrayLike,
    best: int | None = None,
    k: int = 10,
) -> History:
    def floats(a: ArrayLike) -> tuple[float, ...]:
        return tuple(float(v) for v in np.asarray(a, dtype=np.float64))

    best = best if best is not None else int(np.argmin(np.asarray(vl))) + 1
    return History(
        train_loss=floats(tl),
        val_loss=floats(vl),
        train_accuracy=floats(ta),
        val_accuracy=floats(va),
        iteration_loss=(),
        best_epoch=best,
        stop_reason="max_epochs",
        n_classes=k,
    )


def test_verdict_fitting_well() -> None:
    e = np.arange(1, 31)
    h = _history(1 / e, 1 / e + 0.05, 1 - 0.1 / e, 0.97 - 0.1 / e)
    v = fit_verdict(h)
    assert v.kind == "fitting well", v.reason
    assert v.numbers["best_epoch"] == 30 and v.numbers["epochs_past_min"] == 0


def test_verdict_overfitting_from_a_rising_validation_loss() -> None:
    e = np.arange(1, 41)
    tl = 1 / e
    vl = np.where(e <= 15, 1 / e + 0.05, 1 / 15 + 0.05 + 0.01 * (e - 15))
    h = _history(tl, vl, np.full(40, 0.99), np.full(40, 0.95))
    v = fit_verdict(h)
    assert v.kind == "overfitting"
    assert "validation loss rose" in v.reason
    assert v.numbers["val_loss_min_epoch"] == 15 and v.numbers["epochs_past_min"] == 25
    # same curve but the training loss stopped falling: not this rule
    flat = np.where(e <= 15, tl, tl[14])
    assert fit_verdict(_history(flat, vl, np.full(40, 0.99), np.full(40, 0.95))).kind == (
        "fitting well"
    )
    # a rise that is too recent is not enough
    short = _history(tl[:18], vl[:18], np.full(18, 0.99), np.full(18, 0.95))
    assert short.epochs_run - 15 < OVERFIT_EPOCHS_PAST_MIN
    assert fit_verdict(short).kind == "fitting well"


def test_verdict_overfitting_from_an_accuracy_gap() -> None:
    e = np.arange(1, 21)
    h = _history(1 / e / 10, 1 / e + 0.3, np.full(20, 1.0), np.full(20, 0.85))
    v = fit_verdict(h)
    assert v.kind == "overfitting" and v.numbers["accuracy_gap"] > OVERFIT_ACCURACY_GAP
    assert "exceeds validation accuracy" in v.reason


def test_verdict_underfitting_low_accuracy_or_loss_near_chance() -> None:
    e = np.arange(1, 21)
    low = _history(2.0 - e / 100, 2.0 - e / 100, np.full(20, 0.45), np.full(20, 0.43))
    v = fit_verdict(low)
    assert v.kind == "underfitting" and v.numbers["train_accuracy"] < UNDERFIT_ACCURACY
    assert v.numbers["chance_loss"] == pytest.approx(math.log(10))
    # accuracy passes but the loss is still most of log(k)
    lossy = _history(np.full(5, 2.0), np.full(5, 2.0), np.full(5, 0.9), np.full(5, 0.9))
    v = fit_verdict(lossy)
    assert v.kind == "underfitting" and "chance-level" in v.reason


def test_verdict_rejects_an_empty_history() -> None:
    with pytest.raises(ValueError, match="no epochs"):
        fit_verdict(_history([], [], [], [], best=0))


# ---------------------------------------------------------------- the loop


def test_history_is_json_ready_and_round_trips(small_trained: TrainedNet) -> None:
    h = small_trained.history
    assert h.epochs_run == 10 and len(h.val_accuracy) == 10
    d = json.loads(json.dumps(h.to_dict()))
    assert History.from_dict(d) == h
    assert d["epochs_run"] == 10


def test_epoch_figures_match_sklearn(small_trained: TrainedNet, digits_split: Split) -> None:
    logits = predict_logits(small_trained.model, digits_split.X_val).double()
    probs = torch.softmax(logits, dim=1).numpy()
    best = small_trained.best_epoch - 1
    h = small_trained.history
    assert h.val_loss[best] == pytest.approx(
        log_loss(digits_split.y_val, probs, labels=range(10)), rel=1e-4
    )
    assert h.val_accuracy[best] == pytest.approx(
        accuracy_score(digits_split.y_val, probs.argmax(1))
    )


def test_training_is_deterministic_given_the_seed(digits_split: Split) -> None:
    c = TrainConfig(max_epochs=3)
    a, b = train(c, digits_split, out=None), train(c, digits_split, out=None)
    assert a.history == b.history
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    other = train(c.with_overrides(seed=7), digits_split, out=None)
    assert other.history.train_loss != a.history.train_loss


def test_loss_listener_prints_and_records_every_log_every_iterations(
    digits_split: Split,
) -> None:
    out = io.StringIO()
    net = train(TrainConfig(max_epochs=2, log_every=7), digits_split, out=out)
    iterations = 2 * math.ceil(len(digits_split.y_train) / 64)
    scores = net.history.iteration_loss
    assert [i for i, _ in scores] == list(range(7, iterations + 1, 7))
    lines = out.getvalue().splitlines()
    assert len(lines) == len(scores)
    assert lines[0] == f"Score at iteration 7 is {scores[0][1]:.6f}"
    assert "\r" not in out.getvalue()  # no progress bar on a non-terminal stream


class _Recorder(TrainingListener):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.metrics: list[EpochMetrics] = []

    def on_train_start(self, max_epochs: int, iterations_per_epoch: int) -> None:
        self.events.append(f"start {max_epochs} {iterations_per_epoch}")

    def on_iteration(self, iteration: int, epoch: int, loss: float) -> None:
        self.events.append("it")

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.metrics.append(metrics)
        self.events.append("epoch")

    def on_train_end(self, history: History) -> None:
        self.events.append("end")


def test_custom_listeners_see_every_hook_in_order(digits_split: Split) -> None:
    rec = _Recorder()
    per_epoch = math.ceil(len(digits_split.y_train) / 64)
    net = train(TrainConfig(max_epochs=2), digits_split, out=None, listeners=[rec])
    assert rec.events[0] == f"start 2 {per_epoch}"
    assert rec.events[1:] == (["it"] * per_epoch + ["epoch"]) * 2 + ["end"]
    assert [m.val_loss for m in rec.metrics] == list(net.history.val_loss)
    assert rec.metrics[0].improved


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_when_asked(digits_split: Split) -> None:
    c = TrainConfig(max_epochs=2, log_every=10_000)
    tty = _FakeTerminal()
    train(c, digits_split, progress=True, out=tty)
    assert "training" in tty.getvalue() and "2/2" in tty.getvalue()
    quiet = _FakeTerminal()
    train(c, digits_split, progress=False, out=quiet)
    assert quiet.getvalue() == ""


def test_threads_are_restored_and_divergence_names_the_learning_rate(
    digits_split: Split,
) -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="learning_rate"):
        train(TrainConfig(learning_rate=1e6, max_epochs=3), digits_split, out=None)
    assert torch.get_num_threads() == before


def test_wall_time_uses_the_given_clock(digits_split: Split) -> None:
    ticks = iter(range(100))
    net = train(TrainConfig(max_epochs=1), digits_split, out=None, clock=lambda: next(ticks))
    assert net.wall_time_s == 1
