"""Sustained load, the CI variant of ``bench/load.py``: bounded by count, not by time.

16 keep-alive connections send about 1500 mixed requests (mostly /predict, some /feedback
with the true labels of rows answered earlier on any worker) to the package's server.
Asserted: zero non-2xx, every label accepted, and the prediction log holds exactly the
answered rows and labels. Latency and RSS are printed, never asserted (CI machines vary).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.load import LoadResult, drive, logged
from tests.hardening.conftest import Hardened

pytestmark = pytest.mark.integration

CONNECTIONS = 16
REQUESTS = 1500


def test_sustained_mixed_load_loses_nothing(hardened: Hardened) -> None:
    server = hardened.server
    model, version = server.model, hardened.versions[-1].version
    with server.client() as c:
        assert c.get("/models").json()["serving"] == version
    pids = sorted(server.worker_pids())
    rows_before, labels_before = logged(server.home, model, version)

    async def go() -> LoadResult:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        clients = [
            httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits)
            for _ in range(CONNECTIONS)
        ]
        try:
            return await drive(
                clients,
                duration=300.0,  # a safety bound only: the count ends the run
                max_requests=REQUESTS,
                feedback_share=0.1,
                feedback_headers=hardened.feedback_auth,
                scrape_interval=1.0,
                worker_pids=server.worker_pids,
            )
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    result = asyncio.run(go())
    rows_after, labels_after = logged(server.home, model, version)
    answered = result.answered_rows[(model, version)]
    rss = result.rss_windows(0.0, result.seconds, window=min(10.0, result.seconds / 3))
    print(
        f"\nload: {sum(result.requests.values())} requests {dict(result.requests)} in "
        f"{result.seconds:.1f} s, {result.non_2xx} non-2xx; p50 "
        f"{result.percentile_ms(None, 50):.1f} ms, p99 {result.percentile_ms(None, 99):.1f} ms; "
        f"{answered} rows answered, {rows_after - rows_before} logged; labels sent "
        f"{result.labels_sent}, accepted {result.labels_accepted}, "
        f"logged {labels_after - labels_before}; RSS growth "
        + ", ".join(f"{pid}: {g * 100:+.1f}%" for pid, (_, _, g) in sorted(rss.items()))
    )
    assert result.non_2xx == 0, result.errors[:5]
    assert result.requests["predict"] + result.requests["feedback"] == REQUESTS
    assert set(result.answered_rows) == {(model, version)}
    assert result.labels_sent > 0 and result.labels_unknown == 0
    assert result.labels_accepted == result.labels_sent
    assert rows_after - rows_before == answered
    assert labels_after - labels_before == result.labels_accepted
    assert sorted(server.worker_pids()) == pids
