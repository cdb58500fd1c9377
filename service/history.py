"""The figures' history: a snapshot of every served version's window figures, kept in
the shared state at a fixed cadence (``ARGUS_HISTORY_SECONDS``, default 10 s).

One process writes it, whichever worker of whichever replica holds the ``history``
lease in the shared state; the lease lasts a few cadences and is renewed at every write,
so when its holder dies another worker takes over within ``LEASE_CADENCES`` cadences.
The points are bounded in age and in number per model
(``ARGUS_HISTORY_RETENTION_SECONDS``, ``ARGUS_HISTORY_POINTS``). ``GET
/monitoring/history`` serves them with the switches of the same period, for the console
(``/ui``) and ``argus status --history``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from monitoring.windows import WindowFigures
from service.exposition import MetricsExposition
from service.fleet import Fleet
from service.settings import Settings
from state.shared import SharedState
from state.types import FiguresPoint

log = logging.getLogger("argus.history")

LEASE = "history"
LEASE_CADENCES = 2.5
"""The lease outlives its holder by this many cadences: a dead writer is replaced after
at most about two missed points."""


def snapshot(f: WindowFigures) -> dict[str, float | None]:
    """The figures a history point keeps (every value a finite number or ``None``)."""
    perf = f.performance
    values: dict[str, Any] = {
        "accuracy": None if perf is None else perf.accuracy,
        "estimated_accuracy": f.estimated_accuracy,
        "macro_f1": None if perf is None else perf.macro_f1,
        "drift_share": None if f.drift is None else f.drift.drift_share,
        "multivariate_effect": (
            None if f.multivariate_drift is None else f.multivariate_drift.effect
        ),
        "anomaly_ratio": f.anomaly_ratio,
        "prediction_psi": None if f.prediction_drift is None else f.prediction_drift.class_psi,
        "input_rows": f.input_rows,
        "labelled_rows": f.labelled_rows,
        "predictions_total": f.predictions_total,
    }
    return {
        k: (float(v) if v is not None and math.isfinite(float(v)) else None)
        for k, v in values.items()
    }


class HistoryWriter:
    """Writes a point per served version (live, and candidate if any) when it holds the
    lease; ``tick`` is called every cadence by each worker."""

    def __init__(
        self,
        settings: Settings,
        state: SharedState,
        exposition: MetricsExposition,
        fleet: Fleet,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.exposition = exposition
        self.fleet = fleet
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self._last: dict[tuple[str, str], tuple[float, float]] = {}  # (t, predictions)

    def tick(self) -> bool:
        """Write one point per served version if this process holds the lease."""
        interval = self.settings.history_seconds
        now = self.clock()
        if not self.state.acquire_lease(LEASE, self.holder, LEASE_CADENCES * interval, now):
            return False
        for name in sorted(self.fleet.names):
            runtime = self.fleet.runtimes[name]
            if not runtime.ready:
                continue
            versions = [runtime.live.version]
            candidate = self.state.get_candidate(name)
            if candidate is not None and candidate.version not in versions:
                versions.append(candidate.version)
            for version in versions:
                figures = snapshot(self.exposition.compute(name, version))
                figures["predictions_per_s"] = self._rate(name, version, now, figures)
                self.state.record_figures(
                    FiguresPoint(name, version, now, figures),
                    keep_seconds=self.settings.history_retention_seconds,
                    keep_points=self.settings.history_points,
                )
        return True

    def _rate(self, name: str, version: str, now: float, figures: dict[str, Any]) -> float | None:
        """Predictions per second since the version's previous point (this writer's, or
        the last one stored, after a change of writer)."""
        total = figures["predictions_total"]
        last = self._last.get((name, version))
        if last is None:
            since = now - 3 * self.settings.history_seconds
            earlier = [p for p in self.state.figures_since(name, since) if p.version == version]
            if earlier and earlier[-1].figures.get("predictions_total") is not None:
                last = (earlier[-1].t, float(earlier[-1].figures["predictions_total"] or 0))
        self._last[(name, version)] = (now, total or 0.0)
        if last is None or total is None or now <= last[0]:
            return None
        return max(0.0, (total - last[1]) / (now - last[0]))


def history_document(
    state: SharedState, model: str, since: float, version: str | None = None
) -> dict[str, Any]:
    """``GET /monitoring/history``: the model's points (of one version, if given) and its
    switches since ``since``."""
    points = [
        {"t": p.t, "version": p.version, **p.figures}
        for p in state.figures_since(model, since)
        if version is None or p.version == version
    ]
    events = [
        {"t": s.t, "version": s.version, "previous": s.previous, "reason": s.reason}
        for s in state.history(model)
        if s.t >= since
    ]
    return {"model": model, "since": since, "points": points, "events": events}
