"""The guard: rolls back, promotes or aborts on the monitoring's own figures.

Every ``interval`` exactly one process evaluates the policy (``service/guard_policy.py``):
whichever worker of whichever replica holds the ``guard`` lease in the shared state. Its
lease lasts 1.5 intervals and the others try every half interval, so when the holder
dies another takes over within 2 intervals. Every switch it makes is fenced: it names
the live version it was decided on, and the shared state refuses it if that version is
no longer live, so two replicas never both act on one decision.

What it judges, per model (a *release*: a new version against the one it replaces):

* **After a switch** (``activate``, ``promote``, ``auto_promote``), for ``guard_seconds``:
  the new live version against the previous one, which the guard keeps running as a
  shadow, so agreement and both estimates are there before any label, and the McNemar
  verdict once labels arrive. A rule that holds for its ``for`` evaluations rolls back
  (reason ``auto_rollback``). Afterwards the guard switches nothing for ``cooldown``
  and never promotes a version it rolled back.
* **A canary**: against the live version. A failing rule, or a canary significantly
  worse, aborts it (the canary ends, live untouched). Shown non-inferior (the one-sided
  test that its accuracy is above live's minus ``margin``, at ``alpha``, on at least
  ``min_labelled`` labelled rows each), it is promoted (``auto_promote``). In between, it
  steps through ``steps`` percents.

``ARGUS_GUARD_MODE``: ``off``, ``dry-run`` (every decision logged and counted, nothing
switched) or ``act``. Each evaluation is stored in the shared state (``guard:<model>``)
for ``argus_guard_rule_failing``; switches carry actor ``guard`` and the rule, figures
and rows behind them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitoring.compare import two_proportion_worse
from monitoring.tails import normal_sf
from monitoring.windows import WindowFigures
from service.exposition import MetricsExposition
from service.fleet import Fleet
from service.guard_policy import Policy, Rule
from service.metrics import ServiceMetrics
from state.shared import SharedState
from state.types import AUTO_PROMOTE, AUTO_ROLLBACK, CANARY, PROMOTE, SHADOW, Candidate, Switch

log = logging.getLogger("argus.guard")

LEASE = "guard"
GUARDED = ("activate", PROMOTE, AUTO_PROMOTE)  # switches followed by a guard window


@dataclass(frozen=True)
class Release:
    """What one evaluation judges: ``new`` against ``old``."""

    kind: str  # "switch" or "canary"
    new: str
    old: str
    since: float


@dataclass(frozen=True)
class Decision:
    model: str
    action: str  # rollback, promote, abort, step, none
    rule: str  # the rule that decided it, "" for none or a test
    release: Release | None
    figures: dict[str, float | None]
    rows: dict[str, int]


class Guard:
    def __init__(
        self,
        policy: Policy,
        mode: str,
        state: SharedState,
        exposition: MetricsExposition,
        fleet: Fleet,
        metrics: ServiceMetrics,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        error_ratio: Callable[[], tuple[float | None, int]] = lambda: (None, 0),
    ) -> None:
        self.policy = policy
        self.mode = mode
        self.state = state
        self.exposition = exposition
        self.fleet = fleet
        self.metrics = metrics
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.error_ratio = error_ratio
        self._streaks: dict[tuple[str, Release, str], int] = {}
        self._last_run = -math.inf

    def tick(self) -> list[Decision]:
        """Evaluate every model once per interval if this process holds the lease."""
        now = self.clock()
        interval = self.policy.interval
        if now - self._last_run < interval:
            return []
        if not self.state.acquire_lease(LEASE, self.holder, 1.5 * interval, now):
            return []
        self._last_run = now
        errors = self.error_ratio()
        return [self.evaluate(name, now, errors) for name in sorted(self.fleet.names)]

    # -- one model -------------------------------------------------------------------

    def evaluate(self, model: str, now: float, errors: tuple[float | None, int]) -> Decision:
        history = self.state.history(model)
        live = self.state.get_live(model) or self._serving(model)
        candidate = self.state.get_candidate(model)
        release = self._release(model, history, live, candidate, now)
        if release is None:
            return self._decide(model, "none", "", None, {}, {}, now)
        figures, rows, previous = self._figures(model, release, candidate)
        figures["error_ratio"], rows["error_ratio"] = errors
        failing = {}
        for rule in self.policy.rules:
            judged = rows.get(rule.figure, 0) >= rule.min_rows
            holds = rule.holds(figures.get(rule.figure), previous.get(rule.figure))
            failing[rule.name] = bool(judged and holds)
            key = (model, release, rule.name)
            self._streaks[key] = self._streaks.get(key, 0) + 1 if failing[rule.name] else 0
        triggered = [
            r for r in self.policy.rules if self._streaks[(model, release, r.name)] >= r.for_
        ]
        self.state.put_doc(
            f"guard:{model}",
            {"t": now, "mode": self.mode, "version": release.new, "failing": failing,
             "figures": figures, "rows": rows},
        )  # fmt: skip
        cooling = any(
            s.reason == AUTO_ROLLBACK and now - s.t < self.policy.cooldown for s in history
        )
        if release.kind == "switch":
            if triggered and not cooling:
                return self._rollback(model, release, triggered[0], figures, rows, now)
            return self._decide(model, "none", "", release, figures, rows, now)
        return self._judge_canary(
            model, release, candidate, triggered, figures, rows, history, cooling, now
        )

    def _release(
        self,
        model: str,
        history: list[Switch],
        live: str | None,
        candidate: Candidate | None,
        now: float,
    ) -> Release | None:
        if live is None:
            return None
        if candidate is not None and candidate.role == CANARY:
            return Release("canary", candidate.version, live, candidate.t)
        last = history[-1] if history else None
        if last is None or last.reason not in GUARDED or last.previous is None:
            return None
        guard_shadow = (
            candidate is not None
            and candidate.role == SHADOW
            and candidate.version == last.previous
            and candidate.t >= last.t
        )
        if now - last.t >= self.policy.guard_seconds:
            if guard_shadow:  # the guard window is over: the old version stops shadowing
                self.state.set_candidate(model, None)
            return None
        if candidate is None:  # the previous version shadows the new one from now on
            self.state.set_candidate(model, Candidate(SHADOW, last.previous, 1.0, now))
            log.info("guard: %s:%s shadows the new live %s", model, last.previous, live)
        return Release("switch", last.version, last.previous, last.t)

    def _figures(
        self, model: str, release: Release, candidate: Candidate | None
    ) -> tuple[dict[str, float | None], dict[str, int], dict[str, float | None]]:
        new = self.exposition.compute(model, release.new)
        old = self.exposition.compute(model, release.old)
        figures, rows = _own(new)
        previous, _ = _own(old)
        if release.kind == "switch":
            shadowing = candidate is not None and candidate.version == release.old
            if shadowing:  # "is the new version worse than the old one?"
                paired = self.exposition.paired(
                    model, release.new, release.old, reverse=True,
                    margin=self.policy.margin, alpha=self.policy.alpha,
                )  # fmt: skip
                figures["agreement"], rows["agreement"] = paired.agreement, paired.rows
                figures["candidate_worse"] = float(paired.verdict.worse)
                rows["candidate_worse"] = paired.labelled
        else:
            lp, cp = old.performance, new.performance
            verdict = two_proportion_worse(
                _correct(lp), _n(lp), _correct(cp), _n(cp),
                margin=self.policy.margin, alpha=self.policy.alpha,
            )  # fmt: skip
            figures["candidate_worse"] = float(verdict.worse)
            rows["candidate_worse"] = min(_n(lp), _n(cp))
        return figures, rows, previous

    def _judge_canary(
        self,
        model: str,
        release: Release,
        candidate: Candidate | None,
        triggered: list[Rule],
        figures: dict[str, float | None],
        rows: dict[str, int],
        history: list[Switch],
        cooling: bool,
        now: float,
    ) -> Decision:
        rejected_doc = self.state.get_doc(f"guard-rejected:{model}") or {"versions": []}
        worse = figures.get("candidate_worse") == 1.0
        if triggered or worse:
            if self.mode == "act":
                self.state.set_candidate(model, None)
                versions = sorted({*rejected_doc["versions"], release.new})
                self.state.put_doc(f"guard-rejected:{model}", {"versions": versions})
            rule = triggered[0].name if triggered else "significantly-worse"
            return self._decide(model, "abort", rule, release, figures, rows, now)
        rejected = {s.previous for s in history if s.reason == AUTO_ROLLBACK}
        rejected |= set(rejected_doc["versions"])
        old = self.exposition.compute(model, release.old).performance
        new = self.exposition.compute(model, release.new).performance
        enough = min(_n(old), _n(new)) >= self.policy.min_labelled
        if enough and release.new not in rejected and not cooling:
            p = self._non_inferiority(old, new)
            if p is not None and p < self.policy.alpha:
                figures["non_inferiority_p"] = p
                if self.mode == "act":
                    done = self.state.set_live(
                        model, release.new, AUTO_PROMOTE, now, actor="guard",
                        detail={"rule": "non-inferior", "figures": figures, "rows": rows},
                        expected_live=release.old,
                    )  # fmt: skip
                    if done:
                        self.state.set_candidate(model, None)
                return self._decide(model, "promote", "", release, figures, rows, now)
        if candidate is not None and self.policy.steps and not cooling:
            percent = candidate.share * 100
            higher = [s for s in self.policy.steps if s > percent + 1e-9]
            if higher and now - candidate.t >= 3 * self.policy.interval:
                if self.mode == "act":
                    stepped = Candidate(CANARY, candidate.version, higher[0] / 100, now)
                    self.state.set_candidate(model, stepped)
                figures["percent"] = higher[0]
                return self._decide(model, "step", "", release, figures, rows, now)
        return self._decide(model, "none", "", release, figures, rows, now)

    def _non_inferiority(self, old: Any, new: Any) -> float | None:
        """One-sided p-value of H0 "new accuracy <= old accuracy - margin"."""
        p_old, p_new = old.accuracy, new.accuracy
        se = math.sqrt(p_old * (1 - p_old) / old.n + p_new * (1 - p_new) / new.n)
        diff = p_new - p_old + self.policy.margin
        if se == 0:
            return 0.0 if diff > 0 else 1.0
        return normal_sf(diff / se)

    def _rollback(
        self,
        model: str,
        release: Release,
        rule: Rule,
        figures: dict[str, float | None],
        rows: dict[str, int],
        now: float,
    ) -> Decision:
        if self.mode == "act":
            detail = {"rule": rule.name, "figures": figures, "rows": rows}
            done = self.state.set_live(
                model, release.old, AUTO_ROLLBACK, now, actor="guard", detail=detail,
                expected_live=release.new,
            )  # fmt: skip
            if done:
                self.state.set_candidate(model, None)
                log.warning(
                    "guard: rolled %s back from %s to %s (%s)", model, release.new, release.old,
                    rule.name,
                )  # fmt: skip
        return self._decide(model, "rollback", rule.name, release, figures, rows, now)

    def _decide(
        self,
        model: str,
        action: str,
        rule: str,
        release: Release | None,
        figures: dict[str, float | None],
        rows: dict[str, int],
        now: float,
    ) -> Decision:
        self.metrics.guard_decisions.labels(model, action, rule, self.mode).inc()
        if action != "none":  # every decision that changes something, in the server's log
            (log.info if action == "step" else log.warning)(
                "guard (%s): %s %s of %s (%s) on %s", self.mode, action,
                release.new if release else "-", model, rule or "test", figures,
            )  # fmt: skip
        return Decision(model, action, rule, release, figures, rows)

    def _serving(self, model: str) -> str | None:
        runtime = self.fleet.runtimes.get(model)
        return runtime.live.version if runtime is not None and runtime.ready else None


class RequestErrors:
    """The share of ``/predict`` and ``/feedback`` requests this replica answered with a
    5xx since the last call, from BentoML's request counter in the multiprocess files
    every worker writes (so it covers this replica's workers, not other replicas)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._last: tuple[float, float] | None = None

    def __call__(self) -> tuple[float | None, int]:
        if not self.directory:
            return None, 0
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.directory)
        total = errors = 0.0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name != "bentoml_service_request_total":
                    continue
                if sample.labels.get("endpoint") not in ("/predict", "/feedback"):
                    continue
                total += sample.value
                if str(sample.labels.get("http_response_code", "")).startswith("5"):
                    errors += sample.value
        last, self._last = self._last, (total, errors)
        if last is None or total <= last[0]:
            return None, 0
        return (errors - last[1]) / (total - last[0]), int(total - last[0])


def _own(f: WindowFigures) -> tuple[dict[str, float | None], dict[str, int]]:
    """A version's own figures and the rows behind each."""
    perf = f.performance
    figures = {
        "accuracy": None if perf is None else perf.accuracy,
        "estimated_accuracy": f.estimated_accuracy,
        "anomaly_ratio": f.anomaly_ratio,
        "drift_share": None if f.drift is None else f.drift.drift_share,
    }
    rows = {
        "accuracy": f.labelled_rows,
        "estimated_accuracy": f.prediction_rows,
        "anomaly_ratio": f.prediction_rows,
        "drift_share": f.input_rows,
    }
    return {k: _finite(v) for k, v in figures.items()}, rows


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _correct(p: Any) -> int:
    return 0 if p is None else int(round(p.accuracy * p.n))


def _n(p: Any) -> int:
    return 0 if p is None else int(p.n)
