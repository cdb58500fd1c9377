"""The spill (``state/shared.py``): answered rows the store cannot take wait in a local
journal folder, are replayed in order and exactly once, and are bounded and counted.

The store is a real SQLite backend behind ``Flaky``, which fails every call while
``down`` is set, as a Redis that went away (or a locked SQLite file) would.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from errors import StateError
from state.opener import open_state
from state.records import PredictionBatch
from state.shared import JournaledState, WriteThroughState


class Flaky:
    """A ``StateStore`` that raises ``StateError`` from every method while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down and name not in ("close",):
                raise StateError(f"{name}: the store is away (test)")
            return attr(*args, **kwargs)

        return call


def batch(i: int, rows: int = 4) -> PredictionBatch:
    rng = np.random.default_rng(i)
    probs = rng.dirichlet(np.ones(3), size=rows).astype(np.float32)
    return PredictionBatch(
        model="m",
        version="v1",
        t=1000.0 + i,
        ids=[f"r{i}-{j}" for j in range(rows)],
        labels=probs.argmax(axis=1),
        confidences=probs.max(axis=1),
        probabilities=probs,
        anomaly_scores=np.arange(rows, dtype=np.float64),
        anomalous=np.zeros(rows, dtype=bool),
        inputs=rng.normal(size=(rows, 8)).astype(np.float32),
    )


class Events:
    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.available: list[bool] = []

    def attach(self, state: Any) -> None:
        state.on_rows = lambda kind, n: self.rows.update({kind: n})
        state.on_available = self.available.append


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("journal-*.log"))


def test_write_through_spills_replays_in_order_exactly_once(tmp_path: Path) -> None:
    flaky = Flaky(open_state(None, tmp_path, journal=False).inner)
    state = WriteThroughState(flaky, tmp_path / "spill")  # type: ignore[arg-type]
    events = Events()
    events.attach(state)
    record = lambda b: asyncio.run(state.record_answered(b))  # noqa: E731

    record(batch(0))  # straight to the store
    assert not (tmp_path / "spill").exists()
    flaky.down = True
    for i in range(1, 6):
        record(batch(i))  # answered: the rows wait in the spill
    assert events.rows == {"spilled": 20} and events.available == [False]
    assert state.backlog() == 20
    flaky.down = False
    record(batch(6))  # the store is back, but older rows wait: this one queues behind them
    assert events.rows["spilled"] == 24
    assert state.ingest() == 24
    assert events.rows == {"spilled": 24, "replayed": 24} and events.available == [False, True]
    assert state.backlog() == 0 and state.ingest() == 0  # nothing twice
    record(batch(7))  # straight to the store again
    assert events.rows["spilled"] == 24
    expected = [f"r{i}-{j}" for i in range(8) for j in range(4)]
    assert state.recent_ids("m", "v1", 100) == expected  # the answer order, each once
    assert state.counts("m", "v1").predictions == 32
    state.close()


def test_the_spill_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    one = len(batch(0).encode())
    flaky = Flaky(open_state(None, tmp_path, journal=False).inner)
    state = WriteThroughState(  # type: ignore[arg-type]
        flaky, tmp_path / "spill", spill_max_bytes=10 * one + one // 2
    )
    events = Events()
    events.attach(state)
    flaky.down = True
    for i in range(40):
        asyncio.run(state.record_answered(batch(i)))
    assert events.rows == {"spilled": 40, "dropped": 120}  # 10 batches of 4 fit
    assert folder_bytes(tmp_path / "spill") <= 10 * one + 10 * 12  # + the frame headers
    flaky.down = False
    state.ingest()
    assert events.rows["replayed"] == 40
    assert state.recent_ids("m", "v1", 1000) == [f"r{i}-{j}" for i in range(10) for j in range(4)]
    asyncio.run(state.record_answered(batch(99)))  # room again once replayed
    assert events.rows["spilled"] == 40 and state.counts("m", "v1").predictions == 44
    state.close()


def test_a_dead_process_spill_is_replayed_by_another(tmp_path: Path) -> None:
    flaky = Flaky(open_state(None, tmp_path, journal=False).inner)
    first = WriteThroughState(flaky, tmp_path / "spill")  # type: ignore[arg-type]
    flaky.down = True
    for i in range(3):
        asyncio.run(first.record_answered(batch(i)))
    first.folder.writer.close()  # type: ignore[union-attr]  # as a killed process leaves it
    second = open_state(None, tmp_path, journal=False)
    assert isinstance(second, WriteThroughState) and second.directory == tmp_path / "spill"
    found = second.lookup([f"r{i}-0" for i in range(3)])  # a read replays the folder first
    assert sorted(found) == ["r0-0", "r1-0", "r2-0"]
    assert list((tmp_path / "spill").glob("journal-*.log")) == []  # retired once replayed
    second.close()


def test_journaled_state_counts_rows_answered_while_ingestion_fails(tmp_path: Path) -> None:
    flaky = Flaky(open_state(None, tmp_path, journal=False).inner)
    state = JournaledState(flaky, tmp_path / "journal")  # type: ignore[arg-type]
    events = Events()
    events.attach(state)
    asyncio.run(state.record_answered(batch(0)))  # journaled as always: not a spill
    flaky.down = True
    with pytest.raises(StateError):
        state.ingest()
    assert events.available == [False]
    for i in range(1, 4):
        asyncio.run(state.record_answered(batch(i)))
    assert events.rows == {"spilled": 12} and state.backlog() == 16
    flaky.down = False
    assert state.ingest() == 16
    assert events.rows == {"spilled": 12, "replayed": 12} and events.available == [False, True]
    assert state.counts("m", "v1").predictions == 16 and state.backlog() == 0
    state.close()
