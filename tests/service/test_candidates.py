"""Shadow and canary in one worker, in-process: every comparison figure against an
independent computation on the same rows (onnxruntime, scikit-learn, scipy)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from scipy.stats import binom, binomtest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score

from models.store import StoredVersion
from service import candidates
from service.candidates import route
from service.exposition import MetricsExposition
from service.fleet import Fleet
from service.handlers import ArgusCore
from service.metrics import get_metrics
from service.runtime import ModelRuntime
from service.settings import Settings
from service.validation import RequestError
from state.ids import shadow_id
from state.opener import open_state
from tests.argus.test_cli import skl_onnx

TOKEN = "Bearer cand-admin"
DIGITS = load_digits()


@pytest.fixture
def versions(registered: list[StoredVersion], tmp_path: Path) -> tuple[StoredVersion, ...]:
    """The trained MLP and, as a second version of the same name, a scikit-learn model."""
    from training.register_onnx import register_onnx

    (tmp_path / "skl").mkdir()
    path, ref = skl_onnx(tmp_path / "skl")
    skl = register_onnx(path, ref, "digit", name=registered[0].name)
    return registered[-1], skl


def make(tmp_path: Path, live: StoredVersion) -> tuple[ArgusCore, MetricsExposition]:
    name = live.name
    settings = Settings(home=tmp_path, model=name, admin_token=TOKEN.split()[1]).validated()
    state = open_state(None, tmp_path)
    state.set_live(name, live.version, reason="activate", t=1.0)
    runtime = ModelRuntime(
        name, lambda: state.get_live(name), candidate=lambda: state.get_candidate(name)
    )
    runtime.refresh()
    fleet = Fleet([runtime], name)
    return ArgusCore(settings, state, fleet, get_metrics()), MetricsExposition(
        settings, state, fleet
    )


def onnx_labels(version: StoredVersion, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(version.model_path))
    (probabilities,) = session.run([version.card.output_name], {version.card.input_name: rows})
    return np.asarray(probabilities).argmax(axis=1)


def test_shadow_predicts_the_same_rows_and_labels_credit_both(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion]
) -> None:
    live, skl = versions
    core, exposition = make(tmp_path, live)
    X = DIGITS.data[1200:1500].astype(np.float32)
    y = DIGITS.target[1200:1500]
    ids = [f"row-{i}" for i in range(len(X))]
    labelled = np.arange(len(X)) % 3 != 0  # two rows in three get their label

    async def scenario() -> list[dict[str, Any]]:
        core.set_candidate("shadow", skl.version, 1.0, TOKEN)
        answers = []
        for start in range(0, len(X), 25):
            out = await core.predict(X[start : start + 25].tolist(), ids[start : start + 25])
            assert out["version"] == live.version  # the shadow never answers
            answers += out["predictions"]
        await core.shadow.drain()
        fb = [{"id": ids[i], "label": int(y[i])} for i in np.flatnonzero(labelled)]
        assert (await core.feedback(fb))["accepted"] == len(fb)
        return answers

    answers = asyncio.run(scenario())
    logged = core.state.lookup([shadow_id(i) for i in ids])
    assert len(logged) == len(X) and {r.version for r in logged.values()} == {skl.version}
    live_labels = np.array([a["label"] for a in answers])
    skl_labels = onnx_labels(skl, X)
    np.testing.assert_array_equal(live_labels, onnx_labels(live, X))
    np.testing.assert_array_equal([logged[shadow_id(i)].label for i in ids], skl_labels)
    assert [logged[shadow_id(i)].true_label for i in ids] == [
        int(y[i]) if labelled[i] else None for i in range(len(X))
    ]  # the label of each row joined the shadow's prediction too

    c = exposition.compare(live.name)
    assert c["candidate"]["role"] == "shadow" and c["candidate"]["version"] == skl.version
    comparison = c["comparison"]
    assert comparison["rows"] == len(X) and comparison["labelled"] == int(labelled.sum())
    assert comparison["agreement"] == pytest.approx(np.mean(live_labels == skl_labels))
    yt = y[labelled]
    assert comparison["live_accuracy"] == pytest.approx(accuracy_score(yt, live_labels[labelled]))
    assert comparison["candidate_accuracy"] == pytest.approx(
        accuracy_score(yt, skl_labels[labelled])
    )
    b = int(np.sum((live_labels[labelled] == yt) & (skl_labels[labelled] != yt)))
    cc = int(np.sum((live_labels[labelled] != yt) & (skl_labels[labelled] == yt)))
    verdict = comparison["verdict"]
    assert verdict["test"] == "mcnemar" and verdict["discordant"] == b + cc
    expected_p = 1.0 if b + cc == 0 else binomtest(b, b + cc, 0.5, alternative="greater").pvalue
    assert verdict["p_value"] == pytest.approx(expected_p)
    assert c["candidate"]["input_rows"] == len(X)  # the shadow's own input window
    text = exposition.render()
    assert (
        f'argus_candidate_info{{model="{live.name}",role="shadow",version="{skl.version}"}} 1.0'
        in text
    )
    assert "argus_candidate_agreement_ratio" in text and "argus_candidate_worse" in text


def test_canary_answers_its_share_sticky_per_id_and_promote_then_rollback(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion]
) -> None:
    live, skl = versions
    core, exposition = make(tmp_path, live)
    row = DIGITS.data[:1].astype(np.float32).tolist()
    core.set_candidate("canary", skl.version, 0.3, TOKEN)

    async def traffic(n: int) -> list[str]:
        return [(await core.predict(row))["version"] for _ in range(n)]

    answered = asyncio.run(traffic(400))
    lo, hi = binom.interval(0.999, 400, 0.3)
    assert lo <= answered.count(skl.version) <= hi
    runtime = core.fleet.get()
    chosen = [route(runtime, [f"client-{i}"]).version for i in range(2000)]
    lo, hi = binom.interval(0.999, 2000, 0.3)
    assert lo <= chosen.count(skl.version) <= hi
    assert all(route(runtime, [f"client-{i}"]).version == chosen[i] for i in range(200))
    c = exposition.compare(live.name)
    assert c["comparison"]["verdict"]["test"] == "two-proportion"
    assert c["candidate"]["input_rows"] == answered.count(skl.version)

    with pytest.raises(RequestError) as info:
        core.set_candidate("canary", live.version, 0.5, TOKEN)
    assert info.value.status == 409 and info.value.reason == "candidate_is_live"
    with pytest.raises(RequestError) as info:
        core.set_candidate("canary", skl.version, 0.5, "Bearer wrong")
    assert info.value.status == 403
    promoted = core.promote(TOKEN)
    assert promoted["live"] == skl.version and promoted["reason"] == "promote"
    assert core.state.get_candidate(live.name) is None
    assert core.models()["live"] == skl.version and core.models()["candidate"] is None
    assert core.rollback(TOKEN)["live"] == live.version  # back to what was live before
    with pytest.raises(RequestError) as info:
        core.promote(TOKEN)
    assert info.value.status == 409 and info.value.reason == "no_candidate"


class _CountingLog:
    """The state, noting the size of each batch the shadow logs."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.sizes: list[int] = []

    async def record_answered(self, batch: Any) -> None:
        self.sizes.append(len(batch.ids))
        await self.state.record_answered(batch)


def test_the_shadow_gathers_drops_what_it_cannot_hold_and_splits_big_requests(
    tmp_path: Path, versions: tuple[StoredVersion, StoredVersion], monkeypatch: Any
) -> None:
    live, skl = versions
    core, _ = make(tmp_path, live)
    monkeypatch.setattr(candidates, "GATHER_SECONDS", 0.5)  # the requests below all come within it
    core.shadow.max_pending = 2
    logged = _CountingLog(core.state)
    core.shadow.state = logged  # type: ignore[assignment]
    dropped = core.metrics.candidate_dropped.labels(live.name, skl.version)
    X = DIGITS.data[:625].astype(np.float32)
    ids = [f"gather-{i}" for i in range(len(X))]

    async def scenario() -> list[str]:
        core.set_candidate("shadow", skl.version, 1.0, TOKEN)
        before = dropped._value.get()
        answered = []
        for k in range(5):  # request 1 is taken and gathers; 2 and 3 wait; 4 and 5 are dropped
            out = await core.predict(X[5 * k : 5 * k + 5].tolist(), ids[5 * k : 5 * k + 5])
            answered.append(out["version"])
        assert logged.sizes == []  # answered before the shadow predicted anything
        assert dropped._value.get() - before == 2 * 5
        await core.shadow.drain()
        assert logged.sizes == [15]  # requests 1-3, one call and one journal record
        out = await core.predict(X[25:625].tolist(), ids[25:625])  # one big request
        answered.append(out["version"])
        await core.shadow.drain()
        return answered

    assert asyncio.run(scenario()) == [live.version] * 6
    assert logged.sizes[1:] == [256, 256, 88]  # in parts: none holds the loop long
    stored = core.state.lookup([shadow_id(i) for i in ids])
    assert sorted(stored) == sorted(shadow_id(i) for i in ids[:15] + ids[25:625])
