"""Open Inference Protocol v2 (REST) codec: request bodies in, response bodies out.

Pure functions a route calls: no web framework, no model, no storage. A request is the
spec's JSON object, optionally followed by the binary tensor data extension's bytes
(``Inference-Header-Content-Length`` gives the JSON's length; each binary input says its
size in ``parameters.binary_data_size``; the header-less raw binary request is not
supported). Per-row ids travel as an optional BYTES input tensor named ``id`` (shape
``[n]``): a tensor, unlike a list-valued parameter, is what the spec's scalar
``parameters`` and every client can carry, and it mirrors the ``id`` output. Every
refusal is an ``OIPError`` naming the input, the field and, for values, the row and the
feature.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pydantic_core
from pydantic import AllowInfNan, Strict, TypeAdapter, ValidationError

from service.validation import MAX_ID_LENGTH, RequestError

HEADER_LENGTH = "Inference-Header-Content-Length"
IDS_INPUT = "id"
OUTPUTS = {"probabilities": "FP32", "label": "INT64", "confidence": "FP32"}
OUTPUTS |= {"anomaly_score": "FP64", "anomalous": "BOOL", "id": "BYTES"}
"""The output tensors Argus produces and their datatypes: probabilities [n, k], others [n]."""

_INPUT_TYPES = {  # datatype -> little-endian numpy dtype ("FP32" -> float32, ...)
    t: np.dtype(t.lower().replace("fp", "float")).newbyteorder("<")
    for t in ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64")
    + ("UINT8", "UINT16", "UINT32", "UINT64")
}
_F32_MAX = float(np.finfo(np.float32).max)
_Numbers: TypeAdapter[list[Any]] = TypeAdapter(list[Annotated[float, Strict(), AllowInfNan(False)]])


class OIPError(RequestError):
    """A refused inference request: ``status`` (4xx), ``message`` and a metric ``reason``."""

    def __init__(self, status: int, message: str, reason: str = "bad_request") -> None:
        super().__init__(status, reason, message)


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``; ``binary`` is None when not stated."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request.

    ``features`` is ``[n, d]`` (float32 for FP16/FP32 inputs, float64 otherwise), finite
    and within float32's range; ``ids`` one string per row or None; ``outputs`` None means
    every output; ``ignored_inputs`` names inputs the model does not take.
    """

    id: str | None
    features: np.ndarray
    ids: tuple[str, ...] | None
    outputs: tuple[RequestedOutput, ...] | None
    binary_data_output: bool
    ignored_inputs: tuple[str, ...] = ()


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    *,
    input_name: str,
    n_features: int,
    max_rows: int,
    output_names: Collection[str] = tuple(OUTPUTS),
    ids_input: str = IDS_INPUT,
) -> InferRequest:
    """Parse an inference request body, or raise ``OIPError`` naming the problem.

    ``header_length`` is the ``Inference-Header-Content-Length`` header as an int (None
    when absent: the body is all JSON). More than ``max_rows`` rows is a 413 (as for
    ``/predict``); every other problem a 400. Inputs other than ``input_name`` and
    ``ids_input`` are skipped and named in ``ignored_inputs``.
    """
    if header_length is not None and not 0 < header_length <= len(body):
        raise _bad(f"{HEADER_LENGTH} is {header_length}; the body has {len(body)} bytes")
    split = len(body) if header_length is None else header_length
    head, rest = body[:split], body[split:]
    try:
        req = pydantic_core.from_json(head)
    except ValueError as exc:
        hint = f" (binary data needs {HEADER_LENGTH})" if "trailing" in str(exc) else ""
        raise _bad(f"the request is not valid JSON: {exc}{hint}", "bad_json") from None
    if not isinstance(req, dict):
        raise _bad(f"the request must be a JSON object, got {_kind(req)}", "bad_json")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"'id' must be a string, got {_kind(request_id)}")
    binary_output = _parameters(req.get("parameters"), "the request").get("binary_data_output")
    if binary_output is not None and not isinstance(binary_output, bool):
        raise _bad("parameter 'binary_data_output' must be a boolean")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list of input tensors")
    found: dict[str, tuple[dict[str, Any], bytes | None]] = {}
    offset = 0
    for k, spec in enumerate(inputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _bad(f"inputs[{k}] must be an object with a string 'name'")
        name, where = spec["name"], f"input '{spec['name']}'"
        if name in found:
            raise _bad(f"{where} is given twice")
        size = _parameters(spec.get("parameters"), where).get("binary_data_size")
        raw = None
        if size is not None:
            if header_length is None:
                raise _bad(f"{where} has binary_data_size but there is no {HEADER_LENGTH}")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _bad(f"{where}: binary_data_size must be a non-negative integer")
            if "data" in spec:
                raise _bad(f"{where} has both 'data' and binary_data_size")
            if offset + size > len(rest):
                raise _bad(f"{where}: binary_data_size {size} overruns the body", "bad_binary")
            raw, offset = rest[offset : offset + size], offset + size
        found[name] = (spec, raw)
    if offset != len(rest):
        raise _bad(f"{len(rest)} bytes follow the JSON; inputs declare {offset}", "bad_binary")
    if input_name not in found:
        got = ", ".join(repr(n) for n in found)
        raise _bad(f"no input named '{input_name}' (got {got})")
    X = _features(*found[input_name], input_name, n_features, max_rows)
    ids = _ids(*found[ids_input], ids_input, len(X)) if ids_input in found else None
    ignored = tuple(n for n in found if n not in (input_name, ids_input))
    outputs = _requested(req.get("outputs"), output_names)
    return InferRequest(request_id, X, ids, outputs, bool(binary_output), ignored)


def _features(
    spec: Mapping[str, Any], raw: bytes | None, name: str, d: int, max_rows: int
) -> np.ndarray:
    """The feature matrix of input ``name``: datatype, shape, data, then every value."""
    where = f"input '{name}'"
    datatype, shape = spec.get("datatype"), spec.get("shape", ())
    if datatype not in _INPUT_TYPES:
        raise _bad(f"{where}: datatype {datatype!r} is not supported; use FP32 or FP64")
    two = isinstance(shape, list) and len(shape) == 2
    if not two or not all(type(s) is int and s >= 0 for s in shape):
        raise _bad(f"{where}: shape must be [rows, {d}], got {spec.get('shape')!r}")
    n, m = shape
    if m != d:
        raise _bad(f"{where}: shape {shape} has {m} features; the model expects {d}", "row_length")
    if n == 0:
        raise _bad(f"{where} has 0 rows: send at least one", "empty_batch")
    if n > max_rows:
        message = f"{where} has {n} rows; at most {max_rows} are allowed per request"
        raise OIPError(413, message, "too_many_rows")
    dtype = _INPUT_TYPES[datatype]
    if raw is None:
        X = _json_values(spec.get("data"), where, n, d, dtype).reshape(n, d)
    elif len(raw) != n * d * dtype.itemsize:
        need = f"{datatype} {shape} needs {n * d * dtype.itemsize}"
        raise _bad(f"{where}: {len(raw)} bytes of binary data; {need}", "bad_binary")
    else:
        X = np.frombuffer(raw, dtype=dtype).astype(np.float64).reshape(n, d)
    bad = ~np.isfinite(X) | (np.abs(X) > _F32_MAX)
    if dtype.kind in "iu":  # JSON integers of an integer datatype, within its range
        bad |= (X != np.round(X)) | (X < np.iinfo(dtype).min) | (X > np.iinfo(dtype).max)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        what = "value does not fit in float32" if dtype.kind == "f" else f"not a valid {datatype}"
        what = what if np.isfinite(X[i, j]) else "NaN or infinity"
        raise _bad(f"{where}: row {i}, feature {j}: {what}", "not_finite")
    return X.astype(np.float32 if dtype.kind == "f" and dtype.itemsize <= 4 else np.float64)


def _json_values(data: Any, where: str, n: int, d: int, dtype: np.dtype) -> np.ndarray:
    """Flat or nested (``[[...], ...]``) JSON data as float64, type-checked strictly."""
    if not isinstance(data, list):
        raise _bad(f"{where}: 'data' must be a list, got {_kind(data)}")
    if data and isinstance(data[0], list):
        if len(data) != n:
            raise _bad(f"{where}: data has {len(data)} rows; shape says {n}", "row_length")
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != d:
                got = f"{len(row)} values" if isinstance(row, list) else _kind(row)
                raise _bad(f"{where}: data row {i} has {got}; shape says {d}", "row_length")
        data = [v for row in data for v in row]
    elif len(data) != n * d:
        raise _bad(f"{where}: data has {len(data)} values; shape [{n}, {d}] needs {n * d}")
    try:
        _Numbers.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        k = int(err["loc"][0])
        at = f"{where}: row {k // d}, feature {k % d}"
        if err["type"] == "finite_number":
            raise _bad(f"{at}: NaN or infinity", "not_finite") from None
        raise _bad(f"{at}: expected a number, got {_kind(data[k])}", "not_numeric") from None
    try:
        return np.asarray(data, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise _bad(f"{where}: a value does not fit in float32", "not_finite") from None


def _ids(spec: Mapping[str, Any], raw: bytes | None, name: str, n: int) -> tuple[str, ...]:
    """Row ids from a BYTES input of shape [n]: non-empty UTF-8 strings, unique."""
    where, shape = f"input '{name}'", spec.get("shape")
    if spec.get("datatype") != "BYTES":
        raise _bad(f"{where} holds row ids: its datatype must be BYTES", "bad_ids")
    if shape != [n]:
        raise _bad(f"{where} has shape {shape!r} for {n} rows; give [{n}]", "bad_ids")
    values = _split_bytes(raw, where) if raw is not None else spec.get("data")
    if not isinstance(values, list):
        raise _bad(f"{where}: 'data' must be a list of strings, got {_kind(values)}", "bad_ids")
    if len(values) != n:
        raise _bad(f"{where} has {len(values)} ids for {n} rows; give one per row", "bad_ids")
    ids: dict[str, None] = {}  # insertion-ordered, for the duplicate check
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"{where}: id {i} is not UTF-8 text", "bad_ids") from None
        if not isinstance(v, str) or not v or len(v) > MAX_ID_LENGTH:
            limit = f"a non-empty string of at most {MAX_ID_LENGTH} characters"
            raise _bad(f"{where}: id {i} must be {limit}, got {_kind(v)}", "bad_ids")
        if v in ids:
            raise _bad(f"{where}: id {i} {v!r} appears twice", "duplicate_ids")
        ids[v] = None
    return tuple(ids)


def _split_bytes(raw: bytes, where: str) -> list[bytes]:
    """BYTES binary data: each element a 4-byte little-endian length, then the bytes."""
    out: list[bytes] = []
    k = 0
    while k < len(raw):
        size = struct.unpack_from("<I", raw, k)[0] if k + 4 <= len(raw) else len(raw)
        if k + 4 + size > len(raw):
            raise _bad(f"{where}: element {len(out)} overruns the binary data", "bad_binary")
        out.append(raw[k + 4 : k + 4 + size])
        k += 4 + size
    return out


def _requested(outputs: Any, known: Collection[str]) -> tuple[RequestedOutput, ...] | None:
    """The request's ``outputs`` (None when absent or empty: every output)."""
    if outputs is None or outputs == []:
        return None
    if not isinstance(outputs, list):
        raise _bad(f"'outputs' must be a list, got {_kind(outputs)}")
    chosen: dict[str, RequestedOutput] = {}
    for k, spec in enumerate(outputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _bad(f"outputs[{k}] must be an object with a string 'name'")
        name, where = spec["name"], f"outputs[{k}] '{spec['name']}'"
        if name not in known:
            raise _bad(f"{where}: no such output; the model has {', '.join(known)}", "bad_output")
        if name in chosen:
            raise _bad(f"{where} is requested twice", "bad_output")
        params = _parameters(spec.get("parameters"), where)
        if "classification" in params:
            raise _bad(f"{where}: the classification extension is not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise _bad(f"{where}: parameter 'binary_data' must be a boolean")
        chosen[name] = RequestedOutput(name, binary)
    return tuple(chosen.values())


def _parameters(params: Any, where: str) -> Mapping[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be an object, got {_kind(params)}")
    return params


def _bad(message: str, reason: str = "bad_request") -> OIPError:
    return OIPError(400, message, reason)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    requested: Sequence[RequestedOutput] | None,
    binary_default: bool,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Content-Type``, and ``HEADER_LENGTH`` when any
    output is binary). ``requested`` None returns every output; an output's own
    ``binary`` wins over ``binary_default``. JSON data is flat, row-major. Raises
    ``ValueError`` for a requested output missing from ``outputs`` or a non-finite value
    bound for JSON."""
    chosen = (
        [(name, binary_default) for name in outputs]
        if requested is None
        else [(r.name, binary_default if r.binary is None else r.binary) for r in requested]
    )
    tensors, blobs = [], []
    for name, binary in chosen:
        if name not in outputs:
            raise ValueError(f"output {name!r} was requested but not produced")
        arr = np.asarray(outputs[name])
        datatype = _datatype(arr)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _to_binary(arr, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":  # a bytes element that is not UTF-8 raises ValueError
            tensor["data"] = [
                v.decode() if isinstance(v, bytes) else v for v in arr.ravel().tolist()
            ]
        else:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"output {name!r} holds NaN or infinity; JSON cannot carry it")
            tensor["data"] = arr.ravel().tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    doc = {k: v for k, v in (doc | {"id": request_id}).items() if v is not None}
    doc["outputs"] = tensors
    head = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if not blobs:
        return head, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + b"".join(blobs), headers


def _datatype(arr: np.ndarray) -> str:
    kind, bits = arr.dtype.kind, str(8 * arr.dtype.itemsize)
    names = {"b": "BOOL", "f": "FP" + bits, "i": "INT" + bits, "u": "UINT" + bits}
    if kind not in names and kind not in "USO":
        raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {arr.dtype}")
    return names.get(kind, "BYTES")


def _to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    items = [v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel().tolist()]
    return b"".join(struct.pack("<I", len(v)) + v for v in items)


def server_metadata(version: str, extensions: Sequence[str], name: str = "argus") -> dict[str, Any]:
    """The spec's server metadata object (``GET /v2``)."""
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str = "onnxruntime_onnx",
    inputs: Sequence[tuple[str, str, Sequence[int]]] = (),
    outputs: Sequence[tuple[str, str, Sequence[int]]] = (),
) -> dict[str, Any]:
    """The spec's model metadata object; tensors are ``(name, datatype, shape)`` with -1
    for a variable dimension."""
    doc: dict[str, Any] = {"name": name, "versions": list(versions), "platform": platform}
    for key, items in (("inputs", inputs), ("outputs", outputs)):
        doc[key] = [{"name": n, "datatype": t, "shape": list(s)} for n, t, s in items]
    return doc


def argus_outputs(n_classes: int) -> list[tuple[str, str, list[int]]]:
    """Metadata of Argus's outputs for a model with ``n_classes`` classes."""
    return [(n, t, [-1, n_classes] if n == "probabilities" else [-1]) for n, t in OUTPUTS.items()]


def error_body(message: str) -> bytes:
    """The spec's error object, ``{"error": message}``, as JSON bytes."""
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")


_KINDS = {type(None): "null", bool: "a boolean", str: "a string", list: "a list"}
_KINDS |= {dict: "an object", int: "a number", float: "a number"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)
