"""The service's handlers, in-process: real model, real state, no server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY
from sklearn.datasets import load_digits

from models.store import StoredVersion
from service.fleet import Fleet
from service.handlers import ArgusCore
from service.metrics import get_metrics
from service.runtime import ModelRuntime
from service.settings import Settings
from service.validation import RequestError
from state.opener import open_state

TOKEN = "s3cret-admin"


def make_core(tmp_path: Path, name: str, **overrides: Any) -> ArgusCore:
    settings = Settings(home=tmp_path, model=name, **overrides).validated()
    state = open_state(None, tmp_path)
    runtime = ModelRuntime(name, lambda: state.get_live(name))
    runtime.refresh()
    return ArgusCore(settings, state, Fleet([runtime], name), get_metrics(), clock=lambda: 1000.0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def rows() -> np.ndarray:
    return load_digits().data.astype(np.float32)[:50]


def test_predict_matches_onnxruntime_and_the_profile(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray
) -> None:
    newest = registered[-1]
    core = make_core(tmp_path, newest.name)
    out = run(core.predict(rows.tolist()))
    assert out["model"] == newest.name and out["version"] == newest.version  # newest serves
    session = ort.InferenceSession(str(newest.model_path))
    (expected,) = session.run(None, {"input": rows})
    got = np.array([p["probabilities"] for p in out["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p["label"] for p in out["predictions"]] == expected.argmax(axis=1).tolist()
    detector = core.runtime.live.detector
    scores = detector.score(rows)
    np.testing.assert_allclose([p["anomaly_score"] for p in out["predictions"]], scores)
    assert [p["anomalous"] for p in out["predictions"]] == (scores > detector.threshold_).tolist()
    ids = [p["id"] for p in out["predictions"]]
    assert len(set(ids)) == len(ids)
    logged = core.state.lookup(ids)
    assert set(logged) == set(ids)
    assert logged[ids[3]].label == out["predictions"][3]["label"]


def test_client_ids_are_kept_and_reuse_is_refused(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray
) -> None:
    core = make_core(tmp_path, registered[0].name)
    out = run(core.predict(rows[:2].tolist(), ["a", "b"]))
    assert [p["id"] for p in out["predictions"]] == ["a", "b"]
    with pytest.raises(RequestError) as err:
        run(core.predict(rows[:1].tolist(), ["a"]))
    assert err.value.status == 409 and err.value.reason == "duplicate_ids"


BAD_PREDICT = [
    ([], None, 400, "empty_batch", "empty"),
    ("rows", None, 400, "bad_type", "list of rows"),
    ([[1.0] * 63], None, 400, "row_length", "row 0 has 63 values"),
    ([[1.0] * 64, [1.0] * 65], None, 400, "row_length", "row 1 has 65"),
    ([[1.0] * 63 + ["x"]], None, 400, "not_numeric", "row 0, feature 63"),
    ([[1.0] * 63 + [True]], None, 400, "not_numeric", "got a boolean"),
    ([[1.0] * 63 + [[1.0]]], None, 400, "not_numeric", "got a list"),
    ([[float("nan")] * 64], None, 400, "not_finite", "NaN or infinity"),
    ([[1.0] * 63 + [float("inf")]], None, 400, "not_finite", "feature 63"),
    ([[1e300] * 64], None, 400, "not_finite", "float32"),
    ([3], None, 400, "bad_type", "row 0 must be a list"),
    ([[0.0] * 64] * 2, ["a", "a"], 400, "duplicate_ids", "appears twice"),
    ([[0.0] * 64] * 2, ["a"], 400, "bad_ids", "one per row"),
    ([[0.0] * 64], [7], 400, "bad_ids", "ids[0]"),
    ([[0.0] * 64], ["\ud800"], 400, "bad_ids", "not valid Unicode"),
    ([[0.0] * 64] * 11, None, 413, "too_many_rows", "at most 10"),
]


@pytest.mark.parametrize(("instances", "ids", "status", "reason", "text"), BAD_PREDICT)
def test_bad_predict_input_is_a_4xx_naming_the_problem(
    tmp_path: Path,
    registered: list[StoredVersion],
    instances: Any,
    ids: Any,
    status: int,
    reason: str,
    text: str,
) -> None:
    core = make_core(tmp_path, registered[0].name, max_batch=10)
    with pytest.raises(RequestError) as err:
        run(core.predict(instances, ids))
    assert (err.value.status, err.value.reason) == (status, reason)
    assert text in err.value.message
    # nothing reached the log or the monitors
    assert core.state.counts(registered[0].name, registered[0].version).predictions == 0
    assert len(core.state.input_window(registered[0].name, registered[-1].version, 100)) == 0


def test_feedback_joins_reports_unknown_and_duplicate_and_counts(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray
) -> None:
    core = make_core(tmp_path, registered[0].name)
    version = core.runtime.live.version
    out = run(core.predict(rows[:4].tolist(), ["p0", "p1", "p2", "p3"]))
    predicted = [p["label"] for p in out["predictions"]]
    before = {
        r: REGISTRY.get_sample_value(
            "argus_feedback_total", {"model": core.runtime.name, "version": version, "result": r}
        )
        or 0.0
        for r in ("correct", "incorrect")
    }
    wrong = (predicted[1] + 1) % 10
    result = run(
        core.feedback(
            [
                {"id": "p0", "label": predicted[0]},
                {"id": "p1", "label": wrong},
                {"id": "ghost", "label": 1},
                {"id": "p0", "label": 3},
            ]
        )
    )
    assert result == {"accepted": 2, "unknown_ids": ["ghost"], "duplicate_ids": ["p0"]}
    again = run(core.feedback([{"id": "p1", "label": 2}]))
    assert again == {"accepted": 0, "unknown_ids": [], "duplicate_ids": ["p1"]}
    for r, delta in (("correct", 1), ("incorrect", 1)):
        after = REGISTRY.get_sample_value(
            "argus_feedback_total", {"model": core.runtime.name, "version": version, "result": r}
        )
        assert after == before[r] + delta
    labelled = core.state.labelled_window(core.runtime.name, version, 10)
    assert sorted(labelled.true.tolist()) == sorted([predicted[0], wrong])


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([{"id": "p0", "label": 10}], "bad_label"),
        ([{"id": "p0", "label": -1}], "bad_label"),
        ([{"id": "p0", "label": "3"}], "bad_label"),
        ([{"id": "p0", "label": True}], "bad_label"),
        ([{"id": 5, "label": 1}], "bad_ids"),
        (["p0"], "bad_type"),
        ([], "empty_batch"),
    ],
)
def test_bad_feedback_is_refused_and_changes_nothing(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray, items: Any, reason: str
) -> None:
    core = make_core(tmp_path, registered[0].name)
    run(core.predict(rows[:1].tolist(), ["p0"]))
    with pytest.raises(RequestError) as err:
        run(core.feedback(items))
    assert err.value.status == 400 and err.value.reason == reason
    assert core.state.counts(core.runtime.name, core.runtime.live.version).labelled == 0


def test_feedback_token_is_enforced_when_set(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray
) -> None:
    core = make_core(tmp_path, registered[0].name, feedback_token="fb")
    run(core.predict(rows[:1].tolist(), ["p0"]))
    for auth, status in ((None, 401), ("Bearer nope", 403)):
        with pytest.raises(RequestError) as err:
            run(core.feedback([{"id": "p0", "label": 0}], auth))
        assert err.value.status == status
    assert run(core.feedback([{"id": "p0", "label": 0}], "Bearer fb"))["accepted"] == 1


def test_admin_endpoints_need_the_token(tmp_path: Path, registered: list[StoredVersion]) -> None:
    disabled = make_core(tmp_path, registered[0].name)
    with pytest.raises(RequestError) as err:
        disabled.activate(registered[0].version, f"Bearer {TOKEN}")
    assert err.value.status == 403 and "ARGUS_ADMIN_TOKEN" in err.value.message
    core = make_core(tmp_path, registered[0].name, admin_token=TOKEN)
    for auth, status in ((None, 401), ("Basic xyz", 401), ("Bearer wrong", 403)):
        with pytest.raises(RequestError) as err:
            core.activate(registered[0].version, auth)
        assert err.value.status == status
    assert core.runtime.live.version == registered[-1].version  # nothing switched


def test_activate_and_rollback_switch_the_live_version(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray
) -> None:
    old, new = registered
    core = make_core(tmp_path, old.name, admin_token=TOKEN)
    auth = f"Bearer {TOKEN}"
    assert core.runtime.live.version == new.version
    core.activate(new.version, auth)
    out = core.activate(old.version, auth)
    assert out["live"] == old.version and out["previous"] == new.version
    assert run(core.predict(rows[:1].tolist()))["version"] == old.version
    back = core.rollback(auth)
    assert back["live"] == new.version and back["reason"] == "rollback"
    assert run(core.predict(rows[:1].tolist()))["version"] == new.version
    models = core.models()
    assert models["live"] == new.version
    assert [v["version"] for v in models["versions"]] == [old.version, new.version]
    assert [h["reason"] for h in models["history"]] == ["activate", "activate", "rollback"]
    with pytest.raises(RequestError) as err:
        core.rollback(auth)
    assert err.value.status == 409


def test_unknown_or_corrupt_versions_are_refused_and_live_keeps_serving(
    tmp_path: Path, registered: list[StoredVersion], rows: np.ndarray
) -> None:
    old, new = registered
    core = make_core(tmp_path, old.name, admin_token=TOKEN)
    auth = f"Bearer {TOKEN}"
    with pytest.raises(RequestError) as err:
        core.activate("doesnotexist", auth)
    assert err.value.status == 404
    old.model_path.write_bytes(old.model_path.read_bytes()[:100])  # truncated
    with pytest.raises(RequestError) as err:
        core.activate(old.version, auth)
    assert err.value.status == 422 and "verification" in err.value.message
    assert core.state.get_live(old.name) is None
    assert run(core.predict(rows[:1].tolist()))["version"] == new.version
