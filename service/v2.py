"""The Open Inference Protocol (KServe V2, Triton's HTTP/REST) on Argus's port.

Clients written for Triton, KServe, MLServer or Seldon (``tritonclient``, KServe's
Python client, plain HTTP) talk to Argus as to any of them. The wire format is
``service/oip.py``; the rows go through ``ArgusCore.predict_rows`` like a ``/predict``'s,
so they are validated, anomaly-scored, logged before the answer leaves and joinable by
``/feedback`` (ids come in the optional BYTES input ``id`` and go out in the output
``id``). A request for a version that is not live is answered by that version, loaded
and verified like an ``activate``, and monitored under it (docs/api.md).

Errors are ``{"error": "..."}`` with a 4xx, as the protocol says, and are counted in
``argus_invalid_requests_total`` like every other refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from errors import ModelNotFoundError
from models import store
from service import oip
from service.candidates import route
from service.handlers import ArgusCore
from service.metrics import get_metrics
from service.validation import RequestError

EXTENSIONS = ["binary_tensor_data"]

Handler = Callable[[Request], Awaitable[Response]]


def routes(core: Callable[[], ArgusCore]) -> list[Route]:
    """The protocol's routes over the worker's ``ArgusCore`` (``core()`` raises a 503
    ``RequestError`` while the worker starts)."""

    async def server(request: Request) -> Response:
        return _json(oip.server_metadata(_argus_version(), EXTENSIONS))

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if core().fleet.ready else 503)

    async def metadata(request: Request) -> Response:
        name, version = _names(request)
        loaded = await core().serving(name, version)
        versions = await asyncio.to_thread(_stored_versions, loaded.name)
        return _json(
            oip.model_metadata(
                loaded.name,
                versions if version is None else [loaded.version],
                inputs=[(loaded.input_name, "FP32", [-1, loaded.n_features])],
                outputs=oip.argus_outputs(loaded.n_classes),
            )
        )

    async def model_ready(request: Request) -> Response:
        name, version = _names(request)
        try:
            await core().serving(name, version)
        except RequestError as exc:
            if exc.status == 503:  # known but not loaded yet: "false", as the spec asks
                return Response(status_code=400)
            raise
        return Response(status_code=200)

    async def infer(request: Request) -> Response:
        name, version = _names(request)
        argus = core()
        runtime, loaded = await argus.target(name, version)
        header = request.headers.get(oip.HEADER_LENGTH)
        try:
            header_length = None if header is None else int(header)
        except ValueError:
            raise oip.OIPError(400, f"{oip.HEADER_LENGTH} must be an integer") from None
        parsed = oip.parse_infer_request(
            await request.body(),
            header_length,
            input_name=loaded.input_name,
            n_features=loaded.n_features,
            max_rows=argus.settings.max_batch,
        )
        X = np.ascontiguousarray(parsed.features, dtype=np.float32)
        ids = None if parsed.ids is None else list(parsed.ids)
        chosen = route(runtime, ids) if version is None else loaded  # a canary's share
        row_ids, pred = await argus.predict_rows(chosen, X, ids)
        argus.shadow.offer(runtime, chosen, X, row_ids, argus.clock())
        body, headers = oip.encode_infer_response(
            model_name=chosen.name,
            model_version=chosen.version,
            request_id=parsed.id,
            outputs=_outputs(row_ids, pred),
            requested=parsed.outputs,
            binary_default=parsed.binary_data_output,
        )
        return Response(body, headers=headers)

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", _answering(server), methods=["GET"]),
        Route("/v2/health/live", _answering(live), methods=["GET"]),
        Route("/v2/health/ready", _answering(ready), methods=["GET"]),
        Route(model, _answering(metadata), methods=["GET"]),
        Route(versioned, _answering(metadata), methods=["GET"]),
        Route(model + "/ready", _answering(model_ready), methods=["GET"]),
        Route(versioned + "/ready", _answering(model_ready), methods=["GET"]),
        Route(model + "/infer", _answering(infer), methods=["POST"]),
        Route(versioned + "/infer", _answering(infer), methods=["POST"]),
    ]


def _answering(handler: Handler) -> Handler:
    """``handler`` with every refusal answered as the protocol's error object."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            if exc.status < 500:
                get_metrics().invalid_requests.labels(exc.reason).inc()
            return Response(
                oip.error_body(exc.message),
                status_code=exc.status,
                media_type="application/json",
                headers={"x-argus-reason": exc.reason},
            )

    return answer


def _names(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return str(params["name"]), params.get("version")


def _outputs(row_ids: list[str], pred: Any) -> dict[str, np.ndarray]:
    return {
        "probabilities": np.asarray(pred.probabilities, dtype=np.float32),
        "label": np.asarray(pred.labels, dtype=np.int64),
        "confidence": np.asarray(pred.confidences, dtype=np.float32),
        "anomaly_score": np.asarray(pred.anomaly_scores, dtype=np.float64),
        "anomalous": np.asarray(pred.anomalous, dtype=bool),
        "id": np.asarray(row_ids, dtype=object),
    }


def _stored_versions(name: str) -> list[str]:
    try:
        return [v.version for v in store.list_versions(name)]
    except ModelNotFoundError:
        return []


def _json(doc: dict[str, Any]) -> Response:
    return Response(to_json(doc), media_type="application/json")


def _argus_version() -> str:
    try:
        return package_version("argus-serving")
    except PackageNotFoundError:
        return "0"


__all__ = ["EXTENSIONS", "routes"]
