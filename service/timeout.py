"""The request timeout, without holding every request in memory until it expires.

BentoML 1.4 puts a timeout in front of every route (``traffic.timeout`` in the service
config, 60 s by default) as ``TimeoutMiddleware``, which arms ``loop.call_later(timeout,
...)`` per request and never cancels it. The armed timer keeps the request's context
alive (its OpenTelemetry span, BentoML's request context, the waiter future) for the
whole timeout even though the response left milliseconds later: about 6.7 KB per
request here. Under steady load a worker's RSS therefore climbs for the first
``timeout`` seconds, by rate x timeout x 6.7 KB (some 120 MB per worker at 300 req/s and
60 s), and only then levels off; a faster server holds more.

``PromptTimeoutMiddleware`` behaves the same to clients (a 504 with the same message when
no response has started within the timeout) and cancels its timer as soon as the
request is done, so nothing outlives the request. ``install()`` puts it in the place
BentoML looks the class up when it builds each worker's app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


class PromptTimeoutMiddleware:
    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = asyncio.get_running_loop().create_future()  # set when the response starts

        async def send_started(message: dict[str, Any]) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_started))
        # asyncio.wait cancels its own timer when it returns: nothing outlives the request
        done, _ = await asyncio.wait(
            {started, task}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            if task.cancel():
                message = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
            return
        started.cancel()  # no-op once set; otherwise the app finished without a response
        await task


def install() -> None:
    """Make BentoML build its apps with ``PromptTimeoutMiddleware``. It imports
    ``TimeoutMiddleware`` from ``traffic`` when it assembles an app's middleware, so this
    must run before the app is built, i.e. when the service module is imported."""
    traffic.TimeoutMiddleware = PromptTimeoutMiddleware  # type: ignore[assignment,misc]
