"""ASGI middleware in front of BentoML's routes: body size limit and refusal counting.

* A body over ``max_body_bytes`` is refused with 413 before it reaches any handler, both
  when ``Content-Length`` says so and when a chunked body grows past the limit (a body
  without ``Content-Length`` is read into memory, up to the limit, before the app runs).
* A 4xx that BentoML produced itself (malformed JSON, a missing field, a field of the wrong
  JSON type, a bad row or value, an unknown path) is counted in
  ``argus_invalid_requests_total`` like the ones Argus refuses, and its body is rewritten
  to Argus's shape: ``{"error", "reason"}``. A bad row or value of ``instances`` (checked
  by BentoML while it parses the body) gets the reason and message the handler would give
  it (``not_numeric``: ``row 0, feature 5: expected a number, got a string``); any other
  problem is ``schema``, the error naming each field (``instances: Field required``
  rather than BentoML's ``1 validation error for Input``), BentoML's ``detail`` kept. The
  handlers mark their own refusals with the ``x-argus-reason`` header; those pass
  untouched.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import from_json

from service.metrics import get_metrics
from service.validation import describe_problems, rows_problem

Scope = dict[str, Any]
Message = dict[str, Any]

REASON_HEADER = b"x-argus-reason"
_REPLACED = {b"content-type", b"content-length", REASON_HEADER}


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
        binary_ok = str(scope.get("path", "")).startswith("/v2/")  # the binary tensor extension
        if (
            media_type
            and media_type != b"application/json"
            and not (binary_ok and media_type == b"application/octet-stream")
        ):
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

        held: list[Message] = []  # a refusal of BentoML's own, held until its body is whole
        chunks: list[bytes] = []  # the request body, to name a bad value in a refusal

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers", []))
                if 400 <= status < 500 and REASON_HEADER not in headers:
                    held.append(message)
                    return
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body", False):
                    await self._restate(send, held, b"".join(chunks))
                return
            await send(message)

        await self.app(scope, recording_receive, counting_send)

    async def _restate(self, send: Any, held: list[Message], request_body: bytes) -> None:
        """Send BentoML's refusal ``held`` (start, then body parts) in Argus's shape."""
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        status = int(start["status"])
        reason = "schema" if status in (400, 415, 422) else f"http_{status}"
        message, detail = _bentoml_error(body)
        problem = None
        if status == 400 and isinstance(detail, list):
            problem = rows_problem(detail, _instances(request_body))
        if problem is not None:  # a bad row or value of /predict: named like Argus's own
            reason, message, detail = problem.reason, problem.message, None
        keep = [(k, v) for k, v in start.get("headers", []) if k not in _REPLACED]
        await self._refuse(send, status, reason, message, detail, keep)

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

    async def _refuse(
        self,
        send: Any,
        status: int,
        reason: str,
        message: str,
        detail: Any = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        get_metrics().invalid_requests.labels(reason).inc()
        doc: dict[str, Any] = {"error": message, "reason": reason}
        if detail is not None:
            doc["detail"] = detail
        body = json.dumps(doc).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *(headers or []),
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


def _instances(body: bytes) -> Any:
    """The request's ``instances`` (``None`` when the body is not an object holding them).
    Parsed in Rust: a refused 8 MB body costs about as much again as its validation did."""
    try:
        doc = from_json(body, allow_inf_nan=True)
    except ValueError:
        return None
    return doc.get("instances") if isinstance(doc, dict) else None


def _bentoml_error(body: bytes) -> tuple[str, Any]:
    """The message and the ``detail`` (or ``None``) of a refusal body BentoML wrote.

    BentoML answers a ``ValidationError`` with ``{"error": "1 validation error for Input",
    "detail": [{"loc", "msg", ...}]}``, its own client errors with ``[{"error": ...}]`` and
    Starlette's unknown paths with plain text.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or "refused", None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict):
        return str(doc), None
    detail = doc.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        return describe_problems(detail), detail
    return str(doc.get("error") or doc.get("detail") or "refused"), detail
