"""What the SQLite and Redis backends share, written once.

Each backend (``state/sqlite_store.py``, ``state/redis_store.py``) keeps only what is
its own -- SQL or Lua, and how rows are laid out -- and inherits from ``Backend``:
ids, the live-pointer reads that derive from others, the rollback target, the prune
cadence after writes, and how a failure that no caller waits for (a prune after a write
that succeeded) is reported: logged and passed to ``on_error``, which the service counts
in ``argus_state_errors_total{operation}``. The plain functions check what both accept.
"""

from __future__ import annotations

import logging
import operator
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence

import numpy as np

from errors import NoRollbackTargetError, StateError
from state.ids import new_ids
from state.types import UNDO, ErrorHook, LiveMarker, PredictionWindow, StateOptions, Switch

log = logging.getLogger("argus.state")


class Backend(ABC):
    """The shared half of a ``StateStore``; subclasses provide the storage primitives."""

    def __init__(self, options: StateOptions | None = None) -> None:
        self.options = options or StateOptions()
        self.on_error: ErrorHook | None = None
        self._unpruned = 0

    # -- primitives each backend provides ------------------------------------------------

    @abstractmethod
    def live_marker(self, model: str) -> LiveMarker: ...

    @abstractmethod
    def history(self, model: str) -> list[Switch]: ...

    @abstractmethod
    def prune(self, now: float) -> int: ...

    # -- written once --------------------------------------------------------------------

    def new_ids(self, n: int) -> list[str]:
        return new_ids(n)

    def get_live(self, model: str) -> str | None:
        return self.live_marker(model).version

    def previous_live(self, model: str) -> str:
        return rollback_target_of(model, self.history(model))

    def report(self, operation: str, exc: StateError) -> None:
        """A failure nobody waits for: log it and hand it to ``on_error``."""
        log.error("shared state: %s failed: %s", operation, exc)
        if self.on_error is not None:
            self.on_error(operation, exc)

    def _written(self, rows: int, t: float) -> None:
        """After ``rows`` rows were committed at time ``t``: prune every ``prune_every``
        rows. A failed prune does not fail the write (its rows are committed)."""
        self._unpruned += rows
        if self.options.prune_every and self._unpruned >= self.options.prune_every:
            self._unpruned = 0
            try:
                self.prune(t)
            except StateError as exc:
                self.report("prune", exc)


def rollback_target(history: Sequence[Switch]) -> str | None:
    """Replay a model's switches as a stack (switch = push, rollback = pop) and return
    the version below the current one, i.e. what ``rollback`` should make live.

    Examples
    --------
    >>> h = [Switch(1.0, "a", None, "activate"), Switch(2.0, "b", "a", "activate"),
    ...      Switch(3.0, "a", "b", "rollback")]
    >>> rollback_target(h) is None, rollback_target(h[:2])
    (True, 'a')
    """
    stack: list[str] = []
    for switch in history:
        if switch.reason in UNDO and len(stack) >= 2 and stack[-2] == switch.version:
            stack.pop()
        else:
            stack.append(switch.version)
    return stack[-2] if len(stack) >= 2 else None


def rollback_target_of(model: str, history: list[Switch]) -> str:
    """``rollback_target``, or ``NoRollbackTargetError`` naming the model."""
    target = rollback_target(history)
    if target is None:
        raise NoRollbackTargetError(f"model {model!r} has no earlier live version to roll back to")
    return target


def checked_feedback(items: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """``items`` as (str id, int label) pairs; ``ValueError`` naming the first bad item."""
    checked = []
    for position, (id_, label) in enumerate(items):
        try:
            checked.append((str(id_), operator.index(label)))
        except TypeError:
            raise ValueError(f"items[{position}]: label {label!r} is not an int") from None
    return checked


def check_unique(ids: Sequence[str]) -> None:
    """``ValueError`` naming the ids that repeat within one call."""
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"records: ids repeated within one call: {repeated[:5]}")


def window_length(n: int, name: str) -> int:
    """A window length as an int >= 0; ``ValueError`` naming the parameter otherwise."""
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


def empty_prediction_window() -> PredictionWindow:
    return PredictionWindow(
        labels=np.empty(0, dtype=np.int64),
        confidences=np.empty(0),
        probabilities=np.empty((0, 0)),
        anomaly_scores=np.empty(0),
        anomalous=np.empty(0, dtype=bool),
        t=np.empty(0),
    )
