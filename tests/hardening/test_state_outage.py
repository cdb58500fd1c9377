"""Integration: the shared state fails under load, and nothing answered is lost.

Each test runs a real ``argus serve`` (2 workers) and real state processes on 127.0.0.1:

* Redis killed (SIGKILL) for 10 s under load, then restarted from its append-only file:
  the rows answered meanwhile wait in the workers' spill and are replayed; every answered
  row is in the log, every label for them joins, spilled = replayed.
* Redis restarted *empty* after an operator activated an older version and set a shadow:
  every worker keeps the older version, one of them restores the pointer (reason
  ``restored``), and the shadow comes back too.
* A primary, a replica and three sentinels: the primary killed under load; Argus follows
  the promoted replica, with no failed request and no answered row lost.
* SQLite made read-only (``chattr +i``) under load, then writable again: no row lost.

Every test prints its figures (rows answered, spilled, replayed, lost; failed requests;
time to recover).
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from models.store import StoredVersion
from tests.hardening.support import logged_ids, metrics, rows, samples, start_server, value
from tests.harness import ArgusServer
from tests.redis_server import (
    RedisServer,
    SentinelServer,
    require_redis,
    sentinel_binary,
)

pytestmark = pytest.mark.integration

TOKEN = "outage-admin"


@pytest.fixture(scope="module")
def versions(outcome: Any) -> list[StoredVersion]:
    from training.publish import publish

    name = f"out-{uuid.uuid4().hex[:8]}"
    return [publish(outcome, name), publish(outcome, name)]


class Load:
    """``clients`` threads sending 4-row ``/predict`` requests with fresh ids until
    stopped; what was answered (ids, version per worker) and what failed."""

    def __init__(self, server: ArgusServer, clients: int = 4, rows_per_request: int = 4):
        self.server = server
        self.clients = clients
        self.n = rows_per_request
        self.answered: list[str] = []
        self.failures: list[str] = []
        self.versions: list[tuple[float, str, str]] = []  # (t, worker, version)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(clients)
        ]

    def _run(self, k: int) -> None:
        tag = uuid.uuid4().hex[:6]
        sent = 0
        with httpx.Client(base_url=self.server.url, timeout=30) as c:
            while not self._stop.is_set():
                ids = [f"{tag}-{k}-{sent}-{j}" for j in range(self.n)]
                sent += 1
                try:
                    r = c.post("/predict", json={"instances": rows(self.n, sent), "ids": ids})
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                    continue
                with self._lock:
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    self.answered += ids
                    worker = r.headers.get("x-argus-worker", "?")
                    self.versions.append((time.monotonic(), worker, r.json()["version"]))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def probe_workers(server: ArgusServer, workers: int, tries: int = 60) -> dict[str, str]:
    """The version each worker answers with, from fresh connections until every worker
    has answered (a connection stays with one worker)."""
    seen: dict[str, str] = {}
    for k in range(tries):
        with server.client() as c:
            r = c.post("/predict", json={"instances": rows(1, k)})
        assert r.status_code == 200, r.text
        seen[r.headers["x-argus-worker"]] = r.json()["version"]
        if len(seen) >= workers:
            break
    return seen


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` holds; fails the test naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.25)
    return time.monotonic() - started


def row_counters(server: ArgusServer) -> dict[str, float]:
    text = metrics(server)
    out = {
        k: value(text, f"argus_state_{k}_rows_total") for k in ("spilled", "replayed", "dropped")
    }
    available = samples(text, "argus_state_available")
    out["available"] = min(available.values()) if available else float("nan")
    out["workers_reporting"] = len(available)
    return out


def settled(server: ArgusServer) -> Callable[[], bool]:
    """The spill is empty again: every spilled row replayed, every worker available."""

    def check() -> bool:
        c = row_counters(server)
        return c["spilled"] == c["replayed"] and c["available"] == 1

    return check


def join_labels(server: ArgusServer, ids: list[str]) -> dict[str, int]:
    """Send a label for every id (to whichever worker answers); the summed outcome."""
    total = {"accepted": 0, "unknown": 0, "duplicate": 0}
    with server.client() as c:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            r = c.post("/feedback", json={"feedback": [{"id": i, "label": 3} for i in chunk]})
            assert r.status_code == 200, r.text
            body = r.json()
            total["accepted"] += body["accepted"]
            total["unknown"] += len(body["unknown_ids"])
            total["duplicate"] += len(body["duplicate_ids"])
    return total


@contextmanager
def argus_over(
    home: Path, versions: list[StoredVersion], url: str, **env: str
) -> Iterator[ArgusServer]:
    server = start_server(
        home,
        versions,
        {"ARGUS_STATE_URL": url, "ARGUS_ADMIN_TOKEN": TOKEN, "ARGUS_STATE_BUSY_TIMEOUT": "1",
         **env},
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


# -- Redis killed for 10 s ---------------------------------------------------------------


def test_redis_killed_for_10s_under_load_loses_no_answered_row(
    tmp_path: Path, versions: list[StoredVersion]
) -> None:
    require_redis()
    with RedisServer(persistent=True) as db:
        url = f"{db.url}?prefix=kill-{uuid.uuid4().hex[:6]}:"
        with argus_over(tmp_path / "argus", versions, url) as server:
            with Load(server) as load:
                time.sleep(2)
                before_kill = len(load.answered)
                db.kill()
                killed_at = time.monotonic()
                time.sleep(3)
                # a label for a row answered during the outage: not unknown, a 503 to retry
                with load._lock:
                    outage_id = load.answered[-1]
                with server.client() as c:
                    r = c.post("/feedback", json={"feedback": [{"id": outage_id, "label": 1}]})
                    mon = c.get("/monitoring")
                assert r.status_code == 503 and r.json()["reason"] == "state_unavailable", r.text
                assert r.headers.get("retry-after"), r.headers
                assert mon.status_code == 503 and "wait to be replayed" in mon.json()["error"]
                time.sleep(max(0.0, 10 - (time.monotonic() - killed_at)))
                during = row_counters(server)
                db.start()
                back_at = time.monotonic()
                recovery = wait_for("the spill replayed", settled(server), 60)
                time.sleep(2)  # more answers after the replay, straight to Redis again
            counters = row_counters(server)
            answered = list(load.answered)
            logged = logged_ids(tmp_path / "reader", answered, url)
            lost = len(answered) - len(logged)
            labels = join_labels(server, answered)
            with server.client() as c:
                mon = c.get("/monitoring").json()
    print(
        f"\nredis killed 10 s: {len(answered)} rows answered ({len(answered) - before_kill} "
        f"from the kill on), spilled {counters['spilled']:.0f} (during the outage "
        f"{during['spilled']:.0f}), replayed {counters['replayed']:.0f}, dropped "
        f"{counters['dropped']:.0f}, lost {lost}; failed requests {len(load.failures)}; "
        f"replayed {recovery:.1f} s after the restart; labels {labels}"
    )
    assert not load.failures, load.failures[:5]
    assert during["available"] == 0 and during["spilled"] > 0
    assert counters["spilled"] == counters["replayed"] and counters["dropped"] == 0
    assert lost == 0
    assert labels == {"accepted": len(answered), "unknown": 0, "duplicate": 0}
    assert mon["state"] == {"available": True, "waiting_rows": 0}
    assert back_at - killed_at >= 10


# -- Redis restarted empty ----------------------------------------------------------------


def test_redis_restarted_empty_switches_nothing(
    tmp_path: Path, versions: list[StoredVersion]
) -> None:
    require_redis()
    old, new = versions
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with RedisServer() as db:
        url = f"{db.url}?prefix=empty-{uuid.uuid4().hex[:6]}:"
        with argus_over(tmp_path / "argus", versions, url) as server:
            with server.client() as c:
                r = c.post("/models/activate", json={"version": old.version}, headers=admin)
                assert r.status_code == 200, r.text
                r = c.post(
                    "/models/shadow", json={"version": new.version, "fraction": 1.0},
                    headers=admin,
                )  # fmt: skip
                assert r.status_code == 200, r.text
            time.sleep(1.5)  # every worker follows both (poll 0.25 s)
            with Load(server, clients=3) as load:
                time.sleep(1)
                db.kill()
                db.start()  # no persistence: an empty Redis behind the same address
                restarted = time.monotonic()
                time.sleep(10)
            after = [(w, v) for t, w, v in load.versions if t > restarted]
            workers = {w for w, _ in after}
            seen = probe_workers(server, len(server.worker_pids()))  # 10 s on: every worker
            with server.client() as c:
                models = c.get("/models").json()
            text = metrics(server)
        switches = samples(text, "argus_model_switches_total")
    restored = [s for s in models["history"] if s["reason"] == "restored"]
    print(
        f"\nredis restarted empty: {len(after)} answers in the 10 s after, from workers "
        f"{sorted(workers)}, versions {sorted({v for _, v in after})}; then every worker: "
        f"{seen}; history line of the "
        f"restore: {restored}; failed requests {len(load.failures)}"
    )
    assert not load.failures, load.failures[:5]
    assert len(seen) == 2, f"both workers should have answered: {seen}"
    assert {v for _, v in after} == {old.version} == set(seen.values())
    assert models["live"] == old.version, models
    assert models["candidate"]["role"] == "shadow", models
    assert models["candidate"]["version"] == new.version, models
    assert len(restored) == 1 and restored[0]["version"] == old.version
    assert switches[frozenset({("model", old.name), ("reason", "restored")})] == 1


# -- Sentinel failover -------------------------------------------------------------------


def test_sentinel_failover_under_load_fails_no_request_and_loses_no_row(
    tmp_path: Path, versions: list[StoredVersion]
) -> None:
    require_redis()
    if sentinel_binary() is None:
        pytest.fail("redis-sentinel is not installed (apt-get install redis-sentinel)")
    service = "argus"
    primary = RedisServer().start()
    replica = RedisServer(args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    sentinels: list[SentinelServer] = []
    try:
        sentinels = [SentinelServer(primary.port, service).start() for _ in range(3)]
        wait_for("the replica in sync", lambda: _synced(replica.port), 20)
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        url = f"redis+sentinel://{hosts}/{service}/0?replicas=1"
        with argus_over(tmp_path / "argus", versions, url) as server:
            with Load(server) as load:
                time.sleep(2)
                primary.kill()
                failover = wait_for("sentinel's failover", lambda: _promoted(replica.port), 30)
                seq = _seq(replica.port)
                writes = wait_for(
                    "Argus writing to the new primary", lambda: _seq(replica.port) > seq, 20
                )
                time.sleep(3)
            wait_for("the spill replayed", settled(server), 60)
            counters = row_counters(server)
            answered = list(load.answered)
            logged = logged_ids(tmp_path / "reader", answered, url)
            lost = len(answered) - len(logged)
    finally:
        for s in sentinels:
            s.stop()
        replica.stop(remove=True)
        primary.stop(remove=True)
    print(
        f"\nsentinel failover: primary killed; promoted after {failover:.1f} s; Argus wrote to "
        f"the new primary {failover + writes:.1f} s after the kill; {len(answered)} rows "
        f"answered, spilled {counters['spilled']:.0f}, replayed {counters['replayed']:.0f}, "
        f"dropped {counters['dropped']:.0f}, lost {lost}; failed requests {len(load.failures)}"
    )
    assert not load.failures, load.failures[:5]
    assert lost == 0
    assert counters["spilled"] == counters["replayed"] and counters["dropped"] == 0
    assert writes <= 5, "Argus should write to the new primary within 5 s of the failover"


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


def _synced(port: int) -> bool:
    info = _client(port).info("replication")
    return info.get("master_link_status") == "up"


def _promoted(port: int) -> bool:
    try:
        return _client(port).info("replication").get("role") == "master"
    except redis.RedisError:
        return False


def _seq(port: int) -> int:
    """Rows the Redis at ``port`` has taken (the key prefix is the default ``argus:``)."""
    try:
        return int(_client(port).get("argus:seq") or 0)
    except redis.RedisError:
        return 0


# -- SQLite read-only --------------------------------------------------------------------


def _immutable(paths: list[Path], on: bool) -> bool:
    flag = "+i" if on else "-i"
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True)
    return done.returncode == 0


def test_sqlite_read_only_then_writable_loses_no_row(
    tmp_path: Path, versions: list[StoredVersion]
) -> None:
    home = tmp_path / "argus"
    server = start_server(home, versions, {"ARGUS_STATE_BUSY_TIMEOUT": "1"})
    db = home / "state.sqlite3"
    files = [db, home / "state.sqlite3-wal"]
    try:
        with Load(server) as load:
            time.sleep(2)
            if not _immutable(files, True):
                pytest.skip("chattr +i is not available here (needs root and ext2/3/4 or xfs)")
            try:
                time.sleep(5)
                during = row_counters(server)
            finally:
                _immutable(files, False)
            time.sleep(2)
        recovery = wait_for("the journal ingested", settled(server), 60)
        counters = row_counters(server)
        answered = list(load.answered)
        logged = logged_ids(home, answered)
    finally:
        _immutable(files, False)
        server.stop()
    lost = len(answered) - len(logged)
    print(
        f"\nsqlite read-only 5 s: {len(answered)} rows answered, spilled "
        f"{counters['spilled']:.0f}, replayed {counters['replayed']:.0f}, dropped "
        f"{counters['dropped']:.0f}, lost {lost}; failed requests {len(load.failures)}; "
        f"all ingested {recovery + 2:.1f} s after the store was writable again"
    )
    assert not load.failures, load.failures[:5]
    assert during["available"] == 0 and during["spilled"] > 0
    assert counters["spilled"] == counters["replayed"] and counters["dropped"] == 0
    assert lost == 0
