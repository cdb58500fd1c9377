"""The service's behaviour, free of any web framework.

``ArgusCore`` answers each endpoint of the HTTP contract (docs/api.md) from plain Python
values and raises ``RequestError`` for anything the client got wrong. The BentoML class
in ``service/service.py`` only moves JSON in and out, so these handlers are tested
in-process without a server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from errors import (
    DuplicateIdError,
    ModelNotFoundError,
    ModelVerificationError,
    NoRollbackTargetError,
    StateError,
)
from models import store
from service.candidates import Shadow, route
from service.coalesce import Coalescer, Entry
from service.fleet import Fleet
from service.metrics import ServiceMetrics, observe_many
from service.runtime import LoadedVersion, ModelRuntime, Prediction
from service.settings import Settings
from service.validation import (
    RETRY_AFTER,
    RequestError,
    check_labels,
    parse_feedback,
    parse_ids,
    parse_instances,
)
from state.ids import SHADOW_SUFFIX, shadow_id
from state.records import PredictionBatch
from state.shared import SharedState
from state.types import PROMOTE, Candidate, FeedbackRecord

log = logging.getLogger("argus.service")


class ArgusCore:
    """One worker's view: settings, shared state, the served models, their counters."""

    def __init__(
        self,
        settings: Settings,
        state: SharedState,
        fleet: Fleet,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.fleet = fleet
        self.metrics = metrics
        self.clock = clock
        self._n_classes: dict[tuple[str, str], int] = {}
        self._series: dict[tuple[str, str], _VersionSeries] = {}
        self.shadow = Shadow(state, metrics)
        self.coalescer = Coalescer(
            self._run_group, settings.coalesce_wait_ms / 1000.0, max_rows=settings.max_batch
        )

    # -- predict ---------------------------------------------------------------------

    @property
    def runtime(self) -> ModelRuntime:
        """The default model's runtime."""
        return self.fleet.get()

    async def predict(
        self, instances: Any, ids: Any = None, typed: bool = False, model: Any = None
    ) -> dict[str, Any]:
        """Answer one request. ``typed``: ``instances`` already passed ``validation.Rows``;
        ``model``: the model's name (default ``ARGUS_MODEL``)."""
        runtime, live = await self.target(model)
        X = parse_instances(instances, live.n_features, self.settings.max_batch, typed=typed)
        client_ids = parse_ids(ids, len(X))
        chosen = route(runtime, client_ids)  # the canary's share, or live
        row_ids, pred = await self.predict_rows(chosen, X, client_ids)
        self.shadow.offer(runtime, chosen, X, row_ids, self.clock())
        return answer(chosen, row_ids, pred)

    async def serving(self, model: Any = None, version: str | None = None) -> LoadedVersion:
        """The version that answers: ``model``'s live one, or its stored ``version``
        (loaded, verified and cached on first use); 404 for an unknown model or version."""
        return (await self.target(model, version))[1]

    async def target(
        self, model: Any = None, version: str | None = None
    ) -> tuple[ModelRuntime, LoadedVersion]:
        """``model``'s runtime and the version ``serving`` gives."""
        runtime = self._runtime(model)
        return runtime, await self._loaded(runtime, version)

    async def _loaded(self, runtime: ModelRuntime, version: str | None) -> LoadedVersion:
        if version is None:
            try:
                return runtime.live
            except ModelNotFoundError as exc:
                raise RequestError(503, "no_model", str(exc)) from None
        if runtime.ready and runtime.live.version == version:
            return runtime.live
        try:
            return await asyncio.to_thread(runtime.load, version)
        except ModelNotFoundError as exc:
            raise RequestError(404, "unknown_version", str(exc)) from None
        except (ModelVerificationError, ValueError, OSError) as exc:
            raise RequestError(422, "unverifiable_version", str(exc)) from None

    async def predict_rows(
        self, live: LoadedVersion, X: np.ndarray, client_ids: list[str] | None
    ) -> tuple[list[str], Prediction]:
        """Predict validated rows with ``live``, score them and make them durable before
        returning, whichever door (``/predict``, the inference protocol) they came in by.
        Requests arriving together share the work (``service/coalesce.py``)."""
        self.coalescer.arrive()
        try:
            if client_ids is not None:
                for i, row_id in enumerate(client_ids):
                    if row_id.endswith(SHADOW_SUFFIX):
                        raise RequestError(
                            400, "bad_ids", f"ids[{i}] must not end with {SHADOW_SUFFIX!r} "
                            "(kept for the rows a shadow predicts)",
                        )  # fmt: skip
                await self._check_new_ids(client_ids)  # a reused id never reaches the model
        except BaseException:
            self.coalescer.left()
            raise
        result: tuple[list[str], Prediction] = await self.coalescer.submit(live, X, client_ids)
        return result

    async def _run_group(self, live: LoadedVersion, entries: list[Entry]) -> None:
        """One model call, one scoring pass, one id block, one log record and one update
        of each series for a group of requests; each entry gets its slice or its own
        refusal (rows the model cannot score, ids a neighbour or the log already has)."""
        X = entries[0].X if len(entries) == 1 else np.concatenate([e.X for e in entries])
        started = time.perf_counter()
        pred = live.predict(X)
        elapsed = time.perf_counter() - started
        finite = np.isfinite(pred.probabilities).all(axis=1) & np.isfinite(pred.anomaly_scores)
        spans: list[tuple[Entry, int, int]] = []
        claimed: set[str] = set()
        generated = 0
        lo = 0
        for entry in entries:
            hi = lo + len(entry.X)
            bad = np.flatnonzero(~finite[lo:hi])
            if bad.size:
                entry.future.set_exception(not_finite(int(bad[0])))
            elif entry.ids is not None and not claimed.isdisjoint(entry.ids):
                taken = sorted(claimed.intersection(entry.ids))
                entry.future.set_exception(
                    RequestError(409, "duplicate_ids", f"ids already recorded: {taken[:5]}")
                )  # a request of the same group claimed them first
            else:
                if entry.ids is None:
                    generated += hi - lo
                else:
                    claimed.update(entry.ids)
                spans.append((entry, lo, hi))
            lo = hi
        fresh = iter(self.state.new_ids(generated) if generated else ())
        row_ids = {
            id(e): e.ids if e.ids is not None else [next(fresh) for _ in range(hi - lo)]
            for e, lo, hi in spans
        }
        spans = await self._record_group(live, pred, X, spans, row_ids)
        if not spans:
            return
        series = self._series_of(live)
        self.metrics.request_groups.inc()  # answered requests only: a refusal moves nothing
        self.metrics.grouped_requests.inc(len(spans))
        observe_many(series.inference_duration, np.full(len(spans), elapsed))
        if len(spans) == len(entries):
            series.count(pred)
        else:
            series.count(pred.take(np.concatenate([np.arange(lo, hi) for _, lo, hi in spans])))
        for entry, lo, hi in spans:
            entry.future.set_result((row_ids[id(entry)], pred.slice(lo, hi)))

    async def _record_group(
        self,
        live: LoadedVersion,
        pred: Prediction,
        X: np.ndarray,
        spans: list[tuple[Entry, int, int]],
        row_ids: dict[int, list[str]],
    ) -> list[tuple[Entry, int, int]]:
        """Make the group's rows durable in one record before any answer leaves
        (``SharedState.record_answered``); the entries recorded. A client id the log
        already has (it raced past ``_check_new_ids``) refuses its own request (409) and
        the others are recorded. A store that is away is not an error: the rows wait in
        this machine's spill and are replayed when it is back. Only a spill that cannot be
        written either raises a ``StateError``: the rows are answered all the same,
        counted as dropped, and the failure is counted and logged."""
        while spans:
            if len(spans) == 1 and spans[0][2] - spans[0][1] == len(X):
                index = None  # the whole group: no copy
            else:
                index = np.concatenate([np.arange(lo, hi) for _, lo, hi in spans])
            part = pred if index is None else pred.take(index)
            batch = PredictionBatch(
                model=live.name,
                version=live.version,
                t=self.clock(),
                ids=[i for e, _, _ in spans for i in row_ids[id(e)]],
                labels=part.labels,
                confidences=part.confidences,
                probabilities=part.probabilities,
                anomaly_scores=part.anomaly_scores,
                anomalous=part.anomalous,
                inputs=X if index is None else X[index],
            )
            try:
                await self.state.record_answered(batch)
                return spans
            except DuplicateIdError as exc:
                taken = set(exc.ids)
                keep = []
                for span in spans:
                    entry = span[0]
                    if entry.ids is not None and (not taken or not taken.isdisjoint(entry.ids)):
                        entry.future.set_exception(RequestError(409, "duplicate_ids", str(exc)))
                    else:
                        keep.append(span)
                if len(keep) == len(spans):  # no id to blame: refuse rather than loop
                    for entry, _, _ in spans:
                        entry.future.set_exception(RequestError(409, "duplicate_ids", str(exc)))
                    return []
                spans = keep
            except StateError as exc:
                self.metrics.state_errors.labels("record").inc()
                log.error("answered rows neither stored nor spilled (dropped, counted): %s", exc)
                return spans
        return spans

    def _series_of(self, live: LoadedVersion) -> _VersionSeries:
        """The version's metric children, looked up once (``labels()`` takes a lock)."""
        key = (live.name, live.version)
        series = self._series.get(key)
        if series is None:
            m = self.metrics
            series = self._series[key] = _VersionSeries(
                inference_duration=m.inference_duration.labels(*key),
                predictions=m.predictions.labels(*key),
                anomalies=m.anomalies.labels(*key),
                anomaly_score=m.anomaly_score.labels(*key),
            )
        return series

    async def _check_new_ids(self, ids: list[str]) -> None:
        """409 for client ids already in the log. If the store cannot be read, the rows
        are answered and recorded all the same (a journaled id that turns out taken is
        dropped at ingestion); the failure is counted and logged."""
        try:
            taken = await asyncio.to_thread(self.state.lookup, ids)
        except StateError as exc:
            self.metrics.state_errors.labels("lookup").inc()
            log.error("client ids not checked against the log, recording anyway: %s", exc)
            return
        if taken:
            raise RequestError(409, "duplicate_ids", f"ids already recorded: {sorted(taken)[:5]}")

    # -- feedback --------------------------------------------------------------------

    async def feedback(self, feedback: Any, authorization: str | None = None) -> dict[str, Any]:
        if self.settings.feedback_token:
            self._check_token(authorization, self.settings.feedback_token, "ARGUS_FEEDBACK_TOKEN")
        pairs = parse_feedback(feedback, self.settings.max_batch)
        try:  # the lookup replays this machine's spill first: a spilled id is found
            known = await asyncio.to_thread(self.state.lookup, [fid for fid, _ in pairs])
        except StateError as exc:
            self.metrics.state_errors.labels("lookup").inc()
            raise self._state_away("feedback not recorded", exc) from None
        check_labels(
            [
                (fid, label, self._classes_of(known[fid].model, known[fid].version))
                for fid, label in pairs
                if fid in known
            ]
        )
        now = self.clock()
        try:
            result = await asyncio.to_thread(self.state.record_feedback, pairs, now)
        except StateError as exc:
            self.metrics.state_errors.labels("feedback").inc()
            raise self._state_away("feedback not recorded", exc) from None
        self._count_feedback(result.accepted_records, now)
        await self._label_shadow_rows(result.accepted_records, now)
        return {
            "accepted": len(result.accepted),
            "unknown_ids": list(result.unknown_ids),
            "duplicate_ids": list(result.duplicate_ids),
        }

    def _state_away(self, what: str, exc: StateError) -> RequestError:
        """A 503 ``state_unavailable`` saying when to retry and what waits for the state."""
        return RequestError(
            503, "state_unavailable",
            f"{what}: {exc} ({self.waiting_rows()} answered rows wait to be replayed; "
            "retry after the state is back)",
            headers={"Retry-After": RETRY_AFTER},
        )  # fmt: skip

    def waiting_rows(self) -> int:
        """Answered rows on this machine that the shared state has not taken yet."""
        try:
            return self.state.backlog()
        except (OSError, ValueError) as exc:  # a file retired or torn while counting
            log.warning("spill not counted: %s", exc)
            return 0

    def state_status(self) -> dict[str, Any]:
        """Whether this worker reaches the shared state, and the rows waiting for it."""
        return {"available": self.state.available, "waiting_rows": self.waiting_rows()}

    def _count_feedback(self, records: list[FeedbackRecord], now: float) -> None:
        for rec in records:
            verdict = "correct" if rec.label == rec.true_label else "incorrect"
            self.metrics.feedback.labels(rec.model, rec.version, verdict).inc()
            self.metrics.label_delay.labels(rec.model, rec.version).observe(
                max(0.0, (rec.feedback_t or now) - rec.t)
            )

    async def _label_shadow_rows(self, records: list[FeedbackRecord], now: float) -> None:
        """The same labels for the shadow's predictions of those rows, so both versions'
        accuracy rests on the same rows. Rows no shadow predicted are simply unknown."""
        shadowed_models = {n for n, r in self.fleet.runtimes.items() if r.had_shadow}
        items = [(shadow_id(r.id), r.true_label) for r in records if r.model in shadowed_models]
        if not items:  # no shadow ran in this worker's life: nothing to look for
            return
        try:
            shadowed = await asyncio.to_thread(self.state.record_feedback, items, now)
        except StateError as exc:  # the live labels are recorded: count, log, go on
            self.metrics.state_errors.labels("feedback").inc()
            log.error("labels of shadow rows not recorded: %s", exc)
            return
        self._count_feedback(shadowed.accepted_records, now)

    def _classes_of(self, model: str, version: str) -> int:
        key = (model, version)
        if key not in self._n_classes:
            try:
                self._n_classes[key] = int(store.get_version(model, version).card.n_classes)
            except ModelNotFoundError:
                raise RequestError(
                    409, "unknown_version", f"version {model}:{version} is no longer stored"
                ) from None
        return self._n_classes[key]

    # -- models ----------------------------------------------------------------------

    def _runtime(self, model: Any) -> ModelRuntime:
        if model is not None and (not isinstance(model, str) or not model):
            raise RequestError(400, "bad_type", "'model' must be a non-empty string")
        try:
            return self.fleet.get(model)
        except ModelNotFoundError as exc:
            raise RequestError(404, "unknown_model", str(exc)) from None

    def card(self, model: Any, version: Any) -> dict[str, Any]:
        """A stored version's model card (``GET /models/card``)."""
        runtime = self._runtime(model)
        if not isinstance(version, str) or not version:
            raise RequestError(400, "bad_type", "'version' must be a non-empty string")
        try:
            stored = store.get_version(runtime.name, version)
        except ModelNotFoundError as exc:
            raise RequestError(404, "unknown_version", str(exc)) from None
        return {"model": runtime.name, "version": stored.version, "card": stored.card.to_dict()}

    def models(self, model: Any = None) -> dict[str, Any]:
        runtime = self._runtime(model)
        name = runtime.name
        pointer = self.state.get_live(name)
        candidate = self.state.get_candidate(name)
        versions = store.list_versions(name)
        live = pointer or (versions[-1].version if versions else None)
        return {
            "model": name,
            "models": sorted(self.fleet.names),
            "live": live,
            "serving": runtime.live.version if runtime.ready else None,
            "serving_candidate": None
            if runtime.candidate is None
            else runtime.candidate[1].version,
            "versions": [
                {
                    "version": v.version,
                    "created": v.creation_time.isoformat(),
                    "kind": v.card.kind,
                    "accuracy": v.card.accuracy,
                    "parent": v.card.parent,
                    "live": v.version == live,
                }
                for v in versions
            ],
            "history": [asdict(s) for s in self.state.history(name)],
            "candidate": None if candidate is None else asdict(candidate),
        }

    def activate(
        self, version: Any, authorization: str | None, model: Any = None
    ) -> dict[str, Any]:
        self._check_admin(authorization)
        if not isinstance(version, str) or not version:
            raise RequestError(400, "bad_type", "'version' must be a non-empty string")
        return self._switch(self._runtime(model), version, "activate")

    def rollback(self, authorization: str | None, model: Any = None) -> dict[str, Any]:
        self._check_admin(authorization)
        runtime = self._runtime(model)
        try:
            target = self.state.previous_live(runtime.name)
        except NoRollbackTargetError as exc:
            raise RequestError(409, "no_previous_version", str(exc)) from None
        except StateError as exc:
            self.metrics.state_errors.labels("switch").inc()
            raise RequestError(503, "state_unavailable", f"nothing switched: {exc}") from None
        return self._switch(runtime, target, "rollback")

    # -- candidates ------------------------------------------------------------------

    def set_candidate(
        self,
        role: str,
        version: Any,
        share: Any,
        authorization: str | None,
        model: Any = None,
    ) -> dict[str, Any]:
        """Start (or, with no version or a zero share, end) the model's shadow or canary.

        ``share``: the shadow's fraction of answered rows, or the canary's fraction of
        requests (the HTTP canary endpoint takes a percent and divides it)."""
        self._check_admin(authorization)
        runtime = self._runtime(model)
        if version is not None and (not isinstance(version, str) or not version):
            raise RequestError(400, "bad_type", "'version' must be a non-empty string or null")
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise RequestError(400, "bad_type", f"the {role}'s share must be a number")
        if not 0.0 <= float(share) <= 1.0:
            raise RequestError(400, "bad_share", f"the {role}'s share must be in [0, 1]")
        current = self._candidate_of(runtime.name)
        if version is None or float(share) == 0.0:
            if current is not None and current.role == role:
                self._write_candidate(runtime.name, None)
            runtime.refresh()
            return {"model": runtime.name, "candidate": None}
        loaded = self._verified(runtime, version)
        live = runtime.live if runtime.ready else None
        if live is not None and loaded.version == live.version:
            raise RequestError(409, "candidate_is_live", f"{version} is the live version")
        if live is not None and (loaded.n_features, loaded.n_classes) != (
            live.n_features,
            live.n_classes,
        ):
            raise RequestError(
                422,
                "incompatible_candidate",
                f"{runtime.name}:{loaded.version} takes {loaded.n_features} features and "
                f"gives {loaded.n_classes} classes; the live version {live.n_features} and "
                f"{live.n_classes}",
            )
        candidate = Candidate(role, loaded.version, float(share), self.clock())
        self._write_candidate(runtime.name, candidate)
        runtime.refresh()
        log.info("%s of %s: %s at %.3f", role, runtime.name, loaded.version, candidate.share)
        return {"model": runtime.name, "candidate": asdict(candidate)}

    def promote(self, authorization: str | None, model: Any = None) -> dict[str, Any]:
        """Make the shadow or canary live (reason ``promote``) and end it."""
        self._check_admin(authorization)
        runtime = self._runtime(model)
        candidate = self._candidate_of(runtime.name)
        if candidate is None:
            raise RequestError(409, "no_candidate", f"{runtime.name} has no shadow or canary")
        return self._switch(runtime, candidate.version, PROMOTE)

    def _candidate_of(self, name: str) -> Candidate | None:
        try:
            return self.state.get_candidate(name)
        except StateError as exc:
            self.metrics.state_errors.labels("switch").inc()
            raise RequestError(503, "state_unavailable", f"nothing changed: {exc}") from None

    def _write_candidate(self, name: str, candidate: Candidate | None) -> None:
        try:
            self.state.set_candidate(name, candidate)
        except StateError as exc:
            self.metrics.state_errors.labels("switch").inc()
            raise RequestError(503, "state_unavailable", f"nothing changed: {exc}") from None

    def _verified(self, runtime: ModelRuntime, version: str) -> LoadedVersion:
        try:
            # verifies the files and builds a session; the store resolves aliases such as
            # "latest", so the pointer keeps the version actually loaded
            return runtime.load(version)
        except ModelNotFoundError as exc:
            raise RequestError(404, "unknown_version", str(exc)) from None
        except (ModelVerificationError, ValueError, OSError) as exc:
            raise RequestError(422, "unverifiable_version", str(exc)) from None

    def _switch(self, runtime: ModelRuntime, version: str, reason: str) -> dict[str, Any]:
        name = runtime.name
        version = self._verified(runtime, version).version
        previous = runtime.live.version if runtime.ready else None
        try:
            if reason == "rollback":
                self.state.rollback(name, t=self.clock(), actor="http")
            else:  # the newest serves while no pointer is set: rollback returns to it
                newest = store.newest(name)
                default = None if newest is None else newest.version
                self.state.set_live(
                    name, version, reason=reason, t=self.clock(), default=default, actor="http"
                )
            candidate = self.state.get_candidate(name)
            if candidate is not None and candidate.version == version:  # it is live now
                self.state.set_candidate(name, None)
        except NoRollbackTargetError as exc:  # another process rolled back meanwhile
            raise RequestError(409, "no_previous_version", str(exc)) from None
        except StateError as exc:
            self.metrics.state_errors.labels("switch").inc()
            raise RequestError(503, "state_unavailable", f"nothing switched: {exc}") from None
        runtime.refresh()
        log.info("%s: %s:%s is live (was %s)", reason, name, version, previous)
        return {"model": name, "live": version, "previous": previous, "reason": reason}

    # -- auth ------------------------------------------------------------------------

    def _check_admin(self, authorization: str | None) -> None:
        token = self.settings.admin_token
        if not token:
            raise RequestError(
                403, "admin_disabled", "admin endpoints are disabled: set ARGUS_ADMIN_TOKEN"
            )
        self._check_token(authorization, token, "ARGUS_ADMIN_TOKEN")

    @staticmethod
    def _check_token(authorization: str | None, token: str, variable: str) -> None:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():  # the scheme is case-free
            raise RequestError(401, "unauthorized", f"send 'Authorization: Bearer <{variable}>'")
        given = credentials.strip().encode()
        if not hmac.compare_digest(given, token.encode()):
            raise RequestError(403, "forbidden", "the bearer token is not valid")


@dataclass(frozen=True)
class _VersionSeries:
    inference_duration: Any
    predictions: Any
    anomalies: Any
    anomaly_score: Any

    def count(self, pred: Prediction) -> None:
        """Count a request's answered rows, its anomalous ones and their scores."""
        self.predictions.inc(len(pred.labels))
        n_anomalous = int(pred.anomalous.sum())
        if n_anomalous:
            self.anomalies.inc(n_anomalous)
        observe_many(self.anomaly_score, pred.anomaly_scores)


def answer(live: LoadedVersion, row_ids: list[str], pred: Prediction) -> dict[str, Any]:
    """The body of a ``/predict`` response (docs/api.md)."""
    probabilities = pred.probabilities.tolist()
    labels = pred.labels.tolist()
    confidences = pred.confidences.tolist()
    scores = pred.anomaly_scores.tolist()
    anomalous = pred.anomalous.tolist()
    return {
        "model": live.name,
        "version": live.version,
        "predictions": [
            {
                "id": row_ids[i],
                "label": labels[i],
                "confidence": confidences[i],
                "probabilities": probabilities[i],
                "anomaly_score": scores[i],
                "anomalous": anomalous[i],
            }
            for i in range(len(row_ids))
        ],
    }


def not_finite(row: int) -> RequestError:
    """The refusal of rows the model cannot score: finite float32 inputs of huge magnitude
    (say 3e38) overflow inside the graph to NaN probabilities, which would answer a
    made-up label and could not be logged (NaN is no number for the log or the windows)."""
    return RequestError(
        400,
        "not_finite",
        f"row {row}: the model's output is not finite for these values "
        "(features far outside the range it was trained on)",
    )
