"""ASGI middleware in front of BentoML's routes: body size limit and refusal counting.

* A body over ``max_body_bytes`` is refused with 413 before it reaches any handler, both
  when ``Content-Length`` says so and when a chunked body grows past the limit (a body
  without ``Content-Length`` is read into memory, up to the limit, before the app runs).
* A 4xx that BentoML produced itself (malformed JSON, a missing field, wrong content
  type) is counted in ``argus_invalid_requests_total`` like the ones Argus refuses; the
  handlers mark their own refusals with the ``x-argus-reason`` header, counted already.
"""

from __future__ import annotations

import json
from typing import Any

from service.metrics import get_metrics

Scope = dict[str, Any]
Message = dict[str, Any]

REASON_HEADER = b"x-argus-reason"


class BodyTooLarge(Exception):
    pass


class LimitsMiddleware:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        media_type = _header(scope, b"content-type").split(b";")[0].strip().lower()
        if media_type and media_type != b"application/json":
            await self._refuse(
                send,
                415,
                "unsupported_media_type",
                f"send JSON with 'Content-Type: application/json', not {media_type.decode()!r}",
            )
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._too_large(send)
            return
        if length is None:
            # A body without Content-Length (chunked) is read here, up to the limit, before
            # the app sees it: raised from inside BentoML's handler, the refusal would
            # become BentoML's 500. The server enforces a declared Content-Length itself.
            try:
                receive = await self._buffered(receive)
            except BodyTooLarge:
                await self._too_large(send)
                return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers", []))
                if 400 <= status < 500 and REASON_HEADER not in headers:
                    reason = "schema" if status in (400, 415, 422) else f"http_{status}"
                    get_metrics().invalid_requests.labels(reason).inc()
            await send(message)

        await self.app(scope, receive, counting_send)

    async def _buffered(self, receive: Any) -> Any:
        """Read the whole body (at most ``max_body_bytes``); return a replaying receive."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: pass that on
                pending = [message]
                break
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay

    async def _too_large(self, send: Any) -> None:
        message = f"request body is larger than {self.max_body_bytes} bytes"
        await self._refuse(send, 413, "body_too_large", message)

    async def _refuse(self, send: Any, status: int, reason: str, message: str) -> None:
        get_metrics().invalid_requests.labels(reason).inc()
        body = json.dumps({"error": message, "reason": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (REASON_HEADER, reason.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return b""


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length"))
    except ValueError:
        return None
