"""The Open Inference Protocol codec, checked against tritonclient's own request builder
and response parser (an independent implementation of the same spec)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from service.oip import (
    HEADER_LENGTH,
    OUTPUTS,
    InferRequest,
    OIPError,
    RequestedOutput,
    argus_outputs,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
    server_metadata,
)
from service.validation import RequestError

D = 4


def parse(
    body: bytes,
    header_length: int | None = None,
    input_name: str = "input",
    n_features: int = D,
    output_names: tuple[str, ...] = tuple(OUTPUTS),
) -> InferRequest:
    return parse_infer_request(
        body,
        header_length,
        input_name=input_name,
        n_features=n_features,
        max_rows=8,
        output_names=output_names,
    )


def triton_request(
    X: np.ndarray,
    *,
    binary: bool,
    ids: list[str] | None = None,
    outputs: list[InferRequestedOutput] | None = None,
    request_id: str = "",
) -> tuple[bytes, int | None]:
    datatype = {np.float32: "FP32", np.float64: "FP64"}[X.dtype.type]
    inputs = [InferInput("input", list(X.shape), datatype).set_data_from_numpy(X, binary)]
    if ids is not None:
        tensor = np.array([i.encode() for i in ids], dtype=np.object_)
        inputs.append(InferInput("id", [len(ids)], "BYTES").set_data_from_numpy(tensor, binary))
    return InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id
    )


def argus_result(n: int = 3, k: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    return {
        "probabilities": p,
        "label": p.argmax(axis=1).astype(np.int64),
        "confidence": p.max(axis=1),
        "anomaly_score": rng.gamma(2.0, size=n),
        "anomalous": rng.random(n) < 0.5,
        "id": np.array([f"row-{i}-é" for i in range(n)], dtype=object),
    }


def triton_parse(body: bytes, headers: dict[str, str]) -> Any:
    length = headers.get(HEADER_LENGTH)
    return InferenceServerClient.parse_response_body(
        body, header_length=None if length is None else int(length)
    )


# -- requests built by tritonclient ------------------------------------------------------


def test_binary_fp32_input_with_binary_ids() -> None:
    X = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
    ids = ["a", "b-é", "c", "d", "e"]
    wanted = [InferRequestedOutput("label", binary_data=True), InferRequestedOutput("id", False)]
    body, length = triton_request(X, binary=True, ids=ids, outputs=wanted, request_id="r-1")
    assert length is not None and length < len(body)
    req = parse(body, length)
    assert req.features.dtype == np.float32
    np.testing.assert_array_equal(req.features, X)
    assert req.id == "r-1"
    assert req.ids == tuple(ids)
    assert req.outputs == (RequestedOutput("label", True), RequestedOutput("id", False))
    assert req.binary_data_output is False and req.ignored_inputs == ()


def test_json_fp64_input_with_json_ids() -> None:
    X = np.random.default_rng(2).normal(size=(3, D))
    body, length = triton_request(X, binary=False, ids=["x", "y", "z"])
    assert length is None
    req = parse(body, length)
    assert req.features.dtype == np.float64
    np.testing.assert_array_equal(req.features, X)
    assert req.ids == ("x", "y", "z") and req.id is None
    # tritonclient asks for every output in binary when it names none
    assert req.outputs is None and req.binary_data_output is True


def test_nested_and_flat_data_agree() -> None:
    rows = [[1.5, 2, 3, 4], [5, 6, 7, 8.25]]
    tensor = {"name": "input", "shape": [2, D], "datatype": "FP32"}
    nested = json.dumps({"inputs": [tensor | {"data": rows}]}).encode()
    flat = json.dumps({"inputs": [tensor | {"data": sum(rows, [])}]}).encode()
    np.testing.assert_array_equal(parse(nested).features, np.array(rows, dtype=np.float32))
    np.testing.assert_array_equal(parse(flat).features, parse(nested).features)


def test_spec_example_request_parses() -> None:
    """The inference request example of kserve's required_api.md, verbatim."""
    body = b"""{
      "id" : "42",
      "inputs" : [
        {"name" : "input0", "shape" : [ 2, 2 ], "datatype" : "UINT32", "data" : [ 1, 2, 3, 4 ]},
        {"name" : "input1", "shape" : [ 3 ], "datatype" : "BOOL", "data" : [ true ]}
      ],
      "outputs" : [ { "name" : "output0" } ]
    }"""
    req = parse(body, input_name="input0", n_features=2, output_names=("output0",))
    np.testing.assert_array_equal(req.features, [[1, 2], [3, 4]])
    assert req.id == "42" and req.ignored_inputs == ("input1",)
    assert req.outputs == (RequestedOutput("output0"),)


def test_binary_extension_example_parses() -> None:
    """The binary tensor data extension's example: two binary inputs, 16 + 3 bytes."""
    head = json.dumps(
        {
            "model_name": "mymodel",
            "inputs": [
                {
                    "name": "input0",
                    "shape": [2, 2],
                    "datatype": "UINT32",
                    "parameters": {"binary_data_size": 16},
                },
                {
                    "name": "input1",
                    "shape": [3],
                    "datatype": "BOOL",
                    "parameters": {"binary_data_size": 3},
                },
            ],
            "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    data = np.array([[1, 2], [3, 4]], dtype="<u4").tobytes() + b"\x01\x00\x01"
    req = parse(
        head + data, len(head), input_name="input0", n_features=2, output_names=("output0",)
    )
    np.testing.assert_array_equal(req.features, [[1, 2], [3, 4]])
    assert req.outputs == (RequestedOutput("output0", True),)


# -- responses read by tritonclient ------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_every_output_round_trips(binary: bool) -> None:
    out = argus_result()
    body, headers = encode_infer_response(
        model_name="digits",
        model_version="v1",
        request_id="r-9",
        outputs=out,
        requested=None,
        binary_default=binary,
    )
    assert (HEADER_LENGTH in headers) is binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    result = triton_parse(body, headers)
    meta = result.get_response()
    assert (meta["model_name"], meta["model_version"], meta["id"]) == ("digits", "v1", "r-9")
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUTS)
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == OUTPUTS
    for name, expected in out.items():
        got = result.as_numpy(name)
        assert got.shape == expected.shape, name
        if name == "id":
            texts = [v.decode() if isinstance(v, bytes) else v for v in got.tolist()]
            assert texts == expected.tolist()
        else:
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected)


def test_json_output_data_is_flat_row_major() -> None:
    out = argus_result(n=2, k=3)
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=out,
        requested=[RequestedOutput("probabilities")],
        binary_default=False,
    )
    doc = json.loads(body)
    assert set(doc) == {"model_name", "outputs"}
    (tensor,) = doc["outputs"]
    assert tensor["shape"] == [2, 3]
    assert tensor["data"] == out["probabilities"].ravel().tolist()


def test_a_subset_of_outputs_mixing_binary_and_json() -> None:
    X = np.ones((3, D), dtype=np.float32)
    wanted = [InferRequestedOutput("confidence", binary_data=False), InferRequestedOutput("label")]
    req = parse(*triton_request(X, binary=True, outputs=wanted))
    out = argus_result()
    body, headers = encode_infer_response(
        model_name="m",
        model_version="2",
        request_id=req.id,
        outputs=out,
        requested=req.outputs,
        binary_default=req.binary_data_output,
    )
    result = triton_parse(body, headers)
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["confidence", "label"]
    assert "data" in result.get_output("confidence")
    assert result.get_output("label")["parameters"] == {"binary_data_size": 3 * 8}
    np.testing.assert_array_equal(result.as_numpy("confidence"), out["confidence"])
    np.testing.assert_array_equal(result.as_numpy("label"), out["label"])


def test_bytes_output_uses_length_prefixes() -> None:
    out = {"id": np.array(["ab", "", "ü"], dtype=object)}
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=out,
        requested=None,
        binary_default=True,
    )
    tail = body[int(headers[HEADER_LENGTH]) :]
    assert (
        tail
        == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "ü".encode()
    )


def test_encoder_refuses_what_it_cannot_send() -> None:
    out = {"anomaly_score": np.array([1.0, np.inf])}
    kw: dict[str, Any] = {"model_name": "m", "model_version": None, "request_id": None}
    with pytest.raises(ValueError, match="anomaly_score"):
        encode_infer_response(outputs=out, requested=None, binary_default=False, **kw)
    with pytest.raises(ValueError, match="label"):
        encode_infer_response(
            outputs=out, requested=[RequestedOutput("label")], binary_default=False, **kw
        )


# -- refusals ----------------------------------------------------------------------------


def tensor(**over: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [2, D], "datatype": "FP32", "data": list(range(8))} | over


def body(*inputs: dict[str, Any], **request: Any) -> bytes:
    return json.dumps({"inputs": list(inputs) or [tensor()]} | request).encode()


def binary(X: np.ndarray, declared: int | None = None, extra: bytes = b"") -> tuple[bytes, int]:
    """A request whose input is binary: its data (cut to ``declared`` bytes), then ``extra``."""
    data = X.astype("<f4").tobytes()
    size = len(data) if declared is None else declared
    params = {"binary_data_size": size}
    head = json.dumps({"inputs": [tensor(data=None, shape=list(X.shape), parameters=params)]})
    head = head.replace(', "data": null', "")
    return head.encode() + data[:size] + extra, len(head)


def nan_at(i: int, j: int) -> np.ndarray:
    X = np.zeros((2, D), dtype=np.float32)
    X[i, j] = np.nan
    return X


def ids(values: list[Any], shape: list[int] | None = None, datatype: str = "BYTES") -> bytes:
    shape = [len(values)] if shape is None else shape
    return body(tensor(), {"name": "id", "shape": shape, "datatype": datatype, "data": values})


REFUSALS: dict[str, tuple[bytes, int | None, str]] = {
    "malformed json": (b'{"inputs": [', None, "not valid JSON"),
    "not an object": (b"[1, 2]", None, "must be a JSON object, got a list"),
    "missing inputs": (b"{}", None, "'inputs' must be a non-empty list"),
    "unnamed input": (body({"shape": [2, D]}), None, "inputs[0] must be an object"),
    "wrong input name": (body(tensor(name="x")), None, "no input named 'input' (got 'x')"),
    "input twice": (body(tensor(), tensor()), None, "input 'input' is given twice"),
    "wrong datatype": (body(tensor(datatype="BYTES")), None, "datatype 'BYTES'"),
    "shape not 2-d": (body(tensor(shape=[8])), None, "shape must be [rows, 4], got [8]"),
    "data vs shape": (body(tensor(shape=[3, D])), None, "data has 8 values; shape [3, 4] needs 12"),
    "wrong width": (body(tensor(shape=[2, 5], data=[0] * 10)), None, "has 5 features; the model"),
    "no rows": (body(tensor(shape=[0, D], data=[])), None, "has 0 rows"),
    "missing data": (body(tensor(data=None)), None, "'data' must be a list, got null"),
    "ragged rows": (
        body(tensor(data=[[1, 2, 3, 4], [5, 6, 7]])), None, "data row 1 has 3 values; shape says 4"
    ),
    "nan in json": (b'{"inputs": [' + json.dumps(tensor(data=[0] * 6 + [float("nan"), 0])).encode()
                    + b"]}", None, "row 1, feature 2: NaN or infinity"),
    "string value": (body(tensor(data=[0, "1"] + [0] * 6)), None,
                     "row 0, feature 1: expected a number, got a string"),
    "boolean value": (body(tensor(data=[0] * 7 + [True])), None, "row 1, feature 3: expected a "
                      "number, got a boolean"),
    "beyond float32": (body(tensor(data=[0] * 5 + [1e39, 0, 0])), None,
                       "row 1, feature 1: value does not fit in float32"),
    "uint out of range": (body(tensor(datatype="UINT8", data=[0] * 4 + [300, 0, 0, 0])), None,
                          "row 1, feature 0: not a valid UINT8"),
    "int with a fraction": (body(tensor(datatype="INT32", data=[0.5] + [0] * 7)), None,
                            "row 0, feature 0: not a valid INT32"),
    "nan in binary": (*binary(nan_at(1, 3)), "row 1, feature 3: NaN or infinity"),
    "binary size": (*binary(np.zeros((2, D)), declared=12), "12 bytes of binary data; FP32 "
                    "[2, 4] needs 32"),
    "binary overrun": (*binary(np.zeros((2, D)), declared=64), "binary_data_size 64 overruns"),
    "trailing bytes": (*binary(np.zeros((2, D)), extra=b"\0"), "33 bytes follow the JSON"),
    "binary without header": (binary(np.zeros((2, D)))[0], None, "binary data needs Inference-"),
    "size without header": (binary(np.zeros((2, D)), declared=0)[0], None, "binary_data_size but "
                            "there is no Inference-Header-Content-Length"),
    "header beyond body": (body(), 10_000, "Inference-Header-Content-Length is 10000"),
    "unknown output": (body(outputs=[{"name": "logits"}]), None, "'logits': no such output"),
    "output twice": (body(outputs=[{"name": "label"}] * 2), None, "requested twice"),
    "binary_data not bool": (body(outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
                             None, "'binary_data' must be a boolean"),
    "classification": (body(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
                       None, "classification extension is not supported"),
    "binary_data_output": (body(parameters={"binary_data_output": "yes"}), None,
                           "'binary_data_output' must be a boolean"),
    "request id": (body(id=42), None, "'id' must be a string, got a number"),
    "ids count": (ids(["a", "b", "c"]), None, "input 'id' has shape [3] for 2 rows; give [2]"),
    "ids data count": (ids(["a"], shape=[2]), None, "input 'id' has 1 ids for 2 rows"),
    "ids not strings": (ids([1, 2]), None, "input 'id': id 0 must be a non-empty string"),
    "ids empty string": (ids(["a", ""]), None, "input 'id': id 1 must be a non-empty string"),
    "ids too long": (ids(["a", "x" * 129]), None, "at most 128 characters"),
    "ids duplicated": (ids(["a", "a"]), None, "input 'id': id 1 'a' appears twice"),
    "ids datatype": (ids(["a", "b"], datatype="FP32"), None, "its datatype must be BYTES"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_problem(case: str) -> None:
    data, length, message = REFUSALS[case]
    with pytest.raises(OIPError) as info:
        parse(data, length)
    assert info.value.status == 400
    assert message in info.value.message
    assert isinstance(info.value, RequestError)


def test_too_many_rows_is_413_as_for_predict() -> None:
    with pytest.raises(OIPError) as info:
        parse(body(tensor(shape=[9, D], data=[0] * 9 * D)))
    assert info.value.status == 413 and info.value.reason == "too_many_rows"
    assert "9 rows; at most 8" in info.value.message


def test_binary_ids_that_overrun_or_are_not_utf8() -> None:
    X = np.zeros((2, D), dtype=np.float32)
    for raw, message in [
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"b", "element 1 overruns"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"\xff", "id 1 is not UTF-8"),
    ]:
        inputs = [
            {
                "name": "input",
                "shape": [2, D],
                "datatype": "FP32",
                "parameters": {"binary_data_size": X.nbytes},
            },
            {
                "name": "id",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            },
        ]
        head = json.dumps({"inputs": inputs}).encode()
        with pytest.raises(OIPError, match=message):
            parse(head + X.tobytes() + raw, len(head))


# -- metadata and errors -----------------------------------------------------------------


def test_metadata_and_error_bodies() -> None:
    assert server_metadata("0.1.0", ["binary_tensor_data"]) == {
        "name": "argus",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    meta = model_metadata(
        "digits", ["v1", "v2"], inputs=[("input", "FP32", (-1, 64))], outputs=argus_outputs(10)
    )
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["v1", "v2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUTS)
    assert json.loads(error_body("row 1: bad ü")) == {"error": "row 1: bad ü"}
