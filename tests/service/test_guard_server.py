"""The guard on real servers: 2 workers, a confidently wrong version activated while
``argus simulate`` sends traffic; and two replicas over one Redis, where exactly one of
the two guards acts."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from models.store import StoredVersion
from tests.harness import ARGUS, ArgusServer, seed_store
from tests.service.test_guard import permuted_version

pytestmark = pytest.mark.integration

TOKEN = "guard-it"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
interval = 1
guard_seconds = 120
cooldown = 600
[[rule]]
name = "disagrees"
figure = "agreement"
op = "<"
threshold = 0.9
min_rows = 100
for = 3
"""


@pytest.fixture(scope="module")
def versions(outcome: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[StoredVersion, ...]:
    from training.publish import publish

    good = publish(outcome, f"guard-{uuid.uuid4().hex[:8]}")
    return good, permuted_version(good.name, tmp_path_factory.mktemp("bad"))


def simulate(srv: ArgusServer, seconds: float) -> subprocess.Popen[str]:
    """Clean traffic, half of it labelled 10 s late (the policy above judges agreement,
    which needs no label, so the rollback comes before the labels)."""
    return subprocess.Popen(
        [ARGUS, "simulate", "--url", srv.url, "--scenario", "clean", "--duration", str(seconds),
         "--rate", "20", "--batch", "8", "--label-delay", "10", "--label-fraction", "0.5",
         "--seed", "3"],
        env=srv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def activate(srv: ArgusServer, version: str) -> None:
    with srv.client() as c:
        r = c.post("/models/activate", json={"version": version}, headers=AUTH)
    assert r.status_code == 200, r.text


def rolled_back(srv: ArgusServer) -> list[dict[str, Any]]:
    with srv.client() as c:
        return [h for h in c.get("/models").json()["history"] if h["reason"] == "auto_rollback"]


def test_the_guard_rolls_a_bad_version_back_under_traffic(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion]
) -> None:
    good, bad = versions
    seed_store(Path(os.environ["BENTOML_HOME"]), good.name, tmp_path)
    policy = tmp_path / "guard.toml"
    policy.write_text(POLICY)
    env = {"ARGUS_ADMIN_TOKEN": TOKEN, "ARGUS_GUARD_MODE": "act", "ARGUS_GUARD_FILE": str(policy)}
    with ArgusServer(tmp_path, good.name, env=env) as srv:
        with srv.client() as c:
            assert c.post(
                "/models/activate", json={"version": good.version}, headers=AUTH
            ).is_success
        sim = simulate(srv, 25)
        time.sleep(2)
        with srv.client() as c:
            r = c.post("/models/activate", json={"version": bad.version}, headers=AUTH)
            assert r.status_code == 200, r.text
        switched = time.monotonic()
        while not rolled_back(srv) and time.monotonic() - switched < 20:
            time.sleep(0.2)
        took = time.monotonic() - switched
        out, err = sim.communicate(timeout=60)
        assert sim.returncode == 0, err
        (event,) = rolled_back(srv)
        assert event["version"] == good.version and event["actor"] == "guard"
        assert (
            event["detail"]["rule"] == "disagrees" and event["detail"]["rows"]["agreement"] >= 100
        )
        assert " 0 errors" in out, out  # zero failed requests while it switched twice
        print(f"\nbad version activated -> automatic rollback in {took:.1f} s; {out}")
        with srv.client() as c:
            assert c.get("/models").json()["live"] == good.version
            metrics = c.get("/metrics").text
        assert (
            f'argus_model_switches_total{{model="{good.name}",reason="auto_rollback"}} 1.0'
            in metrics
        )


def test_two_replicas_over_redis_roll_back_exactly_once(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion], redis_server: Any
) -> None:
    good, bad = versions
    policy = tmp_path / "guard.toml"
    policy.write_text(POLICY)
    env = {
        "ARGUS_ADMIN_TOKEN": TOKEN,
        "ARGUS_GUARD_MODE": "act",
        "ARGUS_GUARD_FILE": str(policy),
        "ARGUS_STATE_URL": f"{redis_server.url}?prefix=guard-{uuid.uuid4().hex[:6]}:",
    }
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        seed_store(Path(os.environ["BENTOML_HOME"]), good.name, home)
    with (
        ArgusServer(homes[0], good.name, env=env) as a,
        ArgusServer(homes[1], good.name, env=env) as b,
    ):
        with a.client() as c:
            assert c.post(
                "/models/activate", json={"version": good.version}, headers=AUTH
            ).is_success
        sims = [simulate(a, 20), simulate(b, 20)]
        time.sleep(2)
        with b.client() as c:
            assert c.post(
                "/models/activate", json={"version": bad.version}, headers=AUTH
            ).is_success
        start = time.monotonic()
        while not rolled_back(a) and time.monotonic() - start < 20:
            time.sleep(0.2)
        for sim in sims:
            out, err = sim.communicate(timeout=60)
            assert sim.returncode == 0 and " 0 errors" in out, err
        time.sleep(3)  # both guards had time to act again, if they were going to
        assert len(rolled_back(a)) == 1 and rolled_back(b) == rolled_back(a)
