"""The BentoML service: moves JSON in and out of ``ArgusCore``.

Start it with ``argus serve`` (or ``bentoml serve`` from the repo root, which reads
``bentofile.yaml``). Every worker builds its own ``ArgusCore`` over the shared state;
nothing that matters lives only in one worker's memory.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import bentoml
from pydantic_core import to_json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from errors import StateError
from models import store
from service import allocator, logs, prometheus_files, timeout, ui, v2
from service.exposition import MetricsExposition
from service.fleet import Fleet
from service.guard import Guard, RequestErrors
from service.guard_policy import load_policy
from service.handlers import ArgusCore
from service.history import HistoryWriter, history_document
from service.metrics import get_metrics
from service.middleware import LimitsMiddleware
from service.runtime import ModelRuntime
from service.settings import Settings
from service.validation import RETRY_AFTER, RequestError, Rows
from state.opener import open_state
from state.types import Candidate

log = logging.getLogger("argus.service")

# The one service instance of this worker process, for the GET routes below.
_CORE: ArgusCore | None = None
_EXPOSITION: MetricsExposition | None = None


def _core() -> ArgusCore:
    if _CORE is None:
        raise RequestError(503, "not_ready", "the service is starting")
    return _CORE


def _state_unavailable(operation: str, exc: StateError) -> RequestError:
    """A failed read of the shared state on a GET route: counted, logged, a 503 that says
    when to try again and how many answered rows wait on this machine for the state."""
    get_metrics().state_errors.labels(operation).inc()
    log.error("shared state read failed (%s): %s", operation, exc)
    waiting = _CORE.waiting_rows() if _CORE is not None else 0
    return RequestError(
        503, "state_unavailable",
        f"the shared state is unavailable: {exc} ({waiting} answered rows wait to be replayed)",
        headers={"Retry-After": RETRY_AFTER},
    )  # fmt: skip


def _count_state_error(operation: str, exc: StateError) -> None:
    get_metrics().state_errors.labels(operation).inc()


def _count_state_rows(kind: str, rows: int) -> None:
    get_metrics().state_rows[kind].inc(rows)


def _state_available(available: bool) -> None:
    get_metrics().state_available.set(1 if available else 0)


def _json_route(
    operation: str, answer: Callable[[Any], dict[str, Any]]
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """A GET route answering ``answer(query)`` in a thread: a ``RequestError`` is its
    refusal, a failed state read a counted 503."""

    async def route(request: Request) -> JSONResponse:
        try:
            try:
                return JSONResponse(await asyncio.to_thread(answer, request.query_params))
            except StateError as exc:
                raise _state_unavailable(operation, exc) from None
        except RequestError as exc:
            return _refusal(exc)

    return route


def _exposition() -> MetricsExposition:
    if _EXPOSITION is None:
        raise RequestError(503, "not_ready", "the service is starting")
    return _EXPOSITION


def _history(q: Any) -> dict[str, Any]:
    core = _core()
    try:
        name = core.fleet.get(q.get("model") or None).name
    except LookupError as exc:
        raise RequestError(404, "unknown_model", str(exc)) from None
    try:
        since = float(q.get("since") or 0.0)
    except ValueError:
        raise RequestError(400, "bad_type", "'since' must be a Unix time") from None
    return history_document(core.state, name, since, q.get("version") or None)


def _feature(q: Any) -> dict[str, Any]:
    try:
        index = int(q.get("feature", ""))
    except ValueError:
        raise RequestError(400, "bad_type", "'feature' must be a feature index") from None
    return _exposition().feature(q.get("model"), q.get("version"), index)


_get_models = _json_route("models", lambda q: _core().models(q.get("model") or None))
_get_monitoring = _json_route(
    "monitoring",
    lambda q: {
        **_exposition().snapshot(q.get("version"), q.get("model")),
        "state": _core().state_status(),  # figures rest on a state that may be behind
    },
)
_get_compare = _json_route("monitoring", lambda q: _exposition().compare(q.get("model")))
_get_history = _json_route("monitoring", _history)
_get_feature = _json_route("monitoring", _feature)
_get_scores = _json_route(
    "monitoring", lambda q: _exposition().scores(q.get("model"), q.get("version"))
)
_get_card = _json_route("models", lambda q: _core().card(q.get("model") or None, q.get("version")))


def _refusal(exc: RequestError) -> JSONResponse:
    """A GET route's error answer; a 4xx is counted like every other refusal."""
    if exc.status < 500:
        get_metrics().invalid_requests.labels(exc.reason).inc()
    headers = {"x-argus-reason": exc.reason, **exc.headers}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


read_api = Starlette(
    routes=[
        Route("/models", _get_models, methods=["GET"]),
        Route("/monitoring", _get_monitoring, methods=["GET"]),
        Route("/monitoring/compare", _get_compare, methods=["GET"]),
        Route("/monitoring/history", _get_history, methods=["GET"]),
        Route("/monitoring/feature", _get_feature, methods=["GET"]),
        Route("/monitoring/scores", _get_scores, methods=["GET"]),
        Route("/models/card", _get_card, methods=["GET"]),
        *v2.routes(_core),  # the Open Inference Protocol (service/v2.py)
        *ui.routes(_core, lambda: _EXPOSITION),  # the console at /ui (service/ui.py)
    ]
)

_SETTINGS = Settings.from_env()
allocator.install()  # freed temporaries leave the worker's RSS (service/allocator.py)
timeout.install()  # BentoML's own timeout keeps each request alive for the whole timeout
logs.install()  # BentoML logs each malformed body as an ERROR traceback
prometheus_files.install()  # a metrics file caught while being created failed /metrics


@bentoml.asgi_app(read_api, path="/")
@bentoml.service(
    name="argus",
    workers=_SETTINGS.workers,
    traffic={"timeout": 60},
    http={"host": _SETTINGS.host, "port": _SETTINGS.port},
    logging={"access": {"enabled": False}},
)
class Argus:
    """Serve the live version of one model, with monitoring on every request."""

    def __init__(self) -> None:
        global _CORE, _EXPOSITION
        settings = Settings.from_env()
        settings.apply_bentoml_home()
        state = open_state(
            settings.state_url,
            settings.home,
            background=True,
            input_window=settings.input_window,
            store_inputs=settings.store_inputs,
            retention_seconds=settings.retention_seconds,
            max_rows=settings.retention_rows,
            busy_timeout=settings.state_busy_timeout,
            spill_max_bytes=settings.spill_max_bytes,
        )
        state.on_error = _count_state_error  # a failed prune or ingestion: logged, counted
        state.on_rows = _count_state_rows  # spilled, replayed and dropped rows
        state.on_available = _state_available

        def restore(name: str, version: str, candidate: Candidate | None) -> bool:
            """Re-assert a vanished pointer (and the candidate this worker held)."""
            if candidate is not None and state.get_candidate(name) is None:
                state.set_candidate(name, candidate)
            actor = f"worker {os.getpid()}"
            return state.restore_live(name, version, time.time(), actor=actor)

        def runtime_of(name: str) -> ModelRuntime:
            return ModelRuntime(
                name,
                lambda: state.get_live(name),
                candidate=lambda: state.get_candidate(name),
                restore=lambda version, held: restore(name, version, held),
                threads=settings.onnx_threads,
                model_source=settings.model_source,
            )

        served = settings.served_models
        fleet = Fleet(
            [runtime_of(settings.model)],
            settings.model,
            make=runtime_of,
            names=(lambda: served) if served is not None else store.model_names,
        )
        fleet.refresh()
        if not fleet.ready:
            # Not fatal: the worker stays up, /readyz says 503 and /predict answers 503
            # until the pointer names a version that loads (polled like any switch).
            log.error("no servable version of %s yet: %s", settings.model, fleet.get().last_error)
        self.core = ArgusCore(settings, state, fleet, get_metrics())
        self.exposition = MetricsExposition(settings, state, fleet)
        self.history = HistoryWriter(settings, state, self.exposition, fleet)
        self.guard: Guard | None = None
        if settings.guard_mode != "off":  # argus serve checked the policy before starting
            policy = load_policy(settings.guard_file)
            self.guard = Guard(
                policy, settings.guard_mode, state, self.exposition, fleet, get_metrics(),
                error_ratio=RequestErrors(),
            )  # fmt: skip
        _CORE, _EXPOSITION = self.core, self.exposition
        self._worker = str(os.getpid())  # x-argus-worker: which process answered
        log.info("worker %d serving %s", os.getpid(), fleet.describe())
        # Everything built so far (modules, the model, the state) lives as long as the
        # worker: take it out of the collector's sight, or every full collection walks
        # ~160k objects again (about 80 ms each, every second or two under load).
        gc.collect()
        gc.freeze()

    @bentoml.on_startup
    async def _follow_live_pointer(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        if self.core.settings.history_seconds > 0:
            self._historian = asyncio.get_running_loop().create_task(self._write_history())
        if self.guard is not None:
            self._guardian = asyncio.get_running_loop().create_task(self._guard(self.guard))

    async def _guard(self, guard: Guard) -> None:
        """Every half interval, try to evaluate the guard policy (``service/guard.py``):
        only the lease holder does, once per interval."""
        while True:
            await asyncio.sleep(guard.policy.interval / 2)
            try:
                await asyncio.to_thread(guard.tick)
            except StateError as exc:
                self.core.metrics.state_errors.labels("guard").inc()
                log.error("guard not evaluated: %s", exc)
            except Exception:  # keep guarding whatever one round did
                log.exception("guard not evaluated")

    async def _write_history(self) -> None:
        """Every ``ARGUS_HISTORY_SECONDS``, a point per served version, if this worker
        holds the history lease (``service/history.py``)."""
        interval = self.core.settings.history_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.history.tick)
            except StateError as exc:
                self.core.metrics.state_errors.labels("history").inc()
                log.error("figures' history not written: %s", exc)
            except Exception:  # keep writing whatever one round did
                log.exception("figures' history not written")

    async def _poll(self) -> None:
        interval = self.core.settings.poll_seconds
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.core.fleet.refresh)
                rounds += 1
                if rounds % 10 == 1:  # a killed worker's per-process gauges go
                    prometheus_files.forget_dead_workers()
            except Exception:  # keep polling whatever one round did
                log.exception("live-pointer poll failed")

    @bentoml.on_shutdown
    def _close_state(self) -> None:
        """Ingest what this worker journaled and release its journal (a killed worker's
        journal is ingested by the next reader instead)."""
        self.core.state.close()

    def __is_ready__(self) -> bool:
        return self.core.fleet.ready

    def __metrics__(self, text: str) -> str:
        try:
            return text + self.exposition.render()
        except StateError as exc:  # keep the counters (argus_state_errors_total) visible
            self.core.metrics.state_errors.labels("metrics").inc()
            log.error("window figures left out of /metrics: %s", exc)
            return text

    @bentoml.api(route="/predict")
    async def predict(
        self,
        ctx: bentoml.Context,
        instances: Rows,
        ids: list[Any] | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Predict each row of ``instances`` (numbers, one list per row); optional ``ids``
        and ``model`` (default: ``ARGUS_MODEL``)."""
        ctx.response.headers["x-argus-worker"] = self._worker
        try:  # BentoML checked the values' types while parsing the body (``Rows``)
            result = await self.core.predict(instances, ids, typed=True, model=model)
        except RequestError as exc:
            return self._error(ctx, exc)
        # Serialised here in one call: BentoML's generic path for a dict output rebuilds
        # the output's JSON schema on every call, a measurable share of a small request.
        return cast(dict[str, Any], Response(to_json(result), media_type="application/json"))

    @bentoml.api(route="/feedback")
    async def feedback(self, ctx: bentoml.Context, feedback: list[Any]) -> dict[str, Any]:
        """Join true labels to earlier predictions: ``[{"id": str, "label": int}, ...]``."""
        ctx.response.headers["x-argus-worker"] = self._worker
        try:
            return await self.core.feedback(feedback, ctx.request.headers.get("authorization"))
        except RequestError as exc:
            return self._error(ctx, exc)

    @bentoml.api(route="/models/activate")
    async def activate(
        self, ctx: bentoml.Context, version: str, model: str | None = None
    ) -> dict[str, Any]:
        """Make ``version`` of ``model`` (default ``ARGUS_MODEL``) live (needs
        ``Authorization: Bearer $ARGUS_ADMIN_TOKEN``)."""
        try:
            auth = ctx.request.headers.get("authorization")
            return await asyncio.to_thread(self.core.activate, version, auth, model)
        except RequestError as exc:
            return self._error(ctx, exc)

    @bentoml.api(route="/models/shadow")
    async def shadow(
        self,
        ctx: bentoml.Context,
        version: str | None,
        fraction: float = 1.0,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Run ``version`` as a shadow on ``fraction`` of the answered rows; ``null``
        stops it (needs the admin token)."""
        try:
            auth = ctx.request.headers.get("authorization")
            args = ("shadow", version, fraction, auth, model)
            return await asyncio.to_thread(self.core.set_candidate, *args)
        except RequestError as exc:
            return self._error(ctx, exc)

    @bentoml.api(route="/models/canary")
    async def canary(
        self,
        ctx: bentoml.Context,
        version: str | None,
        percent: float,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Let ``version`` answer ``percent`` of the requests; 0 stops it (admin token)."""
        try:
            auth = ctx.request.headers.get("authorization")
            if isinstance(percent, bool) or not 0 <= percent <= 100:
                raise RequestError(400, "bad_share", "'percent' must be a number from 0 to 100")
            args = ("canary", version, percent / 100.0, auth, model)
            return await asyncio.to_thread(self.core.set_candidate, *args)
        except RequestError as exc:
            return self._error(ctx, exc)

    @bentoml.api(route="/models/promote")
    async def promote(self, ctx: bentoml.Context, model: str | None = None) -> dict[str, Any]:
        """Make the shadow or canary live and end it (needs the admin token)."""
        try:
            auth = ctx.request.headers.get("authorization")
            return await asyncio.to_thread(self.core.promote, auth, model)
        except RequestError as exc:
            return self._error(ctx, exc)

    @bentoml.api(route="/models/rollback")
    async def rollback(self, ctx: bentoml.Context, model: str | None = None) -> dict[str, Any]:
        """Make the previously live version of ``model`` live again (needs the admin token)."""
        try:
            auth = ctx.request.headers.get("authorization")
            return await asyncio.to_thread(self.core.rollback, auth, model)
        except RequestError as exc:
            return self._error(ctx, exc)

    def _error(self, ctx: bentoml.Context, exc: RequestError) -> dict[str, Any]:
        ctx.response.status_code = exc.status
        ctx.response.headers["x-argus-reason"] = exc.reason
        for name, value in exc.headers.items():
            ctx.response.headers[name] = value
        if exc.status < 500:
            self.core.metrics.invalid_requests.labels(exc.reason).inc()
        return exc.body()


Argus.add_asgi_middleware(  # type: ignore[attr-defined]  # a bentoml Service
    LimitsMiddleware, max_body_bytes=_SETTINGS.max_body_bytes
)
