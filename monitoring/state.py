"""The shared state: prediction log, feedback, windows and the live pointer, behind one interface.

Several BentoML workers, the ``argus`` CLI and (later) several replicas share one store, so
nothing that matters lives only in one worker's memory. ``StateStore`` is the interface;
``open_state`` picks a backend from a URL: the embedded SQLite file under ``ARGUS_HOME``
(default) or, later, Redis. Nothing SQL-specific crosses this interface.

What is stored, and for how long:

- **Prediction log** -- one ``PredictionRecord`` per predicted row, kept for
  ``retention_seconds`` and at most ``max_rows`` rows (``prune``). Raw inputs are *not*
  logged by default (privacy): a row's inputs are logged only when the record carries them
  or when the store was opened with ``store_inputs=True``.
- **Input window** -- for input drift, a bounded ring of the most recent ``input_window``
  input rows per (model, version), overwritten oldest first; ``input_window=0`` keeps none.
- **Live pointer** -- the live version per model and the append-only history of switches.

Writes come as batches through ``record_batches`` (a ``PredictionBatch`` holds the rows one
request predicted, as arrays; its encoding is also the journal's record format, see
``monitoring/records.py``) or as per-row ``PredictionRecord`` objects through
``record_predictions``.

Durability: ``record_batches``, ``record_predictions`` and ``record_feedback`` return only
once their single transaction is committed, so a record whose response was sent survives
the writer being killed (SIGKILL) right after. Backends may lose the last transactions on
power loss.

Ids (``new_ids``) are UUIDv7-shaped hex strings: 48 bits of Unix milliseconds, then 74
random bits from ``os.urandom``. They sort by creation time (to the millisecond), and the
random part makes collisions across processes and restarts negligible (about 1 in 2**37
even for 2**37 ids created in the same millisecond).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.errors import StateError
from monitoring.records import PredictionBatch, PredictionRecord

ROLLBACK = "rollback"
"""The ``reason`` of a switch made by ``rollback``; history replay treats it as undo."""


class DuplicateIdError(StateError, ValueError):
    """A prediction id is already in the log (ids supplied by clients must be unique)."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


class NoRollbackTargetError(StateError, LookupError):
    """The model has no earlier live version to roll back to."""


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
    """One change of the live pointer."""

    t: float
    version: str
    previous: str | None
    reason: str


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
    """What every backend provides. Methods raise ``StateError`` when storage fails."""

    options: StateOptions

    def new_ids(self, n: int) -> list[str]:
        """``n`` fresh prediction ids, unique across processes and restarts."""
        ...

    def record_predictions(
        self, records: Sequence[PredictionRecord], inputs: np.ndarray | None = None
    ) -> None:
        """Log the rows of one request in one transaction, committed on return.

        ``inputs`` (rows x features, row i belongs to ``records[i]``) feeds the input
        window. Raises ``DuplicateIdError`` if an id is already logged (nothing written).
        """
        ...

    def record_batches(self, batches: Sequence[PredictionBatch]) -> None:
        """Log the rows of several requests in one transaction, committed on return.

        The bulk form of ``record_predictions``, all or nothing: ``DuplicateIdError``
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

    def set_live(self, model: str, version: str, reason: str, t: float) -> None:
        """Make ``version`` live and append the switch to the history.

        A no-op (nothing appended) when ``version`` is already live.
        """
        ...

    def history(self, model: str) -> list[Switch]:
        """Every switch of the model's pointer, oldest first."""
        ...

    def previous_live(self, model: str) -> str:
        """The version ``rollback`` would make live; ``NoRollbackTargetError`` if none."""
        ...

    def rollback(self, model: str, t: float) -> str:
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


def new_ids(n: int, now: float | None = None) -> list[str]:
    """``n`` UUIDv7-shaped ids (32 hex chars) for time ``now`` (default: the clock).

    Examples
    --------
    >>> ids = new_ids(3, now=0.0)
    >>> len(set(ids)), ids[0][:12], ids[0][12]
    (3, '000000000000', '7')
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    prefix = f"{ms:012x}"  # 48-bit milliseconds, then 10 bytes per id, set in strides:
    raw = bytearray(os.urandom(10 * n))
    raw[0::10] = bytes(raw[0::10]).translate(_VERSION_7)  # 0111 xxxx: version 7
    raw[2::10] = bytes(raw[2::10]).translate(_VARIANT_10)  # 10xx xxxx: the RFC variant
    text = raw.hex()
    return [prefix + text[i : i + 20] for i in range(0, 20 * n, 20)]


_VERSION_7 = bytes(0x70 | (b & 0x0F) for b in range(256))
_VARIANT_10 = bytes(0x80 | (b & 0x3F) for b in range(256))


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
        if switch.reason == ROLLBACK and len(stack) >= 2 and stack[-2] == switch.version:
            stack.pop()
        else:
            stack.append(switch.version)
    return stack[-2] if len(stack) >= 2 else None


def open_state(url: str | None, home: Path, **options: object) -> StateStore:
    """Open the shared state named by ``url``.

    ``None`` or ``"sqlite://"`` selects the SQLite file ``home / "state.sqlite3"``;
    ``"sqlite:///abs/path.db"`` an absolute path, ``"sqlite://rel.db"`` a path relative to
    ``home``; a ``?mode=ro`` suffix opens it read-only. ``"redis://[user:password@]host:port/db"``
    (or ``rediss://``) selects the Redis backend; ``?prefix=name:`` namespaces its keys
    (default ``argus:``). ``options`` are the fields of ``StateOptions``.
    """
    try:
        opts = StateOptions(**options)  # type: ignore[arg-type]
    except TypeError as exc:
        known = ", ".join(StateOptions.__dataclass_fields__)
        raise ValueError(f"unknown state option ({exc}); known options: {known}") from None
    home = Path(home).expanduser()
    if url is None or url.startswith("sqlite://"):
        from monitoring.sqlite_state import SQLiteState

        rest = "" if url is None else url[len("sqlite://") :]
        rest, _, query = rest.partition("?")
        if query not in ("", "mode=ro"):
            raise StateError(f"state url {url!r}: the only supported query is ?mode=ro")
        if rest in (":memory:", "/:memory:"):
            raise StateError("state url: an in-memory SQLite database cannot be shared")
        path = home / rest if rest else home / "state.sqlite3"
        return SQLiteState(path, opts, read_only=query == "mode=ro")
    if url.startswith("redis://") or url.startswith("rediss://"):
        try:
            from monitoring.redis_state import RedisState
        except ImportError as exc:
            raise StateError(
                f"state url {url.split('://')[0]}://...: the Redis backend needs the redis "
                f"package ({exc}): pip install 'redis>=5'"
            ) from None
        return RedisState(url, opts)
    raise StateError(f"state url {url!r}: unsupported scheme (use sqlite:// or redis://)")
