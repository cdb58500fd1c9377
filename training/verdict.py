"""Over/under-fitting verdict from the per-epoch curves of a run.

Rules, checked in this order (thresholds are the public constants below, each overridable
by a keyword argument of :func:`fit_verdict`):

underfitting
    At the best epoch both training and validation accuracy are below
    :data:`UNDERFIT_ACCURACY`, or the training loss is still above
    :data:`UNDERFIT_LOSS_FRACTION` of the chance-level loss ``log(k)`` (the loss of a
    uniform guess over ``k`` classes). The net cannot even fit its training rows.
overfitting
    Either the validation loss reached its minimum at least :data:`OVERFIT_EPOCHS_PAST_MIN`
    epochs before the end, finished more than :data:`OVERFIT_VAL_RISE` (relative) above that
    minimum, and the training loss kept falling meanwhile; or, at the best epoch, training
    accuracy exceeds validation accuracy by more than :data:`OVERFIT_ACCURACY_GAP`.
fitting well
    Neither.

The verdict describes the training dynamics; the weights kept are the best epoch's (early
stopping restores them), so an "overfitting" run still delivers its best validation model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from training.monitor import History

VerdictKind = Literal["fitting well", "overfitting", "underfitting"]

#: Underfitting: both accuracies at the best epoch below this.
UNDERFIT_ACCURACY = 0.80
#: Underfitting: training loss at the best epoch above this share of log(k).
UNDERFIT_LOSS_FRACTION = 0.5
#: Overfitting: epochs since the validation-loss minimum, at least.
OVERFIT_EPOCHS_PAST_MIN = 5
#: Overfitting: final validation loss above its minimum by more than this share of it.
OVERFIT_VAL_RISE = 0.10
#: Overfitting: training minus validation accuracy at the best epoch, more than this.
OVERFIT_ACCURACY_GAP = 0.10


@dataclass(frozen=True)
class Verdict:
    """``kind`` is "fitting well", "overfitting" or "underfitting"; ``reason`` one sentence;
    ``numbers`` the figures the rules looked at."""

    kind: VerdictKind
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "numbers": dict(self.numbers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(kind=d["kind"], reason=d["reason"], numbers=dict(d["numbers"]))


def fit_verdict(
    history: History,
    *,
    underfit_accuracy: float = UNDERFIT_ACCURACY,
    underfit_loss_fraction: float = UNDERFIT_LOSS_FRACTION,
    overfit_epochs_past_min: int = OVERFIT_EPOCHS_PAST_MIN,
    overfit_val_rise: float = OVERFIT_VAL_RISE,
    overfit_accuracy_gap: float = OVERFIT_ACCURACY_GAP,
) -> Verdict:
    """Classify a run as fitting well, overfitting or underfitting (rules in the module doc).

    Examples
    --------
    >>> from training.monitor import History
    >>> h = History(train_loss=(2.0, 1.9), val_loss=(2.0, 1.95), train_accuracy=(0.2, 0.25),
    ...             val_accuracy=(0.2, 0.24), iteration_loss=(), best_epoch=2,
    ...             stop_reason="max_epochs", n_classes=10)
    >>> fit_verdict(h).kind
    'underfitting'
    """
    if history.epochs_run == 0:
        raise ValueError("history has no epochs")
    if not 1 <= history.best_epoch <= history.epochs_run:
        raise ValueError(f"best_epoch {history.best_epoch} outside 1..{history.epochs_run}")
    b = history.best_epoch - 1
    chance = math.log(history.n_classes)
    val_min = min(history.val_loss)
    val_min_epoch = history.val_loss.index(val_min) + 1
    val_last = history.val_loss[-1]
    rise = (val_last - val_min) / max(val_min, 1e-12)
    n: dict[str, float] = {
        "epochs_run": history.epochs_run,
        "best_epoch": history.best_epoch,
        "chance_loss": chance,
        "train_loss_best": history.train_loss[b],
        "val_loss_best": history.val_loss[b],
        "train_loss_last": history.train_loss[-1],
        "val_loss_min": val_min,
        "val_loss_min_epoch": val_min_epoch,
        "train_loss_at_val_min": history.train_loss[val_min_epoch - 1],
        "val_loss_last": val_last,
        "val_loss_rise": rise,
        "epochs_past_min": history.epochs_run - val_min_epoch,
        "train_accuracy": history.train_accuracy[b],
        "val_accuracy": history.val_accuracy[b],
        "accuracy_gap": history.train_accuracy[b] - history.val_accuracy[b],
    }

    if n["train_accuracy"] < underfit_accuracy and n["val_accuracy"] < underfit_accuracy:
        return Verdict(
            "underfitting",
            f"train accuracy {n['train_accuracy']:.3f} and validation accuracy "
            f"{n['val_accuracy']:.3f} are both below {underfit_accuracy:.2f}: the net does not "
            "fit even its training rows (more capacity, epochs or learning rate may help)",
            n,
        )
    if n["train_loss_best"] > underfit_loss_fraction * chance:
        return Verdict(
            "underfitting",
            f"training loss {n['train_loss_best']:.3f} is above {underfit_loss_fraction:.2f} x "
            f"the chance-level loss log({history.n_classes}) = {chance:.3f}",
            n,
        )
    train_fell = n["train_loss_last"] < n["train_loss_at_val_min"]
    if n["epochs_past_min"] >= overfit_epochs_past_min and rise > overfit_val_rise and train_fell:
        return Verdict(
            "overfitting",
            f"validation loss rose {100 * rise:.1f}% over the {int(n['epochs_past_min'])} epochs "
            f"after its minimum at epoch {val_min_epoch} while training loss kept falling "
            f"({n['train_loss_at_val_min']:.4f} -> {n['train_loss_last']:.4f}); "
            f"the weights of epoch {history.best_epoch} are kept",
            n,
        )
    if n["accuracy_gap"] > overfit_accuracy_gap:
        return Verdict(
            "overfitting",
            f"train accuracy {n['train_accuracy']:.3f} exceeds validation accuracy "
            f"{n['val_accuracy']:.3f} by {n['accuracy_gap']:.3f} (> {overfit_accuracy_gap:.2f})",
            n,
        )
    return Verdict(
        "fitting well",
        f"validation accuracy {n['val_accuracy']:.3f} (train {n['train_accuracy']:.3f}, gap "
        f"{n['accuracy_gap']:.3f}); validation loss {n['val_loss_best']:.4f} at epoch "
        f"{history.best_epoch}, {100 * rise:.1f}% rise after its minimum",
        n,
    )
