"""Requests arriving together share one pass (``service/coalesce.py``): each still gets
exactly its own answer, its own refusal, and its own rows in the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from models.store import StoredVersion
from service.coalesce import Coalescer, Entry
from service.validation import RequestError
from tests.service.test_handlers import make_core

DIGITS = load_digits().data.astype(np.float32)


async def together(core: Any, requests: list[tuple[np.ndarray, list[str] | None]]) -> list[Any]:
    """Send ``requests`` concurrently, as clients on one worker would; answers or errors."""
    calls = [core.predict(X.tolist(), ids) for X, ids in requests]
    return await asyncio.gather(*calls, return_exceptions=True)


def test_concurrent_requests_share_groups_and_get_their_own_answers(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    live = registered[-1]
    core = make_core(tmp_path, live.name)
    sizes = [1, 5, 64, 3, 1, 17, 2, 8]
    requests, at = [], 0
    for k, n in enumerate(sizes):
        ids = [f"c{k}-{j}" for j in range(n)] if k % 2 else None
        requests.append((DIGITS[at : at + n], ids))
        at += n
    answers = asyncio.run(together(core, requests))
    assert core.coalescer.groups < len(sizes) == core.coalescer.requests  # they were grouped
    session = ort.InferenceSession(str(live.model_path))
    detector = core.runtime.live.detector
    all_ids: list[str] = []
    for (X, ids), out in zip(requests, answers, strict=True):
        (expected,) = session.run(None, {"input": X})  # each request on its own
        got = np.array([p["probabilities"] for p in out["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert [p["label"] for p in out["predictions"]] == expected.argmax(axis=1).tolist()
        scores = [p["anomaly_score"] for p in out["predictions"]]
        np.testing.assert_allclose(scores, detector.score(X))
        row_ids = [p["id"] for p in out["predictions"]]
        if ids is not None:
            assert row_ids == ids
        all_ids += row_ids
    assert len(set(all_ids)) == len(all_ids) == sum(sizes)
    logged = core.state.lookup(all_ids)
    assert set(logged) == set(all_ids)
    first = answers[2]["predictions"][10]
    assert logged[first["id"]].label == first["label"]
    assert core.state.counts(live.name, live.version).predictions == sum(sizes)


def test_rows_the_model_cannot_score_refuse_only_their_request(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    core = make_core(tmp_path, registered[0].name)
    huge = np.full((2, 64), 3e38, dtype=np.float32)  # finite in, NaN out of the graph
    requests = [(DIGITS[:3], None), (huge, None), (DIGITS[5:6], None)]
    good, bad, other = asyncio.run(together(core, requests))
    assert core.coalescer.groups == 1  # one group, one model call for all three
    assert isinstance(bad, RequestError) and bad.reason == "not_finite" and bad.status == 400
    kept = [p["id"] for p in good["predictions"]] + [p["id"] for p in other["predictions"]]
    assert len(kept) == 4 and set(core.state.lookup(kept)) == set(kept)
    live = core.runtime.live
    assert core.state.counts(live.name, live.version).predictions == 4


def test_an_id_two_requests_of_one_group_claim_goes_to_the_first(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    core = make_core(tmp_path, registered[0].name)

    async def group() -> list[Any]:
        loop = asyncio.get_running_loop()
        entries = [
            Entry(DIGITS[:3], ["g-1", "g-2", "g-3"], loop.create_future()),
            Entry(DIGITS[3:5], ["g-3", "g-4"], loop.create_future()),
            Entry(DIGITS[5:6], None, loop.create_future()),
        ]
        await core._run_group(core.runtime.live, entries)
        return await asyncio.gather(*(e.future for e in entries), return_exceptions=True)

    first, second, third = asyncio.run(group())
    assert first[0] == ["g-1", "g-2", "g-3"] and len(third[0]) == 1
    assert isinstance(second, RequestError) and second.status == 409
    logged = core.state.lookup(["g-1", "g-2", "g-3", "g-4", third[0][0]])
    assert set(logged) == {"g-1", "g-2", "g-3", third[0][0]}


def test_an_id_already_logged_refuses_its_request_and_records_the_rest(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    """An id that raced past the request-time check is caught by the store's write of
    the group (write-through: the store checks every id); only its request is refused."""
    from state.opener import open_state
    from state.shared import WriteThroughState

    core = make_core(tmp_path, registered[0].name)
    core.state = WriteThroughState(open_state(None, tmp_path / "wt", journal=False).inner)
    asyncio.run(core.predict(DIGITS[:1].tolist(), ["taken"]))

    async def no_check(ids: list[str]) -> None:  # as if a racing request got there first
        return None

    core._check_new_ids = no_check  # type: ignore[method-assign]
    first, second = asyncio.run(
        together(core, [(DIGITS[1:3], ["x-1", "taken"]), (DIGITS[3:5], ["y-1", "y-2"])])
    )
    assert isinstance(first, RequestError) and first.status == 409
    assert [p["id"] for p in second["predictions"]] == ["y-1", "y-2"]
    assert set(core.state.lookup(["x-1", "y-1", "y-2"])) == {"y-1", "y-2"}


def test_a_lone_request_waits_for_nobody_and_a_late_one_is_not_waited_for_past_the_bound() -> None:
    ran: list[int] = []

    async def run(version: Any, entries: list[Entry]) -> None:
        ran.append(len(entries))
        for e in entries:
            e.future.set_result(len(e.X))

    async def scenario() -> tuple[int, int]:
        c = Coalescer(run, max_wait=30.0)
        c.arrive()
        assert await c.submit("v", np.zeros((2, 3)), None) == 2  # nobody else on the way
        lone_waits = c.waits
        c.max_wait = 0.05
        c.arrive()  # a request that never submits (still checking its ids, say)
        c.arrive()
        assert await c.submit("v", np.zeros((1, 3)), None) == 1  # the bound, then alone
        return lone_waits, c.waits

    lone_waits, waits = asyncio.run(scenario())
    assert lone_waits == 0 and waits >= 1 and ran == [1, 1]


def test_grouping_off_runs_every_request_alone(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    core = make_core(tmp_path, registered[0].name, coalesce_wait_ms=0)
    answers = asyncio.run(together(core, [(DIGITS[i : i + 2], None) for i in range(6)]))
    assert core.coalescer.groups == core.coalescer.requests == 6
    assert all(len(a["predictions"]) == 2 for a in answers)


@pytest.mark.parametrize("wait", ["-1", "1001", "x"])
def test_the_wait_bound_is_checked(wait: str) -> None:
    from errors import SettingsError
    from service.settings import Settings

    with pytest.raises(SettingsError, match="ARGUS_COALESCE_WAIT_MS"):
        Settings.from_env({"ARGUS_COALESCE_WAIT_MS": wait})
