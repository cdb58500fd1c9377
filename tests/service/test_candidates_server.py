"""Shadow and canary on a real ``argus serve`` with 2 workers, and on two replicas over
one Redis: concurrent clients, feedback sent on other connections (other workers), zero
failed requests, the settings kept across a restart, and one truth across replicas."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from scipy.stats import binom, binomtest
from sklearn.datasets import load_digits

from models.store import StoredVersion
from tests.argus.test_cli import skl_onnx
from tests.harness import ArgusServer, seed_store

pytestmark = pytest.mark.integration

TOKEN = "cand-it-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIGITS = load_digits()


@pytest.fixture(scope="module")
def versions(outcome: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[StoredVersion, ...]:
    """The trained MLP, then a scikit-learn classifier as a newer version of the name."""
    from training.publish import publish
    from training.register_onnx import register_onnx

    mlp = publish(outcome, f"cand-{uuid.uuid4().hex[:8]}")
    path, ref = skl_onnx(tmp_path_factory.mktemp("skl"))
    return mlp, register_onnx(path, ref, "digit", name=mlp.name)


def labels_of(version: StoredVersion, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(version.model_path))
    (probabilities,) = session.run([version.card.output_name], {version.card.input_name: rows})
    return np.asarray(probabilities).argmax(axis=1)


def send(srv: ArgusServer, X: np.ndarray, y: np.ndarray, tag: str, clients: int = 4) -> list[Any]:
    """``clients`` threads send X in 10-row requests with ids, then label every other row
    on fresh connections; every answer (or failure) in order of the rows."""
    answers: list[Any] = [None] * len(X)
    failures: list[str] = []

    def client(k: int) -> None:
        for start in range(k * 10, len(X), clients * 10):
            ids = [f"{tag}-{i}" for i in range(start, min(start + 10, len(X)))]
            with srv.client() as c:
                r = c.post(
                    "/predict", json={"instances": X[start : start + 10].tolist(), "ids": ids}
                )
            if r.status_code != 200:
                failures.append(r.text)
                continue
            for offset, p in enumerate(r.json()["predictions"]):
                answers[start + offset] = (r.json()["version"], p)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    for start in range(0, len(X), 40):
        fb = [
            {"id": f"{tag}-{i}", "label": int(y[i])}
            for i in range(start, min(start + 40, len(X)), 2)
        ]
        with srv.client() as c:  # a new connection: often the other worker
            assert c.post("/feedback", json={"feedback": fb}).json()["accepted"] == len(fb)
    return answers


def settled(srv: ArgusServer, live: str, candidate: str | None) -> None:
    """Wait until the workers answering 8 fresh connections serve ``live`` beside
    ``candidate`` (each worker follows the shared state at its next poll)."""

    def every_worker() -> bool:
        for _ in range(8):
            with srv.client() as c:
                m = c.get("/models").json()
            if (m["serving"], m["serving_candidate"]) != (live, candidate):
                return False
        return True

    assert until(every_worker, 30.0), "the workers did not follow the shared state"


def until(check: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_shadow_and_canary_on_two_workers_kept_across_a_restart(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion]
) -> None:
    mlp, skl = versions
    seed_store(Path(os.environ["BENTOML_HOME"]), mlp.name, tmp_path)
    X = DIGITS.data[1200:1600].astype(np.float32)
    y = DIGITS.target[1200:1600]
    with ArgusServer(tmp_path, mlp.name, env={"ARGUS_ADMIN_TOKEN": TOKEN}) as srv:
        with srv.client() as c:
            assert c.post(
                "/models/activate", json={"version": mlp.version}, headers=AUTH
            ).is_success
            r = c.post("/models/shadow", json={"version": skl.version}, headers=AUTH)
            assert r.status_code == 200, r.text
            assert (
                c.post("/models/shadow", json={"version": "nope"}, headers=AUTH).status_code == 404
            )
            assert c.post("/models/shadow", json={"version": skl.version}).status_code == 401
        settled(srv, mlp.version, skl.version)
        answers = send(srv, X, y, "s")
        assert {v for v, _ in answers} == {mlp.version}  # a shadow never answers
        live_labels = np.array([p["label"] for _, p in answers])
        skl_labels = labels_of(skl, X)
        labelled = np.arange(len(X)) % 2 == 0

        def compared() -> Any:
            with srv.client() as c:
                doc = c.get("/monitoring/compare").json()
            return doc if doc["comparison"]["labelled"] == int(labelled.sum()) else None

        doc = until(compared)
        assert doc, "the shadow's rows and labels did not all arrive"
        comparison = doc["comparison"]
        assert comparison["rows"] == len(X)
        assert comparison["agreement"] == pytest.approx(np.mean(live_labels == skl_labels))
        yt = y[labelled]
        b = int(np.sum((live_labels[labelled] == yt) & (skl_labels[labelled] != yt)))
        cc = int(np.sum((live_labels[labelled] != yt) & (skl_labels[labelled] == yt)))
        expected = 1.0 if b + cc == 0 else binomtest(b, b + cc, 0.5, alternative="greater").pvalue
        assert comparison["verdict"]["p_value"] == pytest.approx(expected)
        assert comparison["verdict"]["discordant"] == b + cc
        print(f"\nshadow on 2 workers: {comparison}")

        with srv.client() as c:  # a canary of 30%, sticky per id
            r = c.post("/models/canary", json={"version": skl.version, "percent": 30}, headers=AUTH)
            assert r.status_code == 200, r.text
            models = c.get("/models").json()
            assert models["candidate"]["role"] == "canary" and models["candidate"]["share"] == 0.3
        settled(srv, mlp.version, skl.version)
        answers = send(srv, X, y, "c")
        share = sum(v == skl.version for v, _ in answers) / len(answers)
        # the choice is per request (its first id), 40 requests: bounds of Binomial(40, 0.3)
        lo, hi = binom.interval(0.999, 40, 0.3)
        assert lo / 40 <= share <= hi / 40
    with ArgusServer(tmp_path, mlp.name, env={"ARGUS_ADMIN_TOKEN": TOKEN}) as srv:  # restart
        with srv.client() as c:
            candidate = c.get("/models").json()["candidate"]
            assert candidate["role"] == "canary" and candidate["version"] == skl.version
            r = c.post("/models/promote", json={}, headers=AUTH)
            assert r.status_code == 200 and r.json()["live"] == skl.version
            assert c.get("/models").json()["candidate"] is None
            assert c.post("/models/rollback", json={}, headers=AUTH).json()["live"] == mlp.version
            metrics = c.get("/metrics").text
        assert f'argus_model_switches_total{{model="{mlp.name}",reason="promote"}} 1.0' in metrics


def test_two_replicas_over_redis_agree_on_every_comparison_figure(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion], redis_server: Any
) -> None:
    mlp, skl = versions
    env = {
        "ARGUS_ADMIN_TOKEN": TOKEN,
        "ARGUS_STATE_URL": f"{redis_server.url}?prefix=cand-{uuid.uuid4().hex[:6]}:",
    }
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        seed_store(Path(os.environ["BENTOML_HOME"]), mlp.name, home)
    X = DIGITS.data[:200].astype(np.float32)
    y = DIGITS.target[:200]
    with (
        ArgusServer(homes[0], mlp.name, env=env) as a,
        ArgusServer(homes[1], mlp.name, env=env) as b,
    ):
        with a.client() as c:
            assert c.post(
                "/models/activate", json={"version": mlp.version}, headers=AUTH
            ).is_success
            assert c.post("/models/shadow", json={"version": skl.version}, headers=AUTH).is_success
        settled(a, mlp.version, skl.version)
        settled(b, mlp.version, skl.version)
        send(a, X[:100], y[:100], "ra", clients=2)
        send(b, X[100:], y[100:], "rb", clients=2)

        def both() -> Any:
            docs = [srv.client().get("/monitoring/compare").json() for srv in (a, b)]
            for d in docs:
                d.pop("generated_at")
            return docs if docs[0]["comparison"]["labelled"] == 100 else None

        docs = until(both)
        assert docs and docs[0] == docs[1]
        assert docs[0]["comparison"]["rows"] == 200
        logged = a.client().get("/monitoring/compare").json()["candidate"]
        assert logged["input_rows"] == 200  # the shadow's own input window, both replicas'
