"""Proof on a real Prometheus: every dashboard and rule expression parses and returns data.

Two real ``argus serve`` replicas (two workers each, separate homes and stores, one shared
state in a real Redis) get drift traffic with late labels from ``argus simulate``, with the
older version of the first model running as its shadow on every row; a real
``prometheus`` scrapes both every second and evaluates both rule files every second, so
every expression is proven with several instances: counters summed across them, window
gauges (identical on each replica) taken once. Then every PromQL expression of the
dashboard (panels, annotation, variable queries) and of the rule files goes through
``/api/v1/query`` and must answer with data, in three phases:

1. after the drift traffic: everything except what needs a live-version switch or a
   server that is down. The drift scenario genuinely trips the accuracy, estimate, drift,
   anomaly and label-coverage alerts, so their expressions return data as written. The
   shadow gives the candidate panels and rules their data; it must be checked here, since
   phase 2 makes its version live, which ends it.
2. after ``POST /models/activate`` of the version that answered no request (it only
   shadowed, which ends the shadow): the switch annotation and alert, and the no-traffic
   alert (live version, no predictions).
3. after one replica is stopped: ``ArgusDown`` (``up == 0``).

Two alert expressions are checked with their final comparison stripped:
``ArgusErrorRateHigh`` (``... > 0.05``): Argus answers bad input with a 4xx and nothing here
can make it answer 5xx, so the 5xx share is 0 (BentoML creates the 500 series at 0) and only
the comparison keeps it empty; ``ArgusCandidateWorse`` (``... == 1``): the shadow is the
same trained model as the live version, so it is never worse. Their firing is covered by
promtool's unit tests. The guard's switches (``ArgusAutoRollback`` and the "Automatic
switches" annotation) are checked in phase 2 on the switch that phase makes: their
``reason`` matcher is widened to any reason, since no guard acts here (its rollbacks are
tested in tests/service/test_guard_server.py, its alert by promtool).

Without the prometheus/promtool binaries the tests skip, unless
``ARGUS_REQUIRE_PROMETHEUS=1`` makes that a failure.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from argus.scenarios import Scenario
from models.store import StoredVersion
from tests.harness import ARGUS, ArgusServer, free_port, seed_store, stop_group
from tests.observability.expressions import (
    ROOT,
    RULES,
    Expression,
    dashboard_expressions,
    rule_expressions,
    strip_comparison,
    substitute,
)

pytestmark = pytest.mark.integration

TOKEN = "obs-admin-token"
SWITCH_PHASE = {
    "ArgusLiveVersionChanged", "ArgusNoTraffic", "Live-version switches", "ArgusAutoRollback",
    "Automatic switches (guard)",
}  # fmt: skip
GUARD_EVENTS = {"ArgusAutoRollback", "Automatic switches (guard)"}  # see the docstring
DOWN_PHASE = {"ArgusDown"}
STRIPPED = {"ArgusErrorRateHigh", "ArgusCandidateWorse"}  # see the module docstring


def binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    reason = f"`{name}` is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("ARGUS_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(f"{reason}, and ARGUS_REQUIRE_PROMETHEUS=1")
    pytest.skip(reason)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_promtool_checks_rules_config_and_unit_tests() -> None:
    rules = promtool("check", "rules", *(str(p) for p in RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 34 rules found" in rules.stdout and "SUCCESS: 12 rules found" in rules.stdout
    for config in ("prometheus/prometheus.yml", "prometheus/prometheus-compose.yml"):
        checked = promtool("check", "config", config)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "is valid prometheus config file" in checked.stdout
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "prometheus" / "tests").glob("*.yml"))
    assert len(tests) >= 2
    unit = promtool("test", "rules", *tests)
    print("\n" + unit.stdout + unit.stderr)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert unit.stdout.count("SUCCESS") == len(tests)


# -- one real server, one real Prometheus, scraped while simulate drives them ------------


@dataclass
class Stack:
    servers: list[ArgusServer]
    prom_url: str
    versions: list[StoredVersion]
    simulate_output: str
    other: StoredVersion  # a second model served beside the first, with clean traffic
    # versions[0], the older version, runs as the first model's shadow during the traffic

    @property
    def server(self) -> ArgusServer:
        return self.servers[0]

    @property
    def model(self) -> str:
        return self.versions[0].name


class Prometheus:
    def __init__(self, home: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.config = home / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(p) for p in RULES],
                    "scrape_configs": [
                        {"job_name": "argus", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "prometheus.log"

    def start(self) -> Prometheus:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.home / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, term_wait=10, kill_wait=5)
        self.proc = None

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        return dict(response.json())


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    """Checked before anything is trained or started, so a skip costs nothing."""
    return binary("prometheus"), binary("promtool")


@pytest.fixture(scope="module")
def versions(outcome: Any) -> list[StoredVersion]:
    from training.publish import publish

    name = f"obs-{uuid.uuid4().hex[:8]}"
    return [publish(outcome, name), publish(outcome, name)]


@pytest.fixture(scope="module")
def other(outcome: Any) -> StoredVersion:
    from training.publish import publish

    return publish(outcome, f"obs2-{uuid.uuid4().hex[:8]}")


def start_shadow(servers: list[ArgusServer], shadow: StoredVersion) -> None:
    """Make ``shadow`` (not the live version) the shadow of its model on every row, through
    one replica, and wait until every replica runs it (they share the state)."""
    r = httpx.post(
        f"{servers[0].url}/models/shadow",
        json={"model": shadow.name, "version": shadow.version, "fraction": 1.0},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["candidate"]["role"] == "shadow", r.text
    for srv in servers:
        deadline = time.monotonic() + 20
        while True:
            models = httpx.get(f"{srv.url}/models", params={"model": shadow.name}, timeout=10)
            if models.json().get("serving_candidate") == shadow.version:
                break
            assert time.monotonic() < deadline, f"{srv.url} runs no shadow: {models.text}"
            time.sleep(0.25)
    time.sleep(1.0)  # the other worker of each replica polls every 0.5 s


@pytest.fixture(scope="module")
def stack(
    binaries: tuple[str, str],
    versions: list[StoredVersion],
    other: StoredVersion,
    redis_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, Prometheus]]:
    base = tmp_path_factory.mktemp("obs")
    env = {
        "ARGUS_ADMIN_TOKEN": TOKEN,
        "ARGUS_STATE_URL": f"{redis_server.url}?prefix=obs-{uuid.uuid4().hex[:6]}:",
    }
    servers = []
    for name in ("a", "b"):
        seed_store(Path(os.environ["BENTOML_HOME"]), versions[0].name, base / name)
        seed_store(Path(os.environ["BENTOML_HOME"]), other.name, base / name)
        servers.append(ArgusServer(base / name, versions[0].name, env=env))
    prom = Prometheus(base, [f"127.0.0.1:{srv.port}" for srv in servers])
    try:
        for srv in servers:
            srv.start()
        prom.start()
        start_shadow(servers, versions[0])
        # drift for 15 s on each replica, 8% of the predictions labelled 2 s later, 5%
        # malformed requests
        sims = [
            subprocess.Popen(
                [
                    ARGUS,
                    "simulate",
                    "--url",
                    srv.url,
                    "--scenario",
                    "drift",
                    "--duration",
                    "15",
                    "--rate",
                    "15",
                    "--batch",
                    "16",
                    "--label-delay",
                    "2",
                    "--label-fraction",
                    "0.08",
                    "--invalid-fraction",
                    "0.05",
                    "--seed",
                    str(7 + i),
                ],
                env=srv.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i, srv in enumerate(servers)
        ]
        sims += [  # the second model: clean traffic, a quarter of it labelled
            subprocess.Popen(
                [
                    ARGUS,
                    "simulate",
                    "--url",
                    srv.url,
                    "--model",
                    other.name,
                    "--scenario",
                    "clean",
                    "--duration",
                    "15",
                    "--rate",
                    "8",
                    "--batch",
                    "16",
                    "--label-delay",
                    "2",
                    "--label-fraction",
                    "0.25",
                    "--seed",
                    str(20 + i),
                ],
                env=srv.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i, srv in enumerate(servers)
        ]
        outputs = []
        for sim in sims:
            out, err = sim.communicate(timeout=90)
            assert sim.returncode == 0, err
            outputs.append(out + err)
        yield Stack(servers, prom.url, versions, "\n".join(outputs), other), prom
    finally:
        prom.stop()
        for srv in servers:
            srv.stop()


def test_simulate_drove_the_server(stack: tuple[Stack, Prometheus]) -> None:
    st, _ = stack
    lines = [line for line in st.simulate_output.strip().splitlines() if " errors" in line]
    print("\n" + "\n".join(lines[-2:]))
    assert st.simulate_output.count(" 0 errors") >= 2
    snap = httpx.get(f"{st.server.url}/monitoring", timeout=10).json()
    assert snap["drift"]["drift_detected"] is True
    assert snap["totals"]["labelled"] >= 100


def test_metrics_pass_promtool_check_metrics(stack: tuple[Stack, Prometheus]) -> None:
    st, _ = stack
    text = httpx.get(f"{st.server.url}/metrics", timeout=10).text
    assert "argus_feature_psi{" in text and "argus_label_delay_seconds_bucket{" in text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == "" and checked.stderr == ""


def phase_of(e: Expression) -> str:
    if e.name in SWITCH_PHASE:
        return "switch"
    if e.name in DOWN_PHASE:
        return "down"
    return "traffic"


def run_until_data(
    prom: Prometheus, items: list[tuple[Expression, str]], timeout: float
) -> dict[str, dict[str, Any]]:
    """Query each expression until it returns data or ``timeout`` passes; the last answers."""
    answers: dict[str, dict[str, Any]] = {}
    pending = list(items)
    deadline = time.monotonic() + timeout
    while True:
        still = []
        for e, query in pending:
            answer = prom.query(query)
            answers[e.where] = {"query": query, **answer}
            assert answer["status"] == "success", f"{e.where}: {query}\n{answer}"
            if not answer["data"]["result"]:
                still.append((e, query))
        pending = still
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    missing = [f"{e.where}: {q}" for e, q in pending]
    assert not missing, "no data from:\n" + "\n".join(missing)
    return answers


def test_every_expression_returns_data(stack: tuple[Stack, Prometheus]) -> None:
    st, prom = stack
    old, live = st.versions  # the newest serves while no pointer is set
    drifted = Scenario.build("drift")
    feature = drifted.pool.feature_names[drifted.drift_features[0]]
    values = {"model": st.model, "version": live.version, "feature": feature}
    expressions = dashboard_expressions() + rule_expressions()
    kinds = {
        k: sum(e.kind == k for e in expressions) for k in sorted({e.kind for e in expressions})
    }

    def prepared(e: Expression, vals: dict[str, str]) -> str:
        expr = strip_comparison(e.expr) if e.name in STRIPPED else e.expr
        if e.name in GUARD_EVENTS:
            expr = re.sub(r'reason=~?"auto_[a-z_|]+"', 'reason=~".+"', expr)
        return substitute(expr, vals)

    phases = {
        p: [e for e in expressions if phase_of(e) == p] for p in ("traffic", "switch", "down")
    }
    t0 = time.monotonic()
    answers = run_until_data(prom, [(e, prepared(e, values)) for e in phases["traffic"]], 40)

    # replicas: counters are summed over both instances, window gauges are taken once
    per_instance = prom.query(f'argus_predictions_total{{model="{st.model}"}}')["data"]["result"]
    assert {s["metric"]["instance"] for s in per_instance} == {
        f"127.0.0.1:{srv.port}" for srv in st.servers
    }
    total = sum(float(s["value"][1]) for s in per_instance)
    summed = prom.query(f'sum(argus_predictions_total{{model="{st.model}"}})')
    assert float(summed["data"]["result"][0]["value"][1]) == total
    mv = f'model="{st.model}", version="{live.version}"'  # the shadow has its own series
    gauges = prom.query(f"argus_drift_share_ratio{{{mv}}}")["data"]["result"]
    assert len(gauges) == 2 and len({g["value"][1] for g in gauges}) == 1  # identical
    once = prom.query(f"model_version:argus_drift_share_ratio:max{{{mv}}}")
    assert {r["value"][1] for r in once["data"]["result"]} == {gauges[0]["value"][1]}

    # the shadow: one candidate, taken once across replicas, and it is the older version
    info = prom.query(f'argus_candidate_info{{model="{st.model}"}}')["data"]["result"]
    assert {(s["metric"]["version"], s["metric"]["role"]) for s in info} == {
        (old.version, "shadow")
    }
    assert {s["metric"]["instance"] for s in info} == {
        f"127.0.0.1:{srv.port}" for srv in st.servers
    }
    agreement = prom.query("model_version:argus_candidate_agreement_ratio:max")["data"]["result"]
    assert [(r["metric"]["model"], r["metric"]["version"]) for r in agreement] == [
        (st.model, old.version)
    ]
    # the same trained model on the same rows: it agrees with live and is not worse
    assert float(agreement[0]["value"][1]) == 1.0
    worse = prom.query("model_version:argus_candidate_worse:max")["data"]["result"]
    assert [float(r["value"][1]) for r in worse] == [0.0]

    # the second model: every dashboard panel and rule answers for it too, apart from the
    # candidate panels: it has no shadow nor canary, and the first model's must not show
    second = {"model": st.other.name, "version": st.other.version, "feature": feature}
    items = [(e, prepared(e, second)) for e in phases["traffic"]]
    no_candidate = [(e, q) for e, q in items if e.kind == "panel" and "argus_candidate_" in e.expr]
    assert len(no_candidate) >= 6
    run_until_data(prom, [item for item in items if item not in no_candidate], 30)
    for e, query in no_candidate:
        assert prom.query(query)["data"]["result"] == [], f"{e.where} for {st.other.name}"
    live_only = "and on (model, version) model_version:argus_model_info_live:max"
    drift = prom.query(f"model_version:argus_drift_detected:max {live_only}")["data"]["result"]
    by_model = {r["metric"]["model"]: float(r["value"][1]) for r in drift}
    assert by_model == {st.model: 1.0, st.other.name: 0.0}  # the drift stays with its model

    # phase 2: make the version without traffic live
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(
        f"{st.server.url}/models/activate", json={"version": old.version}, headers=auth, timeout=10
    )
    assert r.status_code == 200, r.text
    switched = {**values, "version": old.version}
    answers |= run_until_data(prom, [(e, prepared(e, switched)) for e in phases["switch"]], 30)
    live_now = prom.query(f'argus_model_info{{live="true", model="{st.model}"}}')
    live_now = live_now["data"]["result"]
    assert {s["metric"]["version"] for s in live_now} == {old.version}

    # phase 3: a replica is gone
    st.servers[1].stop()
    answers |= run_until_data(prom, [(e, prepared(e, values)) for e in phases["down"]], 20)

    nan_only = [
        where
        for where, a in answers.items()
        if not any(math.isfinite(float(s["value"][1])) for s in a["data"]["result"])
    ]
    print(
        f"\n{len(answers)} PromQL expressions checked against Prometheus at {prom.url}: "
        f"all parsed and returned data ({kinds}; {len(STRIPPED)} alert checked without its "
        f"comparison) in {time.monotonic() - t0:.1f} s"
    )
    if nan_only:
        print("only NaN values (a 0/0 ratio over an idle series):", nan_only)
    assert len(answers) == len(expressions)
    assert not nan_only
    # the values are the ones the drift traffic must produce
    by_where = {e.where: e for e in expressions}

    def value(where: str) -> float:
        assert where in by_where
        return float(answers[where]["data"]["result"][0]["value"][1])

    assert value("record model_version:argus_drift_detected:max") == 1
    assert value("record model_version:argus_accuracy_ratio:max") < 0.95
    assert value("alert ArgusRealizedAccuracyLow") < 0.95
    assert value("alert ArgusLabelCoverageLow") < 0.1
    assert value("alert ArgusDown") == 0
