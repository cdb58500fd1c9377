"""LimitsMiddleware restates BentoML's own refusals in Argus's error shape, and counts them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from service.metrics import get_metrics
from service.middleware import REASON_HEADER, LimitsMiddleware
from service.validation import Rows


def _app(status: int, body: bytes, headers: list[tuple[bytes, bytes]], parts: int = 1) -> Any:
    """An ASGI app answering ``status`` with ``body``, sent in ``parts`` chunks."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        size = -(-len(body) // parts) or 1
        chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


def _post(app: Any, body: bytes = b"{}", parts: int = 1) -> tuple[int, dict[bytes, bytes], bytes]:
    """POST ``body`` (in ``parts`` chunks) through the middleware to ``app``."""
    sent: list[dict[str, Any]] = []
    size = -(-len(body) // parts)
    pending = [body[i : i + size] for i in range(0, len(body), size)]

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    asyncio.run(LimitsMiddleware(app, max_body_bytes=1000)(scope, receive, send))
    start, *bodies = sent
    return start["status"], dict(start["headers"]), b"".join(m["body"] for m in bodies)


def _counted(reason: str) -> float:
    return get_metrics().invalid_requests.labels(reason)._value.get()


class _Input(BaseModel):
    instances: Rows


def _pydantic_refusal(request: bytes = b'{"rows": []}') -> tuple[bytes, list[dict[str, Any]]]:
    """The body BentoML 1.4 writes for a ValidationError (``api_endpoint_wrapper``)."""
    try:
        _Input.model_validate_json(request)
    except ValidationError as exc:
        detail = exc.errors(include_context=False, include_input=False)
        doc = {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": detail}
        return json.dumps(doc).encode(), json.loads(json.dumps(detail))
    raise AssertionError("the body was valid")


@pytest.mark.parametrize("parts", [1, 3])
def test_validation_error_is_restated_with_the_field_and_counted(parts: int) -> None:
    body, detail = _pydantic_refusal()
    before = _counted("schema")
    app = _app(400, body, [(b"content-type", b"application/json"), (b"x-trace", b"t1")], parts)
    status, headers, sent = _post(app)
    doc = json.loads(sent)
    assert status == 400
    assert doc == {"error": "instances: Field required", "reason": "schema", "detail": detail}
    assert headers[REASON_HEADER] == b"schema" and headers[b"x-trace"] == b"t1"
    assert headers[b"content-length"] == str(len(sent)).encode()
    assert _counted("schema") == before + 1


def _reading(app: Any) -> Any:
    """``app`` after reading the whole request body, as BentoML does before validating."""

    async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        await app(scope, receive, send)

    return reader


@pytest.mark.parametrize(
    ("request_body", "reason", "error"),
    [
        (b'{"instances": [[1, 2], [3, "7"]]}', "not_numeric",
         "row 1, feature 1: expected a number, got a string"),
        (b'{"instances": [[1, 2], [true, 4]]}', "not_numeric",
         "row 1, feature 0: expected a number, got a boolean"),
        (b'{"instances": [[1, NaN]]}', "not_finite", "row 0, feature 1: NaN or infinity"),
        (b'{"instances": [[1, 2], 5]}', "bad_type",
         "row 1 must be a list of numbers, got a number"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("parts", [1, 4])
def test_a_bad_value_is_named_with_the_reason_argus_gives_it(
    request_body: bytes, reason: str, error: str, parts: int
) -> None:
    refusal, _ = _pydantic_refusal(request_body)
    before = _counted(reason)
    app = _reading(_app(400, refusal, [(b"content-type", b"application/json")]))
    status, headers, sent = _post(app, request_body, parts)
    assert status == 400 and headers[REASON_HEADER] == reason.encode()
    assert json.loads(sent) == {"error": error, "reason": reason}
    assert _counted(reason) == before + 1


def test_bentoml_list_shaped_error_and_plain_text_become_one_json_shape() -> None:
    before = _counted("http_404")
    status, headers, sent = _post(_app(404, b"Not Found", [(b"content-type", b"text/plain")]))
    assert status == 404 and headers[b"content-type"] == b"application/json"
    assert json.loads(sent) == {"error": "Not Found", "reason": "http_404"}
    assert _counted("http_404") == before + 1
    listed = json.dumps([{"error": "unsupported payload"}]).encode()  # BentoML's tuple body
    status, _, sent = _post(_app(400, listed, []))
    assert json.loads(sent) == {"error": "unsupported payload", "reason": "schema"}


def test_argus_refusals_and_successes_pass_untouched() -> None:
    own = json.dumps({"error": "row 0 has 2 values", "reason": "row_length"}).encode()
    headers = [(b"content-type", b"application/json"), (REASON_HEADER, b"row_length")]
    before = _counted("row_length")
    assert _post(_app(400, own, headers, parts=2))[2] == own
    assert _counted("row_length") == before  # the handler counted it already
    assert _post(_app(200, b'{"ok": true}', []))[::2] == (200, b'{"ok": true}')
