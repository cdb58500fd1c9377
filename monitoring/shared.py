"""How every process that records or reads predictions opens the shared state.

One machine (SQLite, the default): the store behind this machine's journal
(``monitoring/journal.py``), so ``/predict`` appends to a local file and every reader
ingests first. Replicas on several machines (Redis): ``WriteThroughState``, since they
cannot read each other's journal files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitoring.journal import JournaledState
from monitoring.records import PredictionBatch
from monitoring.state import StateStore, open_state


class WriteThroughState:
    """The same surface as ``JournaledState`` for a networked backend (Redis).

    Replicas on different machines cannot read each other's journal files, so a
    prediction must reach the shared store before its response leaves: ``record_batch``
    writes through (one round trip: the backend batches a request's rows in one script).
    """

    fast_writes = False

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.options = inner.options

    def record_batch(self, batch: PredictionBatch, check_ids: bool = True) -> None:
        self.inner.record_batches([self.options.as_kept(batch)])

    def ingest(self) -> int:
        return 0

    def start(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


SharedState = JournaledState | WriteThroughState  # what ``open_shared_state`` returns


def open_shared_state(
    url: str | None, home: Path, *, background: bool = False, **options: object
) -> SharedState:
    """The shared state as every process that records or reads predictions opens it.

    SQLite (one machine): ``open_state`` behind this machine's journal in ``home/journal``,
    so the hot path appends to a file and every reader ingests first. Redis (replicas on
    several machines): write-through, so every replica sees a prediction as soon as it
    is answered.
    """
    inner = open_state(url, home, **options)
    if url is not None and not url.startswith("sqlite://"):
        return WriteThroughState(inner)
    return JournaledState(inner, Path(home).expanduser() / "journal", background=background)
