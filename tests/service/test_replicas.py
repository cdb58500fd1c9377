"""Integration: two ``argus serve`` replicas (separate homes, separate BentoML stores) over
one real Redis agree on every figure and on the live version."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score

from models.store import StoredVersion
from tests.harness import ArgusServer, seed_store

pytestmark = pytest.mark.integration

TOKEN = "replica-admin"


@pytest.fixture(scope="module")
def versions(outcome: Any) -> list[StoredVersion]:
    from training.publish import publish

    name = f"rep-{uuid.uuid4().hex[:8]}"
    return [publish(outcome, name), publish(outcome, name)]


def without_clock(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snapshot.items() if k != "generated_at"}


def test_two_replicas_one_truth(
    tmp_path: Path, versions: list[StoredVersion], redis_server: Any
) -> None:
    old, new = versions
    from models import store

    url = f"{redis_server.url}?prefix=rep-{uuid.uuid4().hex[:6]}:"
    shared = tmp_path / "shared-models"  # e.g. a volume every replica mounts
    for v in versions:
        store.publish_to(v, shared)
    env = {"ARGUS_STATE_URL": url, "ARGUS_ADMIN_TOKEN": TOKEN, "ARGUS_MODEL_SOURCE": str(shared)}
    homes = [tmp_path / "a", tmp_path / "b"]
    # each replica has its own BentoML store, as on separate machines: a's is seeded,
    # b's starts empty and fills itself from the shared model source
    seed_store(Path(os.environ["BENTOML_HOME"]), old.name, homes[0])
    d = load_digits()
    X, y = d.data.astype(np.float32)[:240], d.target[:240]
    with (
        ArgusServer(homes[0], old.name, env=env) as a,
        ArgusServer(homes[1], old.name, env=env) as b,
    ):
        replicas = [a, b]
        made_by: list[int] = []
        ids: list[str] = []
        proba: list[list[float]] = []
        for start in range(0, len(X), 12):
            which = (start // 12) % 2
            with replicas[which].client() as c:
                r = c.post("/predict", json={"instances": X[start : start + 12].tolist()})
                assert r.status_code == 200, (r.text, replicas[which].log())
                for p in r.json()["predictions"]:
                    ids.append(p["id"])
                    proba.append(p["probabilities"])
                    made_by.append(which)
        labelled = np.arange(len(X)) % 3 != 0
        for other in (0, 1):  # feedback goes to the replica that did NOT make the prediction
            rows = [i for i in np.flatnonzero(labelled) if made_by[i] != other]
            with replicas[other].client() as c:
                r = c.post(
                    "/feedback",
                    json={"feedback": [{"id": ids[i], "label": int(y[i])} for i in rows]},
                )
                assert r.json() == {"accepted": len(rows), "unknown_ids": [], "duplicate_ids": []}
        snaps = []
        for srv in replicas:
            with srv.client() as c:
                snaps.append(c.get("/monitoring").json())
        assert without_clock(snaps[0]) == without_clock(snaps[1])
        P = np.array(proba)
        pred = P.argmax(axis=1)
        perf = snaps[0]["performance"]
        assert snaps[0]["totals"] == {"predictions": 240, "labelled": int(labelled.sum())}
        assert perf["accuracy"] == pytest.approx(accuracy_score(y[labelled], pred[labelled]))
        assert perf["macro_f1"] == pytest.approx(
            f1_score(y[labelled], pred[labelled], average="macro")
        )
        assert snaps[0]["estimated_accuracy"] == pytest.approx(P.max(axis=1).mean(), rel=1e-5)
        print(
            f"\ntwo replicas: 240 predictions, {int(labelled.sum())} labels across replicas; "
            f"accuracy {perf['accuracy']:.4f}, estimate {snaps[0]['estimated_accuracy']:.4f}, "
            "identical /monitoring on both"
        )

        # a rollback through one replica switches both
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with a.client() as c:
            assert c.post(
                "/models/activate", json={"version": new.version}, headers=auth
            ).is_success
            assert c.post(
                "/models/activate", json={"version": old.version}, headers=auth
            ).is_success
            t0 = time.monotonic()
            assert c.post("/models/rollback", json={}, headers=auth).json()["live"] == new.version
        deadline = t0 + 2.0
        while True:
            with b.client() as c:
                version = c.post("/predict", json={"instances": X[:1].tolist()}).json()["version"]
            if version == new.version or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert version == new.version, "replica b still serves the old version after 2 s"
        print(f"rollback through replica a reached replica b in {time.monotonic() - t0:.2f} s")
        with b.client() as c:
            models = c.get("/models").json()
        assert models["history"][-1]["reason"] == "rollback"
        assert [v["version"] for v in models["versions"]] == [old.version, new.version]
