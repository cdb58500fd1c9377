"""How a process that records or reads predictions holds the shared state: ``SharedState``.

``SharedState`` is the one interface the service and the CLI use, whichever store is
behind it. It has two forms (docs/architecture.md#shared-state):

* ``WriteThroughState`` -- every write goes straight to the store. Replicas on several
  machines (Redis) use it, since they cannot read each other's journal files.
* ``JournaledState`` -- a write-behind prediction log, described below. One machine
  (SQLite, the default) uses it.

``JournaledState``: a per-process journal file in front of the shared state.

The hot path of ``/predict`` must make every answered prediction durable before the
response leaves, and it must stay cheap. A transaction per request in the shared store
costs far more than the model (WAL pages for every table and index a row touches). So a
request appends one framed record to its process's journal file instead: one
``os.write`` of about a kilobyte, durable against the process being killed the moment it
returns (the data is in the kernel's page cache; a power loss may lose the tail, as with
SQLite's ``synchronous=NORMAL``). The records are then ingested into the real store in
large batches:

* by a background thread in the writing process (``ingest_every`` seconds), and
* by ANY process on this machine before it reads the store (``lookup``, windows,
  counts, feedback), so a reader always sees every prediction answered before its read
  started — the join by ``/feedback`` on another worker included.

Ingestion is exactly-once in effect: each journal file's progress is kept in a sidecar
``.offset`` file under a per-journal lock, and re-ingesting a record after a crash is
harmless because prediction ids are unique (rows whose id is already stored are skipped).
A journal whose owner died (its ``.owner`` lock is free) is ingested by whoever comes
next and then deleted; a live owner rotates its file every ``rotate_bytes``.

Client-supplied ids are checked against the store at request time (``check_ids``); two
requests racing with the same new id on different processes are resolved at ingestion:
the first one ingested keeps the id, the other rows are dropped and counted in
``dropped_duplicates``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from errors import DuplicateIdError, StateError
from state.backend import check_unique
from state.journal import Journal, read_frames, read_offset, write_offset
from state.records import PredictionBatch, PredictionRecord
from state.types import (
    ROLLBACK,
    Candidate,
    Counts,
    ErrorHook,
    FeedbackResult,
    FiguresPoint,
    LabelledWindow,
    LiveMarker,
    PredictionWindow,
    StateStore,
    Switch,
)

log = logging.getLogger("argus.journal")


class SharedState(ABC):
    """A ``StateStore`` as a recording or reading process holds it.

    Every ``StateStore`` method is here, delegating to ``inner`` (the backend); reads of
    the log first call ``ingest``, which a subclass with pending local writes overrides.
    ``record_answered`` is what the request path calls to make a request's rows durable
    before its response leaves.
    """

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.options = inner.options

    @property
    def on_error(self) -> ErrorHook | None:
        return self.inner.on_error

    @on_error.setter
    def on_error(self, hook: ErrorHook | None) -> None:
        self.inner.on_error = hook

    def report(self, operation: str, exc: StateError) -> None:
        log.error("shared state: %s failed: %s", operation, exc)
        if self.inner.on_error is not None:
            self.inner.on_error(operation, exc)

    # -- what the two forms do differently -------------------------------------------

    @abstractmethod
    def record_batch(self, batch: PredictionBatch, check_ids: bool = True) -> None:
        """Make ``batch`` durable; ``DuplicateIdError`` for ids already recorded."""

    async def record_answered(self, batch: PredictionBatch) -> None:
        """``record_batch`` from the event loop, for rows whose ids were checked."""
        await asyncio.to_thread(self.record_batch, batch, False)

    def ingest(self) -> int:
        """Move pending local writes into the store; the number of rows moved."""
        return 0

    def start(self) -> None:  # noqa: B027 - most forms have nothing to start
        """Start background work (ingestion), if this form has any."""

    # -- the StateStore methods --------------------------------------------------------

    def new_ids(self, n: int) -> list[str]:
        return self.inner.new_ids(n)

    def record_batches(self, batches: Sequence[PredictionBatch]) -> None:
        """Straight to the store (after ingesting), so its all-or-nothing contract holds."""
        self.ingest()
        self.inner.record_batches(batches)

    def lookup(self, ids: Sequence[str]) -> dict[str, PredictionRecord]:
        self.ingest()
        return self.inner.lookup(ids)

    def record_feedback(self, items: Sequence[tuple[str, int]], t: float) -> FeedbackResult:
        self.ingest()
        return self.inner.record_feedback(items, t)

    def input_window(self, model: str, version: str, n: int) -> np.ndarray:
        self.ingest()
        return self.inner.input_window(model, version, n)

    def prediction_window(self, model: str, version: str, n: int) -> PredictionWindow:
        self.ingest()
        return self.inner.prediction_window(model, version, n)

    def labelled_window(self, model: str, version: str, m: int) -> LabelledWindow:
        self.ingest()
        return self.inner.labelled_window(model, version, m)

    def counts(self, model: str, version: str) -> Counts:
        self.ingest()
        return self.inner.counts(model, version)

    def prune(self, now: float) -> int:
        self.ingest()
        return self.inner.prune(now)

    def get_live(self, model: str) -> str | None:
        return self.inner.get_live(model)

    def live_marker(self, model: str) -> LiveMarker:
        return self.inner.live_marker(model)

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
        return self.inner.set_live(
            model,
            version,
            reason,
            t,
            default=default,
            actor=actor,
            detail=detail,
            expected_live=expected_live,
        )

    def history(self, model: str) -> list[Switch]:
        return self.inner.history(model)

    def previous_live(self, model: str) -> str:
        return self.inner.previous_live(model)

    def get_candidate(self, model: str) -> Candidate | None:
        return self.inner.get_candidate(model)

    def set_candidate(self, model: str, candidate: Candidate | None) -> None:
        self.inner.set_candidate(model, candidate)

    def recent_ids(self, model: str, version: str, n: int) -> list[str]:
        self.ingest()
        return self.inner.recent_ids(model, version, n)

    def labelled_ids(self, model: str, version: str, m: int) -> list[str]:
        self.ingest()
        return self.inner.labelled_ids(model, version, m)

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        return self.inner.acquire_lease(name, holder, ttl, now)

    def record_figures(self, point: FiguresPoint, keep_seconds: float, keep_points: int) -> None:
        self.inner.record_figures(point, keep_seconds, keep_points)

    def figures_since(self, model: str, since: float) -> list[FiguresPoint]:
        return self.inner.figures_since(model, since)

    def rollback(
        self,
        model: str,
        t: float,
        *,
        reason: str = ROLLBACK,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        return self.inner.rollback(model, t, reason=reason, actor=actor, detail=detail)

    def put_doc(self, name: str, doc: dict[str, Any]) -> None:
        self.inner.put_doc(name, doc)

    def get_doc(self, name: str) -> dict[str, Any] | None:
        return self.inner.get_doc(name)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> SharedState:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class WriteThroughState(SharedState):
    """Every write reaches the store before it returns (one round trip per request:
    the Redis backend writes a request's rows in one script)."""

    def record_batch(self, batch: PredictionBatch, check_ids: bool = True) -> None:
        self.inner.record_batches([self.options.as_kept(batch)])


class JournaledState(SharedState):
    """Prediction writes go through this process's journal (see the module doc); every
    read ingests the journals of this machine first."""

    def __init__(
        self,
        inner: StateStore,
        directory: Path,
        *,
        ingest_every: float = 0.2,
        background: bool = False,
    ) -> None:
        super().__init__(inner)
        self.directory = Path(directory)
        self.journal = Journal(self.directory)
        self.ingest_every = ingest_every
        self.dropped_duplicates = 0
        self._failing: str | None = None
        self._offsets: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self.start()

    # -- the hot path ----------------------------------------------------------------

    def record_batch(self, batch: PredictionBatch, check_ids: bool = True) -> None:
        """Make ``batch`` durable; raises ``DuplicateIdError`` for ids already stored."""
        check_unique(batch.ids)
        if check_ids:
            taken = sorted(self.lookup(list(batch.ids)))
            if taken:
                raise DuplicateIdError(f"ids already recorded: {taken[:5]}", taken)
        self.journal.append(self.options.as_kept(batch).encode())

    async def record_answered(self, batch: PredictionBatch) -> None:
        """One local append: cheap enough to run on the event loop itself."""
        self.record_batch(batch, check_ids=False)

    # -- ingestion -------------------------------------------------------------------

    def ingest(self) -> int:
        """Move every complete journal record of this machine into ``inner``; rows moved."""
        try:
            names = sorted(p.name for p in self.directory.glob("journal-*.log"))
        except OSError:
            return 0
        moved = 0
        for name in names:
            moved += self._ingest_file(self.directory / name)
        return moved

    def _ingest_file(self, path: Path) -> int:
        stem = path.name[: -len(".log")]
        lock_path = self.directory / f"{stem}.lock"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        if self._offsets.get(path.name) == size and not self._orphan(stem):
            return 0  # nothing new (fast path, no lock)
        try:
            lock = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError:
            return 0
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                return 0
            # Decide "writer gone" BEFORE reading: a writer that appends and then rotates
            # releases its owner lock, and a file judged after the read could lose the
            # frame appended meanwhile.
            gone = self._orphan(stem)
            offset_path = self.directory / f"{stem}.offset"
            offset = read_offset(offset_path)
            batches: list[PredictionBatch] = []
            end = offset
            for frame_end, payload in read_frames(path, offset):
                batches.append(PredictionBatch.decode(payload))
                end = frame_end
            if batches:
                self._store(batches)
                write_offset(offset_path, end)
            self._offsets[path.name] = end
            moved = sum(len(b.ids) for b in batches)
            if gone:  # its writer was gone before we read: anything after `end` is torn
                for suffix in (".log", ".offset", ".owner", ".lock"):
                    (self.directory / f"{stem}{suffix}").unlink(missing_ok=True)
                self._offsets.pop(path.name, None)
            return moved
        finally:
            os.close(lock)

    def _orphan(self, stem: str) -> bool:
        """True when no process holds the journal's owner lock (its writer is gone)."""
        owner_path = self.directory / f"{stem}.owner"
        if self.journal.path is not None and self.journal.path.name == f"{stem}.log":
            return False
        try:
            fd = os.open(owner_path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing releases a lock we may have taken
        return True

    def _store(self, batches: list[PredictionBatch]) -> None:
        """Write ``batches`` to ``inner`` in one ``record_batches`` call. Rows whose id is
        already stored, or repeats one earlier in ``batches`` (the same client id sent
        twice, racing past the request-time check), are dropped and counted."""
        seen: set[str] = set()
        for position, b in enumerate(batches):
            fresh = seen.isdisjoint(b.ids) and len(set(b.ids)) == len(b.ids)
            if not fresh:
                keep = []
                for i, id_ in enumerate(b.ids):
                    if id_ not in seen:
                        seen.add(id_)
                        keep.append(i)
                self._drop(len(b.ids) - len(keep), "repeat ids of earlier rows")
                batches[position] = b.take(keep)
            else:
                seen.update(b.ids)
        batches = [b for b in batches if len(b.ids)]
        while batches:
            try:
                self.inner.record_batches(batches)
                return
            except DuplicateIdError as exc:
                taken = set(exc.ids)
                if not taken:
                    raise
                kept = []
                for b in batches:
                    if taken.isdisjoint(b.ids):
                        kept.append(b)
                        continue
                    keep = [i for i, id_ in enumerate(b.ids) if id_ not in taken]
                    self._drop(len(b.ids) - len(keep), "have ids already stored")
                    if keep:
                        kept.append(b.take(keep))
                batches = kept

    def _drop(self, n: int, why: str) -> None:
        self.dropped_duplicates += n
        log.warning("journal: %d rows that %s were skipped", n, why)

    def start(self) -> None:
        """Ingest this process's journal in the background every ``ingest_every`` s."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="argus-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ingest_every):
            try:
                self.ingest()
                self._failing = None
            except StateError as exc:  # counted every round, logged once per failure
                if str(exc) != self._failing:
                    log.error("journal ingestion failed, will retry: %s", exc)
                self._failing = str(exc)
                if self.inner.on_error is not None:
                    self.inner.on_error("ingest", exc)
            except Exception:  # keep the thread alive whatever one round did
                log.exception("journal ingestion failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.ingest()
        except StateError as exc:
            log.error("journal left for the next process to ingest: %s", exc)
        self.journal.close()
        self.inner.close()
