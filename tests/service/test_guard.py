"""The guard in-process, with an injected clock and no sleeping: the policy's parsing and
errors, ``for``, cooldown and the lease, and its decision table on real versions (a
trained MLP, a scikit-learn model, and a confidently wrong model with permuted classes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from errors import SettingsError
from models.store import StoredVersion
from service.exposition import MetricsExposition
from service.fleet import Fleet
from service.guard import Guard
from service.guard_policy import load_policy, parse_policy
from service.handlers import ArgusCore
from service.metrics import get_metrics
from service.runtime import ModelRuntime
from service.settings import Settings
from state.opener import open_state
from state.types import Candidate
from tests.argus.test_cli import skl_onnx, write_csv

TOKEN = "guard-admin"
AUTH = f"Bearer {TOKEN}"
DIGITS = load_digits()
RULE = {"name": "r", "figure": "agreement", "op": "<", "threshold": 0.9}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"interval": 0}, "interval must be > 0"),
        ({"colour": 1}, "unknown setting 'colour'"),
        ({"rule": [{**RULE, "figure": "vibes"}]}, "rule 'r': figure must be one of"),
        ({"rule": [{**RULE, "op": "=="}]}, "rule 'r': op must be one of"),
        ({"rule": [{k: v for k, v in RULE.items() if k != "threshold"}]}, "threshold is missing"),
        ({"rule": [{**RULE, "for": 0}]}, "rule 'r': for must be an integer >= 1"),
        ({"rule": [{**RULE, "min_rows": 1.5}]}, "rule 'r': min_rows"),
        ({"rule": [{**RULE, "relative": True}]}, "rule 'r': relative: agreement"),
        ({"rule": [RULE, RULE]}, "rule names must be unique"),
        ({"rule": [{**RULE, "name": ""}]}, "rule 0: name"),
        ({"steps": [50, 5]}, "steps must ascend"),
        ({"rule": [{**RULE, "threshold": True}]}, "threshold must be a number"),
    ],
)
def test_a_malformed_policy_is_refused_naming_the_rule_and_field(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_policy(doc, "p.toml")


def test_the_shipped_policy_loads_and_a_broken_file_is_one_line(tmp_path: Path) -> None:
    policy = load_policy()
    assert {r.name for r in policy.rules} >= {"disagrees", "worse-on-labels", "estimate-drop"}
    assert policy.interval == 10 and policy.steps == (5.0, 25.0, 50.0)
    bad = tmp_path / "g.toml"
    bad.write_text("interval = [")
    with pytest.raises(SettingsError, match="not TOML"):
        load_policy(bad)
    with pytest.raises(SettingsError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    relative = parse_policy(
        {"rule": [{"name": "d", "figure": "estimated_accuracy", "op": "<", "threshold": -0.05,
                   "relative": True}]}
    ).rules[0]  # fmt: skip
    assert relative.holds(0.90, 0.99) and not relative.holds(0.95, 0.99)
    assert relative.holds(0.90, None) is None  # nothing to compare with: no judgement


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def permuted_version(name: str, work: Path) -> StoredVersion:
    """A confidently wrong classifier: scikit-learn's, trained with the classes permuted."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from training.register_onnx import register_onnx

    X, y = DIGITS.data.astype(np.float32), DIGITS.target
    perm = np.roll(np.arange(10), 3)
    clf = LogisticRegression(max_iter=2000).fit(X[:1200], perm[y[:1200]])
    onx = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path = work / "permuted.onnx"
    path.write_bytes(onx.SerializeToString())
    ref = write_csv(work / "ref.csv", X[1200:], [int(v) for v in y[1200:]])
    return register_onnx(path, ref, "digit", name=name)


RETRAIN_SEED = 7


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """Rows neither the live version (the default seed) nor its retrain (seed 7) trained
    on: outside both runs' training splits."""
    from training.config import TrainConfig
    from training.data import load_dataset, split_dataset

    c = TrainConfig()
    ds = load_dataset(c.source)
    seen: set[bytes] = set()
    for seed in (c.seed, RETRAIN_SEED):
        split = split_dataset(ds, c.val_fraction, c.test_fraction, seed)
        seen |= {row.tobytes() for row in np.asarray(split.X_train, dtype=np.float32)}
    X = np.asarray(ds.X, dtype=np.float32)
    keep = np.array([row.tobytes() not in seen for row in X])
    return X[keep], np.asarray(ds.y)[keep]


@pytest.fixture(scope="module")
def retrain() -> Any:
    """A retrained version: the same data, another seed (so another split and start)."""
    from training.config import TrainConfig
    from training.pipeline import run

    return run(TrainConfig(seed=RETRAIN_SEED), out=None)


@pytest.fixture
def versions(registered: list[StoredVersion], tmp_path: Path) -> dict[str, StoredVersion]:
    from training.register_onnx import register_onnx

    name = registered[0].name
    (tmp_path / "skl").mkdir()
    path, ref = skl_onnx(tmp_path / "skl")
    good = register_onnx(path, ref, "digit", name=name)
    bad = permuted_version(name, tmp_path)
    return {"mlp": registered[-1], "twin": registered[0], "good": good, "bad": bad}


class Rig:
    """A worker's core and a guard over one state, the clock in the test's hands."""

    def __init__(self, tmp_path: Path, name: str, mode: str, live: str, **policy: Any) -> None:
        self.settings = Settings(home=tmp_path, model=name, admin_token=TOKEN).validated()
        self.state = open_state(None, tmp_path)
        self.state.set_live(name, live, reason="activate", t=0.0)
        self.name = name
        runtime = ModelRuntime(
            name,
            lambda: self.state.get_live(name),
            candidate=lambda: self.state.get_candidate(name),
        )
        runtime.refresh()
        self.fleet = Fleet([runtime], name)
        self.clock = Clock(1000.0)
        self.core = ArgusCore(
            self.settings, self.state, self.fleet, get_metrics(), clock=self.clock
        )
        self.exposition = MetricsExposition(self.settings, self.state, self.fleet)
        rules = policy.pop("rules", None)
        doc = {"interval": 10, "guard_seconds": 600, "cooldown": 900, **policy}
        self.policy = parse_policy({**doc, "rule": rules} if rules else {**doc, **{
            "rule": [r.__dict__ | {"for": r.for_} for r in ()]}})  # fmt: skip
        if rules is None:
            shipped = load_policy()
            self.policy = parse_policy(
                {**doc, "min_labelled": shipped.min_labelled, "steps": list(shipped.steps),
                 "rule": [_as_toml(r) for r in shipped.rules]}
            )  # fmt: skip
        self.guard = Guard(
            self.policy, mode, self.state, self.exposition, self.fleet, get_metrics(),
            holder="me", clock=self.clock,
        )  # fmt: skip
        self.rng = np.random.default_rng(0)
        self.sent = 0
        self.pool = (DIGITS.data[1200:].astype(np.float32), DIGITS.target[1200:])

    def traffic(self, rows: int, label: bool = True) -> None:
        """``rows`` held-out digits through /predict, and their labels."""
        pool_X, pool_y = self.pool
        pick = self.rng.integers(0, len(pool_X), size=rows)
        X, y = pool_X[pick], pool_y[pick]
        ids = [f"row-{self.sent + i}" for i in range(rows)]
        self.sent += rows

        async def go() -> None:
            for start in range(0, rows, 50):
                await self.core.predict(X[start : start + 50].tolist(), ids[start : start + 50])
            await self.core.shadow.drain()
            if label:
                await self.core.feedback(
                    [{"id": i, "label": int(v)} for i, v in zip(ids, y, strict=True)]
                )

        asyncio.run(go())

    def step(self) -> list[Any]:
        self.clock.t += self.policy.interval
        decisions = self.guard.tick()
        self.fleet.refresh()
        return decisions


def _as_toml(rule: Any) -> dict[str, Any]:
    return {"name": rule.name, "figure": rule.figure, "op": rule.op, "threshold": rule.threshold,
            "min_rows": rule.min_rows, "for": rule.for_, "relative": rule.relative}  # fmt: skip


def test_a_confidently_wrong_version_is_rolled_back_before_any_label(
    tmp_path: Path, versions: dict[str, StoredVersion]
) -> None:
    name = versions["mlp"].name
    rig = Rig(tmp_path, name, "act", versions["mlp"].version)
    rig.core.activate(versions["bad"].version, AUTH)  # a person switches to a bad version
    assert rig.step()[0].action == "none"  # the old version now shadows the new one
    assert rig.state.get_candidate(name) == Candidate(
        "shadow", versions["mlp"].version, 1.0, 1010.0
    )
    rig.fleet.refresh()
    actions = []
    for _ in range(4):
        rig.traffic(100, label=False)  # no label at all: agreement alone
        actions += [d.action for d in rig.step()]
    # judged from 200 shadowed rows (the 2nd evaluation), then held for 3 (for = 3)
    assert actions == ["none", "none", "none", "rollback"]
    assert rig.state.get_live(name) == versions["mlp"].version
    last = rig.state.history(name)[-1]
    assert (last.reason, last.actor, last.detail["rule"]) == ("auto_rollback", "guard", "disagrees")
    assert last.detail["figures"]["agreement"] < 0.5 and last.detail["rows"]["agreement"] >= 200
    assert rig.state.get_candidate(name) is None
    # the cooldown: activated again, the bad version is not rolled back within 900 s
    rig.core.activate(versions["bad"].version, AUTH)
    for _ in range(4):
        rig.traffic(100, label=False)
        assert all(d.action == "none" for d in rig.step())
    assert rig.state.get_live(name) == versions["bad"].version


def test_dry_run_decides_and_counts_but_switches_nothing(
    tmp_path: Path, versions: dict[str, StoredVersion]
) -> None:
    name = versions["mlp"].name
    rig = Rig(tmp_path, name, "dry-run", versions["mlp"].version)
    rig.core.activate(versions["bad"].version, AUTH)
    rig.step()
    rig.fleet.refresh()
    actions = []
    for _ in range(4):
        rig.traffic(100, label=False)
        actions += [d.action for d in rig.step()]
    assert "rollback" in actions
    assert rig.state.get_live(name) == versions["bad"].version  # nothing switched
    assert [s.reason for s in rig.state.history(name)][-1] == "activate"
    text = rig.exposition.render() + _registry_text()
    assert 'action="rollback",mode="dry-run"' in text


def _registry_text() -> str:
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


def test_a_good_canary_is_promoted_and_a_bad_one_aborted(
    tmp_path: Path,
    versions: dict[str, StoredVersion],
    retrain: Any,
    held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    from training.publish import publish

    name = versions["mlp"].name
    retrained = publish(retrain, name)
    # 2 points of margin: on 1000 labels each, 1 point is beyond what the test can show
    rig = Rig(tmp_path / "good", name, "act", versions["mlp"].version, margin=0.02)
    rig.pool = held_out
    rig.core.set_candidate("canary", retrained.version, 0.5, AUTH)
    decisions = []
    for _ in range(12):
        rig.traffic(300)
        decisions += rig.step()
        if any(d.action == "promote" for d in decisions):
            break
    assert decisions[-1].action == "promote"
    assert rig.state.get_live(name) == retrained.version
    print(f"\ncanary promoted: {rig.state.history(name)[-1]}")
    assert rig.state.history(name)[-1].reason == "auto_promote"
    assert rig.state.get_candidate(name) is None

    bad = Rig(tmp_path / "bad", name, "act", versions["mlp"].version)
    bad.core.set_candidate("canary", versions["bad"].version, 0.5, AUTH)
    decisions = []
    for _ in range(6):
        bad.traffic(120)
        decisions += bad.step()
        if any(d.action == "abort" for d in decisions):
            break
    assert decisions[-1].action == "abort"
    assert bad.state.get_live(name) == versions["mlp"].version  # live untouched
    assert bad.state.get_candidate(name) is None
    assert bad.state.get_doc(f"guard-rejected:{name}") == {"versions": [versions["bad"].version]}
    print(f"canary aborted: {decisions[-1].rule}, figures {decisions[-1].figures}")


def test_one_evaluator_through_the_lease(
    tmp_path: Path, versions: dict[str, StoredVersion]
) -> None:
    name = versions["mlp"].name
    rig = Rig(tmp_path, name, "act", versions["mlp"].version)
    other = Guard(
        rig.policy, "act", rig.state, rig.exposition, rig.fleet, get_metrics(),
        holder="other", clock=rig.clock,
    )  # fmt: skip
    rig.clock.t += 10
    assert rig.guard.tick() and not other.tick()  # one holder
    rig.clock.t += 5
    assert not other.tick()
    rig.clock.t += 11  # the holder is gone: 1.5 intervals after its last evaluation
    assert other.tick() and not rig.guard.tick()


def test_clean_traffic_over_500_evaluations_switches_nothing(
    tmp_path: Path,
    versions: dict[str, StoredVersion],
    retrain: Any,
    held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    """The false-rollback rate: a retrained version (the same data and seed, fewer epochs)
    replaces the live one, and the guard watches it, with the old one as its shadow, for
    500 evaluations of seeded clean traffic from the rows neither version trained on."""
    from training.publish import publish

    name = versions["mlp"].name
    retrained = publish(retrain, name)
    rig = Rig(tmp_path, name, "act", versions["mlp"].version, guard_seconds=1e9)
    rig.pool = held_out
    rig.core.activate(retrained.version, AUTH)
    rig.step()
    rig.fleet.refresh()
    actions = []
    for i in range(500):
        rig.traffic(8, label=i % 2 == 0)
        actions += [d.action for d in rig.step()]
    assert len(actions) == 500 and set(actions) == {"none"}
    assert rig.state.get_live(name) == retrained.version
    comparison = rig.exposition.compare(name)["comparison"]
    assert comparison["rows"] >= 900 and comparison["labelled"] >= 400  # it did judge
    print(f"\n500 clean evaluations: 0 switches; last comparison {comparison}")
