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
from service.fleet import Fleet
from service.metrics import ServiceMetrics, observe_many
from service.runtime import LoadedVersion, ModelRuntime, Prediction
from service.settings import Settings
from service.validation import (
    RequestError,
    check_labels,
    parse_feedback,
    parse_ids,
    parse_instances,
)
from state.records import PredictionBatch
from state.shared import SharedState

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
        live = await self.serving(model)
        X = parse_instances(instances, live.n_features, self.settings.max_batch, typed=typed)
        client_ids = parse_ids(ids, len(X))
        row_ids, pred = await self.predict_rows(live, X, client_ids)
        return answer(live, row_ids, pred)

    async def serving(self, model: Any = None, version: str | None = None) -> LoadedVersion:
        """The version that answers: ``model``'s live one, or its stored ``version``
        (loaded, verified and cached on first use); 404 for an unknown model or version."""
        if model is not None and (not isinstance(model, str) or not model):
            raise RequestError(400, "bad_type", "'model' must be a non-empty string")
        try:
            runtime = self.fleet.get(model)
        except ModelNotFoundError as exc:
            raise RequestError(404, "unknown_model", str(exc)) from None
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
        returning, whichever door (``/predict``, the inference protocol) they came in by."""
        if client_ids is not None:
            await self._check_new_ids(client_ids)  # a reused id never reaches the model
        started = time.perf_counter()
        pred = live.predict(X)
        check_finite_output(pred)
        series = self._series_of(live)
        series.inference_duration.observe(time.perf_counter() - started)
        row_ids = client_ids if client_ids is not None else self.state.new_ids(len(X))
        batch = PredictionBatch(
            model=live.name,
            version=live.version,
            t=self.clock(),
            ids=row_ids,
            labels=pred.labels,
            confidences=pred.confidences,
            probabilities=pred.probabilities,
            anomaly_scores=pred.anomaly_scores,
            anomalous=pred.anomalous,
            inputs=X,
        )
        await self._record(batch)
        series.count(pred)
        return row_ids, pred

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

    async def _record(self, batch: PredictionBatch) -> None:
        """Make the predictions durable before the response leaves
        (``SharedState.record_answered``). A duplicate id that raced past
        ``_check_new_ids`` is the client's error (409). A failing store is not: the
        prediction is still answered (availability over monitoring completeness), the
        failure is counted and logged.
        """
        try:
            await self.state.record_answered(batch)
        except DuplicateIdError as exc:
            raise RequestError(409, "duplicate_ids", str(exc)) from None
        except StateError as exc:
            self.metrics.state_errors.labels("record").inc()
            log.error("prediction log write failed, answering anyway: %s", exc)

    # -- feedback --------------------------------------------------------------------

    async def feedback(self, feedback: Any, authorization: str | None = None) -> dict[str, Any]:
        if self.settings.feedback_token:
            self._check_token(authorization, self.settings.feedback_token, "ARGUS_FEEDBACK_TOKEN")
        pairs = parse_feedback(feedback, self.settings.max_batch)
        try:
            known = await asyncio.to_thread(self.state.lookup, [fid for fid, _ in pairs])
        except StateError as exc:
            self.metrics.state_errors.labels("lookup").inc()
            raise RequestError(503, "state_unavailable", f"feedback not recorded: {exc}") from None
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
            raise RequestError(503, "state_unavailable", f"feedback not recorded: {exc}") from None
        for rec in result.accepted_records:
            verdict = "correct" if rec.label == rec.true_label else "incorrect"
            self.metrics.feedback.labels(rec.model, rec.version, verdict).inc()
            self.metrics.label_delay.labels(rec.model, rec.version).observe(
                max(0.0, (rec.feedback_t or now) - rec.t)
            )
        return {
            "accepted": len(result.accepted),
            "unknown_ids": list(result.unknown_ids),
            "duplicate_ids": list(result.duplicate_ids),
        }

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

    def models(self, model: Any = None) -> dict[str, Any]:
        runtime = self._runtime(model)
        name = runtime.name
        pointer = self.state.get_live(name)
        versions = store.list_versions(name)
        live = pointer or (versions[-1].version if versions else None)
        return {
            "model": name,
            "models": sorted(self.fleet.names),
            "live": live,
            "serving": runtime.live.version if runtime.ready else None,
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

    def _switch(self, runtime: ModelRuntime, version: str, reason: str) -> dict[str, Any]:
        name = runtime.name
        try:
            # verifies the files and builds a session; the store resolves aliases such as
            # "latest", so the pointer keeps the version actually loaded
            version = runtime.load(version).version
        except ModelNotFoundError as exc:
            raise RequestError(404, "unknown_version", str(exc)) from None
        except (ModelVerificationError, ValueError, OSError) as exc:
            raise RequestError(422, "unverifiable_version", str(exc)) from None
        previous = runtime.live.version if runtime.ready else None
        try:
            if reason == "rollback":
                self.state.rollback(name, t=self.clock())
            else:  # the newest serves while no pointer is set: rollback returns to it
                newest = store.newest(name)
                default = None if newest is None else newest.version
                self.state.set_live(name, version, reason=reason, t=self.clock(), default=default)
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


def check_finite_output(pred: Prediction) -> None:
    """Refuse rows the model cannot score: finite float32 inputs of huge magnitude (say
    3e38) overflow inside the graph to NaN probabilities, which would answer a made-up
    label and could not be logged (NaN is no number for the log or the windows)."""
    finite = np.isfinite(pred.probabilities).all(axis=1) & np.isfinite(pred.anomaly_scores)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise RequestError(
            400,
            "not_finite",
            f"row {i}: the model's output is not finite for these values "
            "(features far outside the range it was trained on)",
        )
