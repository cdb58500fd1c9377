"""Integration: a real ``argus serve`` with 2 workers on 127.0.0.1, in a temporary home."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from models.store import StoredVersion
from state.opener import open_state
from tests.harness import ArgusServer, seed_store

pytestmark = pytest.mark.integration

TOKEN = "it-admin-token"
ROWS = load_digits().data.astype(np.float32)


@pytest.fixture(scope="module")
def versions(outcome: Any) -> list[StoredVersion]:
    from training.publish import publish

    name = f"it-{uuid.uuid4().hex[:8]}"
    return [publish(outcome, name), publish(outcome, name)]


@pytest.fixture
def server(tmp_path: Path, versions: list[StoredVersion]) -> Any:
    seed_store(Path(os.environ["BENTOML_HOME"]), versions[0].name, tmp_path)
    srv = ArgusServer(tmp_path, versions[0].name, env={"ARGUS_ADMIN_TOKEN": TOKEN})
    with srv:
        yield srv


def rows(n: int, offset: int = 0) -> list[list[float]]:
    return ROWS[offset : offset + n].tolist()


def predict_on_new_connections(srv: ArgusServer, want_workers: int = 2) -> dict[str, list[str]]:
    """Send single requests on fresh connections until ``want_workers`` workers answered."""
    by_worker: dict[str, list[str]] = {}
    for i in range(200):
        with srv.client() as c:
            r = c.post("/predict", json={"instances": rows(1, i)})
            assert r.status_code == 200, r.text
            by_worker.setdefault(r.headers["x-argus-worker"], []).append(
                r.json()["predictions"][0]["id"]
            )
        if len(by_worker) >= want_workers and i >= 10:
            break
    return by_worker


def test_both_workers_answer_and_feedback_crosses_workers(server: ArgusServer) -> None:
    by_worker = predict_on_new_connections(server)
    assert len(by_worker) == 2, f"only {list(by_worker)} answered"
    (w1, ids1), (w2, _) = sorted(by_worker.items())
    # find a connection served by the other worker (keep-alive keeps it there), then
    # send feedback for a prediction the first worker made
    extra = 0
    for _ in range(200):
        with server.client() as c:
            probe = c.post("/predict", json={"instances": rows(1)})
            extra += 1
            if probe.headers["x-argus-worker"] != w2:
                continue
            r = c.post("/feedback", json={"feedback": [{"id": ids1[0], "label": 0}]})
            assert r.headers["x-argus-worker"] == w2
            assert r.status_code == 200
            assert r.json() == {"accepted": 1, "unknown_ids": [], "duplicate_ids": []}
            break
    else:
        pytest.fail("no connection reached the other worker")
    with server.client() as c:
        snap = c.get("/monitoring").json()
    assert snap["totals"]["labelled"] == 1
    assert snap["totals"]["predictions"] == sum(len(v) for v in by_worker.values()) + extra


def test_rollback_under_concurrent_load(server: ArgusServer, versions: list[StoredVersion]) -> None:
    old, new = versions
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client() as c:
        assert c.post("/models/activate", json={"version": old.version}, headers=auth).is_success
        assert c.post("/models/activate", json={"version": new.version}, headers=auth).is_success
    time.sleep(1.0)
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client_loop(seed: int) -> None:
        with server.client() as c:
            i = seed
            while not stop.is_set():
                r = c.post("/predict", json={"instances": rows(4, i % 1000)})
                version = r.json().get("version", "") if r.status_code == 200 else ""
                results.append((time.monotonic(), r.status_code, version))
                i += 4

    threads = [threading.Thread(target=client_loop, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with server.client() as c:
        t_call = time.monotonic()
        r = c.post("/models/rollback", json={}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["live"] == old.version
    time.sleep(3.5)
    stop.set()
    for t in threads:
        t.join()
    assert results and all(status == 200 for _, status, _ in results), "a request failed"
    after = [(t, v) for t, _, v in results if t >= t_call + 2.0]
    assert after and all(v == old.version for _, v in after)
    last_new = max((t for t, _, v in results if v == new.version), default=t_call)
    switch_s = max(0.0, last_new - t_call)
    print(f"\nrollback: every response names the old version {switch_s:.3f} s after the call")
    assert switch_s <= 2.0
    with server.client() as c:
        models = c.get("/models").json()
    assert models["live"] == old.version
    assert models["history"][-1]["reason"] == "rollback"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'argus_model_switches_total{{model="{old.name}",reason="rollback"}} 1.0' in metrics


def test_sigkill_of_a_worker_loses_no_answered_prediction(server: ArgusServer) -> None:
    answered: list[str] = []
    failures = 0
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        nonlocal failures
        i = seed
        while not stop.is_set():
            try:
                with server.client() as c:
                    r = c.post("/predict", json={"instances": rows(2, i % 1000)})
                if r.status_code == 200:
                    with lock:
                        answered.extend(p["id"] for p in r.json()["predictions"])
                else:
                    failures += 1
            except httpx.HTTPError:
                failures += 1  # a connection cut by the kill: never answered
            i += 2

    threads = [threading.Thread(target=client_loop, args=(k * 50,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join()
    # the server keeps answering, with a respawned worker
    deadline = time.monotonic() + 60
    while len(server.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert victim not in server.worker_pids() and len(server.worker_pids()) == 2
    with server.client() as c:
        assert c.post("/predict", json={"instances": rows(1)}).status_code == 200
    state = open_state(None, server.home)
    found = state.lookup(answered)
    missing = set(answered) - set(found)
    print(f"\nSIGKILL: {len(answered)} rows answered, {failures} requests cut, {len(missing)} lost")
    assert answered and not missing


def test_restart_keeps_log_feedback_and_live_pointer(
    tmp_path: Path, versions: list[StoredVersion]
) -> None:
    old, new = versions
    seed_store(Path(os.environ["BENTOML_HOME"]), old.name, tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    srv = ArgusServer(tmp_path, old.name, env={"ARGUS_ADMIN_TOKEN": TOKEN})
    with srv, srv.client() as c:
        assert c.post("/models/activate", json={"version": old.version}, headers=auth).is_success
        first = c.post("/predict", json={"instances": rows(3)}).json()
        assert first["version"] == old.version
        ids = [p["id"] for p in first["predictions"]]
        c.post("/feedback", json={"feedback": [{"id": ids[0], "label": 0}]})
    srv = ArgusServer(tmp_path, old.name, env={"ARGUS_ADMIN_TOKEN": TOKEN}, port=srv.port)
    with srv, srv.client() as c:
        assert c.get("/models").json()["live"] == old.version
        assert c.post("/predict", json={"instances": rows(1)}).json()["version"] == old.version
        r = c.post("/feedback", json={"feedback": [{"id": i, "label": 1} for i in ids]})
        assert r.json() == {"accepted": 2, "unknown_ids": [], "duplicate_ids": [ids[0]]}
        snap = c.get("/monitoring").json()
        assert snap["totals"] == {"predictions": 4, "labelled": 3}
        # the newest served before the first activate: rollback returns to it, after a restart
        r = c.post("/models/rollback", json={}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["live"] == new.version and c.get("/models").json()["live"] == new.version
        reasons = [h["reason"] for h in c.get("/models").json()["history"]]
        assert reasons == ["default", "activate", "rollback"]


def test_http_errors_are_4xx_json_never_5xx(server: ArgusServer) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, ""),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
        ({"json": {"instances": "x"}}, 400, ""),
        ({"json": {}}, 400, ""),
        ({"json": {"instances": [[1, 2]]}}, 400, "row 0 has 2 values"),
        ({"json": {"instances": [[0] * 64] * 1025}}, 413, "at most 1024"),
        (
            {"content": b"[" * (9 * 1024 * 1024), "headers": {"content-type": "application/json"}},
            413,
            "larger than",
        ),
    ]
    with server.client() as c:
        for kwargs, status, text in cases:
            r = c.post("/predict", **kwargs)
            assert r.status_code == status, (kwargs.get("json"), r.text[:200])
            assert text in r.text
            assert r.headers["content-type"].startswith("application/json")
        assert c.post("/models/activate", json={"version": "nope"}).status_code == 401
        r = c.post(
            "/models/activate",
            json={"version": "nope"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 404 and "nope" in r.json()["error"]
        assert c.get("/monitoring", params={"version": "nope"}).status_code == 404
        r = c.get("/monitoring", params={"version": ""})  # empty: the live version's figures
        assert r.status_code == 200 and r.json()["version"] == r.json()["live"], r.text
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'argus_invalid_requests_total{reason="body_too_large"} 1.0' in metrics
    assert 'argus_invalid_requests_total{reason="unsupported_media_type"} 1.0' in metrics
    assert "argus_predictions_total" not in metrics  # nothing reached the model


def test_a_live_version_that_will_not_load_leaves_workers_up_and_not_ready(
    tmp_path: Path, versions: list[StoredVersion]
) -> None:
    old, new = versions
    store_dir = seed_store(Path(os.environ["BENTOML_HOME"]), old.name, tmp_path)
    model = store_dir / "models" / old.name / new.version / "model.onnx"
    model.write_bytes(model.read_bytes()[:500])  # the newest (serving) version is damaged
    srv = ArgusServer(tmp_path, old.name, env={"ARGUS_ADMIN_TOKEN": TOKEN})
    try:
        srv.start(ready=False)
        pids = srv.worker_pids()
        with srv.client() as c:
            assert c.get("/readyz").status_code == 503
            r = c.post("/predict", json={"instances": rows(1)})
            assert r.status_code == 503 and r.json()["reason"] == "no_model"
        # an operator points the live version at a good one: the workers follow, no restart
        state = open_state(None, tmp_path)
        state.set_live(old.name, old.version, reason="activate", t=time.time())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with srv.client() as c:
                if c.get("/readyz").status_code == 200:
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # the other worker polls the pointer too (every 0.25 s here)
        for _ in range(6):  # fresh connections: either worker may answer
            with srv.client() as c:
                r = c.post("/predict", json={"instances": rows(1)})
                assert r.status_code == 200 and r.json()["version"] == old.version
        assert srv.worker_pids() == pids  # no worker crashed or restarted
    finally:
        srv.stop()
