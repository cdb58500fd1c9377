"""The shared state's interface and the types that cross it.

Several BentoML workers, the ``argus`` CLI and several replicas share one store, so
nothing that matters lives only in one worker's memory (docs/architecture.md#shared-state).
``StateStore`` is the interface both backends implement (``state/sqlite_store.py``,
``state/redis_store.py``); ``state/opener.py`` picks one from a URL. Nothing SQL- or
Redis-specific crosses this interface.

What is stored, and for how long:

- **Prediction log** -- every predicted row, kept for ``retention_seconds`` and at most
  ``max_rows`` rows (``prune``). Raw inputs are *not* logged unless the store was opened
  with ``store_inputs=True`` (privacy).
- **Input window** -- for input drift, a bounded ring of the most recent ``input_window``
  input rows per (model, version), overwritten oldest first; ``input_window=0`` keeps none.
- **Live pointer** -- the live version per model and the append-only history of switches.

Writes come as ``PredictionBatch`` objects (the rows one request predicted, as arrays;
``state/records.py``) through ``record_batches``, and labels through ``record_feedback``.
Both return only once their single transaction is committed, so a record whose response
was sent survives the writer being killed (SIGKILL) right after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from errors import StateError
from state.records import Outcome, PredictionBatch, PredictionRecord

ErrorHook = Callable[[str, StateError], None]
"""Called with (operation, error) for a failure no caller waits for (a prune after a
committed write, a background ingestion); the service counts it in
``argus_state_errors_total{operation}``."""

ROLLBACK = "rollback"
"""The ``reason`` of a switch made by ``rollback``; history replay treats it as undo."""
AUTO_ROLLBACK, AUTO_PROMOTE = "auto_rollback", "auto_promote"
"""The reasons of the guard's switches; an automatic rollback is an undo too."""
UNDO = frozenset({ROLLBACK, AUTO_ROLLBACK})

RESTORED = "restored"
"""The ``reason`` of ``restore_live``: a worker re-asserted the version it serves after the
state lost the pointer (a Redis restarted empty, say)."""

DEFAULT = "default"
"""The ``reason`` recorded for the version that served without a pointer (the newest)
when the first switch of a model is made, so that ``rollback`` can return to it."""


@dataclass(frozen=True)
class FeedbackRecord:
    """A label accepted by ``record_feedback``, joined to its prediction."""

    id: str
    model: str
    version: str
    label: int
    true_label: int
    t: float
    feedback_t: float

    @property
    def delay(self) -> float:
        """Seconds from the prediction to its label."""
        return self.feedback_t - self.t

    @property
    def correct(self) -> bool:
        return self.label == self.true_label


@dataclass(frozen=True)
class FeedbackResult:
    """Outcome of one ``record_feedback`` call; id lists keep the order of the request."""

    accepted: list[str]
    unknown_ids: list[str]
    duplicate_ids: list[str]
    accepted_records: list[FeedbackRecord]


@dataclass(frozen=True, eq=False)
class PredictionWindow:
    """The last ``n`` predictions of a version, oldest first (``probabilities`` is n x k)."""

    labels: np.ndarray
    confidences: np.ndarray
    probabilities: np.ndarray
    anomaly_scores: np.ndarray
    anomalous: np.ndarray
    t: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class LabelledWindow:
    """The last ``m`` labelled predictions of a version, ordered by feedback time."""

    predicted: np.ndarray
    true: np.ndarray
    t: np.ndarray
    feedback_t: np.ndarray

    def __len__(self) -> int:
        return len(self.predicted)


@dataclass(frozen=True)
class Counts:
    """Lifetime totals for a version (not reduced by ``prune``), for label coverage."""

    predictions: int
    labelled: int


@dataclass(frozen=True)
class Switch:
    """One change of the live pointer: who made it (``actor``: ``cli``, ``http``,
    ``guard``) and, for the guard's, why (``detail``: the rule, figures and rows)."""

    t: float
    version: str
    previous: str | None
    reason: str
    actor: str | None = None
    detail: dict[str, Any] | None = None


SHADOW, CANARY = "shadow", "canary"
PROMOTE = "promote"
"""The ``reason`` of a switch that made a candidate live."""


@dataclass(frozen=True)
class Candidate:
    """A version tried beside the live one, set per model in the shared state.

    ``role`` ``"shadow"``: it also predicts a ``share`` (0 to 1) of the rows the live version
    answers, off the response path. ``"canary"``: it answers a ``share`` of the requests.
    """

    role: str
    version: str
    share: float
    t: float

    def __post_init__(self) -> None:
        if self.role not in (SHADOW, CANARY):
            raise ValueError(f"role must be {SHADOW!r} or {CANARY!r}, got {self.role!r}")
        if not self.version:
            raise ValueError("version must be a non-empty string")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {self.share!r}")


@dataclass(frozen=True)
class FiguresPoint:
    """One snapshot of a version's window figures (``figures``: name -> number or None)."""

    model: str
    version: str
    t: float
    figures: dict[str, float | None]


@dataclass(frozen=True)
class LiveMarker:
    """Cheap to poll: ``serial`` grows by one at every switch of the model's pointer."""

    version: str | None
    serial: int


@dataclass(frozen=True)
class StateOptions:
    """Backend-independent knobs; every ``open_state`` keyword lands here.

    input_window: input rows kept per version for drift (0 disables the ring).
    store_inputs: also log each row's inputs with its prediction (off: privacy).
    retention_seconds / max_rows: the prediction log's bounds, enforced by ``prune``.
    prune_every: the record methods call ``prune`` after this many rows written by the
        process (0: never; then the caller prunes).
    busy_timeout: seconds a writer waits for another writer before failing.
    """

    input_window: int = 1000
    store_inputs: bool = False
    retention_seconds: float = 7 * 24 * 3600.0
    max_rows: int = 1_000_000
    prune_every: int = 1000
    busy_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("input_window", "prune_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows!r}")
        if not self.retention_seconds > 0:
            raise ValueError(f"retention_seconds must be > 0, got {self.retention_seconds!r}")
        if not self.busy_timeout >= 0:
            raise ValueError(f"busy_timeout must be >= 0, got {self.busy_timeout!r}")

    def as_kept(self, batch: PredictionBatch) -> PredictionBatch:
        """``batch`` without its raw inputs when no store keeps them (no drift window, no
        input logging), so they are neither journaled nor sent."""
        if self.input_window == 0 and not self.store_inputs:
            return PredictionBatch(**{**batch.__dict__, "inputs": None})
        return batch


class StateStore(Protocol):
    """What every backend provides. Methods raise ``errors.StateError`` when storage fails."""

    options: StateOptions
    on_error: ErrorHook | None

    def new_ids(self, n: int) -> list[str]:
        """``n`` fresh prediction ids, unique across processes and restarts."""
        ...

    def record_batches(self, batches: Sequence[PredictionBatch]) -> None:
        """Log the rows of several requests in one transaction, committed on return.

        All or nothing: ``DuplicateIdError``
        (its ``ids`` the ones already logged) if any id is already logged, ``ValueError``
        if an id repeats across ``batches``; nothing is written then. A batch's
        ``inputs`` feed its version's input window (when ``input_window > 0``) and are
        logged with the rows only with ``store_inputs``.
        """
        ...

    def record_feedback(self, items: Sequence[tuple[str, int]], t: float) -> FeedbackResult:
        """Attach true labels by id, atomically. The first label of an id wins: later
        ones, and repeats within ``items``, are duplicates; ids never logged are unknown.
        """
        ...

    def lookup(self, ids: Sequence[str]) -> dict[str, PredictionRecord]:
        """The logged records among ``ids`` (missing ids are absent from the dict)."""
        ...

    def outcomes(self, ids: Sequence[str]) -> dict[str, Outcome]:
        """``lookup`` cut down to the version, predicted label and true label of each row:
        a comparison over thousands of rows reads no probabilities nor inputs."""
        ...

    def input_window(self, model: str, version: str, n: int) -> np.ndarray:
        """The last ``n`` input rows (float64, oldest first); shape (0, 0) when none."""
        ...

    def prediction_window(self, model: str, version: str, n: int) -> PredictionWindow:
        """The last ``n`` predictions of the version, oldest first."""
        ...

    def labelled_window(self, model: str, version: str, m: int) -> LabelledWindow:
        """The ``m`` most recently labelled predictions, ordered by feedback time."""
        ...

    def counts(self, model: str, version: str) -> Counts:
        """Lifetime prediction and label totals of the version."""
        ...

    def get_live(self, model: str) -> str | None:
        """The live version, or ``None`` when no pointer was ever set."""
        ...

    def live_marker(self, model: str) -> LiveMarker:
        """The live version and a switch serial; one cheap read, for polling workers."""
        ...

    def set_live(
        self,
        model: str,
        version: str,
        reason: str,
        t: float,
        *,
        default: str | None = None,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
        expected_live: str | None = None,
    ) -> bool:
        """Make ``version`` live and append the switch to the history; False (nothing
        changed) when ``expected_live`` is given and is not the live version any more.

        A no-op (nothing appended) when ``version`` is already live. ``default`` names the
        version that serves while the model has no pointer (the newest stored): if no
        pointer is set yet, it is recorded first, with reason ``DEFAULT``, so that a
        ``rollback`` after this switch returns to what was serving before it.
        """
        ...

    def restore_live(self, model: str, version: str, t: float, *, actor: str | None = None) -> bool:
        """Set the pointer to ``version`` with reason ``RESTORED`` only if the model has
        no pointer (the state lost it); True when this call set it. Of several processes
        restoring at once exactly one succeeds."""
        ...

    def history(self, model: str) -> list[Switch]:
        """Every switch of the model's pointer, oldest first."""
        ...

    def get_candidate(self, model: str) -> Candidate | None:
        """The model's shadow or canary, or ``None``."""
        ...

    def set_candidate(self, model: str, candidate: Candidate | None) -> None:
        """Set (or, with ``None``, end) the model's shadow or canary."""
        ...

    def recent_ids(self, model: str, version: str, n: int) -> list[str]:
        """The ids of the version's last ``n`` logged rows, oldest first."""
        ...

    def put_doc(self, name: str, doc: dict[str, Any]) -> None:
        """Store a small JSON document under ``name`` (replacing the last one)."""
        ...

    def get_doc(self, name: str) -> dict[str, Any] | None:
        """The document stored under ``name``, or ``None``."""
        ...

    def labelled_ids(self, model: str, version: str, m: int) -> list[str]:
        """The ids of the version's ``m`` most recently labelled rows, in label order."""
        ...

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; True when ``holder``
        holds it (it was free, expired, or already its own)."""
        ...

    def record_figures(self, point: FiguresPoint, keep_seconds: float, keep_points: int) -> None:
        """Append one point of the figures' history and trim the model's history to the
        last ``keep_seconds`` and ``keep_points`` points."""
        ...

    def figures_since(self, model: str, since: float) -> list[FiguresPoint]:
        """The model's history points with ``t >= since``, oldest first."""
        ...

    def previous_live(self, model: str) -> str:
        """The version ``rollback`` would make live; ``NoRollbackTargetError`` if none."""
        ...

    def rollback(
        self,
        model: str,
        t: float,
        *,
        reason: str = ROLLBACK,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Make live the version that was live before the current one; return it.

        Rollbacks undo switches in turn (A, B, C live -> rollback B -> rollback A);
        ``NoRollbackTargetError`` when nothing was live before.
        """
        ...

    def prune(self, now: float) -> int:
        """Drop log rows older than ``retention_seconds`` and beyond the newest
        ``max_rows``; return how many log rows were removed."""
        ...

    def close(self) -> None:
        """Release this process's connections; the store is unusable afterwards."""
        ...
