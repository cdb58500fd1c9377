"""How a process that records or reads predictions holds the shared state: ``SharedState``.

``SharedState`` is the one interface the service and the CLI use, whichever store is
behind it. It has two forms (docs/architecture.md#shared-state):

* ``WriteThroughState`` -- every write goes straight to the store. Replicas on several
  machines (Redis) use it, since they cannot read each other's journal files.
* ``JournaledState`` -- a write-behind prediction log, described below. One machine
  (SQLite, the default) uses it.

Both keep answered rows when the store cannot take them (``Spool`` below): the rows wait in
a journal folder of this machine (``spill/`` behind Redis; the journal itself in front of
SQLite) and are replayed, in order and exactly once (ids are the key), when the store
answers again. The wait is bounded by ``spill_max_bytes`` per process; beyond it rows are
dropped, and every spilled, replayed and dropped row is counted (``on_rows``).

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
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from errors import DuplicateIdError, StateError
from state.backend import check_unique
from state.journal import JournalFolder
from state.records import Outcome, PredictionBatch, PredictionRecord
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

DEFAULT_SPILL_MAX_BYTES = 256 << 20  # per process: about 600k rows of the digits model
RowsHook = Callable[[str, int], None]  # ("spilled" | "replayed" | "dropped", rows)


class SharedState(ABC):
    """A ``StateStore`` as a recording or reading process holds it.

    Every ``StateStore`` method is here, delegating to ``inner`` (the backend); reads of
    the log first call ``ingest``, which a subclass with pending local writes overrides.
    ``record_answered`` is what the request path calls to make a request's rows durable
    before its response leaves.
    """

    available = True  # this process's last write or ingestion succeeded
    on_rows: RowsHook | None = None  # told of spilled, replayed and dropped rows
    on_available: Callable[[bool], None] | None = None  # told when ``available`` changes

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

    def backlog(self) -> int:
        """Answered rows on this machine that wait for the store (spilled or journaled)."""
        return 0

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

    def outcomes(self, ids: Sequence[str]) -> dict[str, Outcome]:
        self.ingest()
        return self.inner.outcomes(ids)

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

    def restore_live(self, model: str, version: str, t: float, *, actor: str | None = None) -> bool:
        return self.inner.restore_live(model, version, t, actor=actor)

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


class Spool(SharedState):
    """A ``SharedState`` with a journal folder of this machine in front of or behind the
    store (the module doc): what it spills, replays and drops, and the thread that
    replays.

    ``available`` is this process's view of the store: false from a failed write or
    ingestion until an ingestion pass succeeds. Rows journaled while it is false are
    *spilled*: counted, bounded by ``spill_max_bytes`` (bytes this process spilled and
    no pass has stored yet), and counted as *replayed* after the first pass that
    succeeds once they were written -- whichever process of the machine stored them.
    """

    def __init__(
        self,
        inner: StateStore,
        directory: Path | None,
        *,
        ingest_every: float = 0.2,
        spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
    ) -> None:
        super().__init__(inner)
        self.directory = None if directory is None else Path(directory)
        self.folder = (
            None
            if directory is None
            else JournalFolder(directory, lambda payloads: self._store(payloads))
        )
        self.ingest_every = ingest_every
        self.spill_max_bytes = spill_max_bytes
        self.dropped_duplicates = 0
        self._spilled = (0, 0)  # rows, bytes spilled by this process and not yet stored
        self._lock = threading.Lock()  # the counters above
        self._pass = threading.Lock()  # one ingestion pass of this process at a time
        self._dropping = False  # logged once per stretch of drops
        self._failing: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- writing to the folder --------------------------------------------------------

    def _journal(self, batch: PredictionBatch, spill: bool) -> None:
        """Append ``batch`` (already ``as_kept``) to this process's journal file. A spilled
        batch beyond the bound is dropped and counted; a failed append drops and counts the
        rows, then raises ``StateError``."""
        assert self.folder is not None
        payload = batch.encode()
        n = len(batch.ids)
        if spill:
            with self._lock:
                full = self._spilled[1] + len(payload) > self.spill_max_bytes
            if full:
                if not self._dropping:
                    log.error(
                        "spill of %s is full (%d bytes): dropping answered rows until the "
                        "state is back (ARGUS_SPILL_MAX_BYTES)", self.directory,
                        self.spill_max_bytes,
                    )  # fmt: skip
                self._dropping = True
                self._count("dropped", n)
                return
        try:
            self.folder.writer.append(payload)
        except StateError:
            self._count("dropped", n)
            raise
        if spill:
            with self._lock:
                rows, size = self._spilled
                self._spilled = (rows + n, size + len(payload))
            self._count("spilled", n)

    def _count(self, kind: str, rows: int) -> None:
        if rows and self.on_rows is not None:
            self.on_rows(kind, rows)

    def _set_available(self, available: bool) -> None:
        if available != self.available:
            self.available = available
            if available:
                self._dropping = False
            log.warning("shared state %s", "is back" if available else "is unavailable")
            if self.on_available is not None:
                self.on_available(available)

    @property
    def spilling(self) -> bool:
        """This process has spilled rows no pass has stored yet: new rows queue behind."""
        return self._spilled[0] > 0

    # -- ingestion (replay) -----------------------------------------------------------

    def ingest(self) -> int:
        """Move every complete journal record of this machine into ``inner``; rows moved.
        ``StateError`` when the store does not take them (they stay in the folder)."""
        if self.folder is None:
            return 0
        with self._pass:
            with self._lock:
                before = self._spilled
            try:
                moved = self.folder.ingest()
            except StateError:
                self._set_available(False)
                raise
            with self._lock:  # everything this process spilled before the pass is stored
                rows, size = self._spilled
                self._spilled = (rows - before[0], size - before[1])
            if before[0]:
                log.warning("replayed %d spilled rows into the shared state", before[0])
                self._count("replayed", before[0])
            self._set_available(True)
            return moved

    def backlog(self) -> int:
        """Rows in this machine's folder that no process has stored yet."""
        if self.folder is None:
            return 0
        return sum(PredictionBatch.rows_of(p) for p in self.folder.waiting())

    def _store(self, payloads: list[bytes]) -> int:
        """Write the batches of ``payloads`` to ``inner`` in one ``record_batches`` call;
        the rows they held. Rows whose id is already stored, or repeats one earlier in
        them (the same client id sent twice, racing past the request-time check; or a
        write that timed out after Redis applied it, then spilled), are skipped and
        counted in ``dropped_duplicates``."""
        batches = [PredictionBatch.decode(p) for p in payloads]
        rows = sum(len(b.ids) for b in batches)
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
                return rows
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
        return rows

    def _drop(self, n: int, why: str) -> None:
        self.dropped_duplicates += n
        log.warning("journal: %d rows that %s were skipped", n, why)

    def _due(self) -> bool:
        """Whether the background thread has anything to ingest this round."""
        return True

    def start(self) -> None:
        """Ingest this machine's folder in the background every ``ingest_every`` s."""
        if self._thread is not None or self.folder is None:
            return
        self._thread = threading.Thread(target=self._run, name="argus-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ingest_every):
            try:
                if self._due():
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
        if self.folder is not None:
            try:
                self.ingest()
            except StateError as exc:
                log.error("journal left for the next process to ingest: %s", exc)
            self.folder.writer.close()
        self.inner.close()


class WriteThroughState(Spool):
    """Every write reaches the store before it returns (one round trip per request: the
    Redis backend writes a request's rows in one script). With a ``spill`` folder,
    answered rows the store cannot take go there instead, and so do the rows after them
    until they are replayed (so the log keeps each process's order)."""

    def __init__(
        self,
        inner: StateStore,
        spill: Path | None = None,
        *,
        background: bool = False,
        ingest_every: float = 0.2,
        spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
    ) -> None:
        super().__init__(inner, spill, ingest_every=ingest_every, spill_max_bytes=spill_max_bytes)
        if background:
            self.start()

    def record_batch(self, batch: PredictionBatch, check_ids: bool = True) -> None:
        kept = self.options.as_kept(batch)
        if self.folder is None or check_ids:  # not an answered row: the caller sees errors
            self.inner.record_batches([kept])
            return
        if self.available and not self.spilling:
            try:
                self.inner.record_batches([kept])
                return
            except DuplicateIdError:
                raise
            except StateError as exc:
                self._set_available(False)
                self.report("record", exc)
        self._journal(kept, spill=True)

    def _due(self) -> bool:
        return self.spilling or bool(self.folder and self.folder.files())


class JournaledState(Spool):
    """Prediction writes go through this process's journal (see the module doc); every
    read ingests the journals of this machine first."""

    def __init__(
        self,
        inner: StateStore,
        directory: Path,
        *,
        ingest_every: float = 0.2,
        background: bool = False,
        spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
    ) -> None:
        super().__init__(
            inner, directory, ingest_every=ingest_every, spill_max_bytes=spill_max_bytes
        )
        assert self.folder is not None
        self.journal = self.folder.writer
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
        self._journal(self.options.as_kept(batch), spill=not self.available)

    async def record_answered(self, batch: PredictionBatch) -> None:
        """One local append: cheap enough to run on the event loop itself."""
        self.record_batch(batch, check_ids=False)
