"""The Open Inference Protocol against a real ``argus serve`` with 2 workers and 2 models.

The digits MLP is the default model; a scikit-learn classifier brought in with
``argus models register-onnx`` while the server runs is found without a restart. Real
clients: ``tritonclient[http]`` and plain HTTP from the specification's examples
(KServe's own Python client pulls in kubernetes, pandas and grpc and pins psutil<6 and
protobuf<7, below what this project's stack installs, so it is not used here). Every
answer equals ``/predict``'s on the same rows, and the rows are in the log and the
monitoring of their model and version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from models.store import StoredVersion
from tests.argus.test_cli import skl_onnx
from tests.harness import ARGUS, ArgusServer, seed_store

pytestmark = pytest.mark.integration

ROWS = load_digits().data.astype(np.float32)
TOKEN = "oip-admin"


@pytest.fixture(scope="module")
def digits(outcome: Any) -> list[StoredVersion]:
    from training.publish import publish

    name = f"oip-{uuid.uuid4().hex[:8]}"
    return [publish(outcome, name), publish(outcome, name)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, digits: list[StoredVersion]) -> Any:
    home = tmp_path_factory.mktemp("oip")
    seed_store(Path(os.environ["BENTOML_HOME"]), digits[0].name, home)
    srv = ArgusServer(home, digits[0].name, env={"ARGUS_ADMIN_TOKEN": TOKEN})
    with srv:
        skl = register_skl(home, tmp_path_factory.mktemp("skl"))
        ready = f"{srv.url}/v2/models/{skl}/ready"
        took = wait_for(lambda: all(httpx.get(ready).status_code == 200 for _ in range(6)), 20)
        print(f"\nregister-onnx with the server up: every worker served it {took:.2f} s later")
        yield srv, skl


def register_skl(home: Path, work: Path) -> str:
    """``argus models register-onnx`` into the running server's store; its name."""
    path, ref = skl_onnx(work)
    name = "skl-digits"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGUS_", "BENTOML_"))}
    env |= {"ARGUS_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    done = subprocess.run(
        [ARGUS, "models", "register-onnx", str(path), "--reference", str(ref),
         "--label-column", "digit", "--name", name],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return name


def wait_for(check: Any, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not true within {seconds} s")


def test_triton_client_speaks_to_argus(served: Any, digits: list[StoredVersion]) -> None:
    import tritonclient.http as triton

    srv, skl = served
    old, new = digits
    client = triton.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(skl)  # registered while the server ran (the fixture)
    meta = client.get_model_metadata(new.name)
    assert meta["name"] == new.name and meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == [old.version, new.version]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"] for o in meta["outputs"]} == {
        "probabilities", "label", "confidence", "anomaly_score", "anomalous", "id",
    }  # fmt: skip
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]

    X = ROWS[:5]
    results = {}
    for model in (new.name, skl):
        input_name = client.get_model_metadata(model)["inputs"][0]["name"]  # skl2onnx: "X"
        for binary_in, binary_out in ((False, False), (True, True), (True, False)):
            ids = [f"{model}-{int(binary_in)}{int(binary_out)}-{i}" for i in range(len(X))]
            features = triton.InferInput(input_name, list(X.shape), "FP32")
            features.set_data_from_numpy(X, binary_data=binary_in)
            id_input = triton.InferInput("id", [len(X)], "BYTES")
            id_input.set_data_from_numpy(np.array(ids, dtype=object), binary_data=binary_in)
            outputs = [
                triton.InferRequestedOutput(name, binary_data=binary_out)
                for name in ("probabilities", "label", "anomaly_score", "id")
            ]
            result = client.infer(model, [features, id_input], outputs=outputs, request_id="r1")
            response = result.get_response()
            assert response["model_name"] == model and response["id"] == "r1"
            got = [i.decode() if isinstance(i, bytes) else i for i in result.as_numpy("id")]
            assert got == ids
            results[(model, binary_in, binary_out)] = result
        with httpx.Client(base_url=srv.url) as c:  # the same rows through /predict
            body = c.post("/predict", json={"instances": X.tolist(), "model": model}).json()
        expected = body["predictions"]
        for result in (r for (m, *_), r in results.items() if m == model):
            np.testing.assert_allclose(
                result.as_numpy("probabilities"), [p["probabilities"] for p in expected],
                rtol=1e-6,
            )  # fmt: skip
            assert result.as_numpy("label").tolist() == [p["label"] for p in expected]
            np.testing.assert_allclose(
                result.as_numpy("anomaly_score"), [p["anomaly_score"] for p in expected]
            )
        assert body["version"] == result.get_response()["model_version"]

    # the rows are logged under their model and version: their labels join by id
    with httpx.Client(base_url=srv.url) as c:
        fb = [
            {"id": f"{skl}-11-{i}", "label": int(y)} for i, y in enumerate(load_digits().target[:5])
        ]
        assert c.post("/feedback", json={"feedback": fb}).json()["accepted"] == 5
        snap = c.get("/monitoring", params={"model": skl}).json()
        assert snap["model"] == skl and snap["totals"]["predictions"] == 4 * 5
        assert snap["totals"]["labelled"] == 5
        digits_snap = c.get("/monitoring").json()
        assert digits_snap["model"] == new.name and digits_snap["totals"]["predictions"] == 4 * 5


def test_a_stored_version_that_is_not_live_answers_and_is_monitored_apart(
    served: Any, digits: list[StoredVersion]
) -> None:
    srv, _ = served
    old, new = digits
    with httpx.Client(base_url=srv.url) as c:
        doc = {  # the specification's shape: flat data, JSON outputs by default
            "id": "req-7",
            "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP64",
                        "data": ROWS[10:12].astype(np.float64).ravel().tolist()}],
            "outputs": [{"name": "label"}, {"name": "confidence"}],
        }  # fmt: skip
        before = c.get("/monitoring", params={"version": old.version}).json()
        r = c.post(f"/v2/models/{old.name}/versions/{old.version}/infer", json=doc)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == old.version and body["id"] == "req-7"
        assert [o["name"] for o in body["outputs"]] == ["label", "confidence"]
        after = c.get("/monitoring", params={"version": old.version}).json()
        assert after["totals"]["predictions"] == before["totals"]["predictions"] + 2
        assert c.get("/models").json()["live"] == new.version  # nothing switched


@pytest.mark.parametrize(
    ("path", "doc", "status", "needle"),
    [
        ("/v2/models/nope/infer", {"inputs": []}, 404, "not served"),
        ("/v2/models/{m}/versions/nope/infer", {"inputs": []}, 404, "nope"),
        ("/v2/models/{m}/infer", {"inputs": [{"name": "input", "shape": [1, 3],
         "datatype": "FP32", "data": [1, 2, 3]}]}, 400, "64"),
        ("/v2/models/{m}/infer", {"inputs": [{"name": "input", "shape": [1, 64],
         "datatype": "FP32", "data": ["x"] * 64}]}, 400, "input"),
        ("/v2/models/{m}/infer", {"inputs": [{"name": "input", "shape": [2000, 64],
         "datatype": "FP32", "data": [0.0] * 128000}]}, 413, "rows"),
    ],
)  # fmt: skip
def test_protocol_errors_are_4xx_error_objects(
    served: Any, digits: list[StoredVersion], path: str, doc: Any, status: int, needle: str
) -> None:
    srv, _ = served
    with httpx.Client(base_url=srv.url) as c:
        r = c.post(path.format(m=digits[0].name), json=doc)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and needle in body["error"]


def test_two_models_in_metrics(served: Any, digits: list[StoredVersion]) -> None:
    srv, skl = served
    with httpx.Client(base_url=srv.url) as c:
        for model in (digits[0].name, skl):
            assert c.post(
                "/predict", json={"instances": ROWS[:3].tolist(), "model": model}
            ).is_success
        text = c.get("/metrics").text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "model" in s.labels:
                names.setdefault(s.name, set()).add(s.labels["model"])
    for metric in ("argus_predictions_total", "argus_model_info", "argus_window_rows",
                   "argus_estimated_accuracy_ratio", "argus_feature_psi"):  # fmt: skip
        assert names[metric] == {digits[0].name, skl}, metric
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("ARGUS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("promtool is required (ARGUS_REQUIRE_PROMETHEUS=1) but not installed")
        pytest.skip("promtool not installed")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.strip() == "", json.dumps(check.stdout[-2000:])
    assert sys.executable  # the server ran from this interpreter's environment
