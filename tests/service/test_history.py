"""The figures' history: one writer across processes (the lease), points equal to the
window figures, retention, and the events, with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from models.store import StoredVersion
from service.exposition import MetricsExposition
from service.fleet import Fleet
from service.handlers import ArgusCore
from service.history import HistoryWriter, history_document
from service.metrics import get_metrics
from service.runtime import ModelRuntime
from service.settings import Settings
from state.opener import open_state


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_one_writer_takes_over_from_a_dead_one_and_points_equal_the_figures(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    name = registered[0].name
    settings = Settings(
        home=tmp_path, model=name, history_seconds=10.0, history_points=5
    ).validated()
    state = open_state(None, tmp_path)
    runtime = ModelRuntime(name, lambda: state.get_live(name))
    runtime.refresh()
    fleet = Fleet([runtime], name)
    core = ArgusCore(settings, state, fleet, get_metrics(), clock=lambda: 1000.0)
    exposition = MetricsExposition(settings, state, fleet)
    clock = Clock(1000.0)
    a = HistoryWriter(settings, state, exposition, fleet, holder="a", clock=clock)
    b = HistoryWriter(settings, state, exposition, fleet, holder="b", clock=clock)
    rows = load_digits().data.astype(np.float32)[:40].tolist()
    asyncio.run(core.predict(rows))

    assert a.tick() and not b.tick()  # one writer
    clock.t = 1010.0
    asyncio.run(core.predict(rows[:20]))
    assert a.tick() and not b.tick()
    clock.t = 1020.0  # a is gone: its lease runs out 2.5 cadences after its last write
    assert not b.tick()
    clock.t = 1036.0
    assert b.tick()
    doc = history_document(state, name, 0.0)
    points = doc["points"]
    assert [p["t"] for p in points] == [1000.0, 1010.0, 1036.0]
    assert [p["predictions_total"] for p in points] == [40.0, 60.0, 60.0]
    assert points[0]["predictions_per_s"] is None  # nothing before the first point
    assert points[1]["predictions_per_s"] == pytest.approx(20 / 10)
    assert points[2]["predictions_per_s"] == pytest.approx(0.0)  # b read a's last point
    figures = exposition.compute(name, runtime.live.version)
    assert points[-1]["estimated_accuracy"] == pytest.approx(figures.estimated_accuracy)
    assert points[-1]["anomaly_ratio"] == pytest.approx(figures.anomaly_ratio)
    assert points[-1]["input_rows"] == figures.input_rows == 60
    for t in (1046.0, 1056.0, 1066.0, 1076.0):  # 5 points at most
        clock.t = t
        assert b.tick()
    assert len(history_document(state, name, 0.0)["points"]) == 5

    newest = registered[-1].version
    state.set_live(name, registered[0].version, reason="activate", t=1080.0, default=newest)
    events = history_document(state, name, 1070.0)["events"]
    assert [e["reason"] for e in events] == ["default", "activate"]
    assert history_document(state, name, 1079.0, version="nope")["points"] == []
