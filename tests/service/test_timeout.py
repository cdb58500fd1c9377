"""The request timeout: same answers as BentoML's, without keeping requests alive."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

import pytest
from bentoml._internal.server.http import traffic

from service.timeout import PromptTimeoutMiddleware, install

_REQUEST: contextvars.ContextVar[Any] = contextvars.ContextVar("request")


class _Payload:
    """Stands for what a request's context holds (its span, BentoML's request object)."""


async def _respond(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(app: Any, scope_type: str = "http") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": scope_type, "path": "/"}, receive, send)
    return sent


def _payloads_alive_after(middleware: type, n: int) -> int:
    """Serve ``n`` requests through ``middleware`` (60 s timeout), each in a context of
    its own that an outer layer filled, as OpenTelemetry's middleware does with its span;
    count the payloads still alive once every response is complete."""
    app = middleware(_respond, timeout=60.0)
    refs: list[weakref.ref[_Payload]] = []

    async def one_request() -> None:
        payload = _Payload()
        refs.append(weakref.ref(payload))
        _REQUEST.set(payload)
        del payload
        assert (await _call(app))[0]["status"] == 200

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            await loop.create_task(one_request(), context=contextvars.Context())
        await asyncio.sleep(0)
        gc.collect()
        return sum(ref() is not None for ref in refs)

    return asyncio.run(main())


def test_bentoml_timeout_keeps_every_request_alive_for_the_whole_timeout() -> None:
    """Why PromptTimeoutMiddleware exists: if this starts failing, BentoML fixed it."""
    assert _payloads_alive_after(traffic.TimeoutMiddleware, 1000) == 1000


def test_prompt_timeout_lets_finished_requests_go() -> None:
    # asyncio purges cancelled timers once they outnumber the live ones (and exceed 100),
    # so a bounded few may wait for the next purge; none waits for the timeout
    alive = _payloads_alive_after(PromptTimeoutMiddleware, 1000)
    assert alive <= 110


def test_a_response_in_time_passes_through() -> None:
    sent = asyncio.run(_call(PromptTimeoutMiddleware(_respond, timeout=5.0)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"ok"


def test_no_response_within_the_timeout_is_a_504_and_the_app_is_cancelled() -> None:
    cancelled = []

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent = asyncio.run(_call(PromptTimeoutMiddleware(stuck, timeout=0.05)))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]
    assert cancelled == [True]


def test_an_app_that_fails_before_responding_raises_at_once() -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        # a liveness bound, not a speed one: waiting out the hour would fail here
        await asyncio.wait_for(_call(PromptTimeoutMiddleware(broken, timeout=3600.0)), 30)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(main())


def test_lifespan_is_passed_through_untouched() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(_call(PromptTimeoutMiddleware(app, timeout=0.01), scope_type="lifespan"))
    assert seen == ["lifespan"]


def test_the_service_installs_it_where_bentoml_looks() -> None:
    original = traffic.TimeoutMiddleware
    try:
        install()
        from bentoml._internal.server.base_app import BaseAppFactory

        class _App(BaseAppFactory):
            name = "t"

            @property
            def on_startup(self) -> list[Any]:
                return []

            @property
            def on_shutdown(self) -> list[Any]:
                return []

        classes = [m.cls for m in _App(timeout=60.0).middlewares]
        assert PromptTimeoutMiddleware in classes and original not in classes
    finally:
        traffic.TimeoutMiddleware = original  # type: ignore[misc]
