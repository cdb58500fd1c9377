"""The shared state store: every backend runs the same tests through the ``backend`` fixture.

``backend`` is SQLite in a temporary home, then Redis: one ``redis-server`` per session
(tests/redis_server.py; skipped without it unless ``ARGUS_REQUIRE_REDIS=1``), each test
under a key prefix of its own. Tests that start processes use the ``spawn`` start method,
so children never inherit a parent's connection; their targets live at module level so the
children can import them. Tests of one backend's failure modes come last.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from errors import DuplicateIdError, NoRollbackTargetError, StateError
from state import sqlite_store
from state.ids import new_ids
from state.opener import open_state
from state.records import PredictionBatch, PredictionRecord
from state.shared import JournaledState, WriteThroughState
from state.sqlite_store import SCHEMA_VERSION, SQLiteState
from state.types import Candidate, Counts, FiguresPoint, LiveMarker, StateStore, Switch
from tests.redis_server import RedisServer, require_redis

try:
    from state import redis_store
    from state.redis_store import RedisState
except ImportError:  # the redis package is optional; its tests skip (or fail in CI)
    redis_store = None  # type: ignore[assignment]
    RedisState = None  # type: ignore[assignment,misc]

SPAWN = mp.get_context("spawn")


def open_backend(url: str | None, home: Path, **options: object) -> StateStore:
    """The backend ``open_state`` picks for ``url``, without the journal or wrapper."""
    return open_state(url, home, journal=False, **options).inner


@dataclass
class Backend:
    name: str
    url: str | None
    home: Path

    def open(self, **options: object) -> StateStore:
        return open_backend(self.url, self.home, **options)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix=test-{uuid.uuid4().hex[:12]}:"
        return Backend("redis", url, tmp_path / "home")
    return Backend(request.param, None, tmp_path / "home")


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    s = backend.open()
    yield s
    s.close()


def make_records(
    ids: list[str], *, model: str = "m", version: str = "v1", t0: float = 1000.0, seed: int = 0
) -> list[PredictionRecord]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=len(ids)).astype(np.float32)
    return [
        PredictionRecord(
            id=id_,
            model=model,
            version=version,
            t=t0 + i,
            label=int(p.argmax()),
            confidence=float(p.max()),
            probabilities=tuple(p.tolist()),
            anomaly_score=float(i),
            anomalous=i % 2 == 0,
        )
        for i, (id_, p) in enumerate(zip(ids, probs, strict=True))
    ]


def batches_of(
    records: list[PredictionRecord], inputs: np.ndarray | None = None
) -> list[PredictionBatch]:
    """One ``PredictionBatch`` per record (each keeps its own time), row i's inputs
    ``inputs[i]``."""
    return [
        PredictionBatch(
            model=r.model,
            version=r.version,
            t=r.t,
            ids=[r.id],
            labels=np.array([r.label]),
            confidences=np.array([r.confidence], dtype=np.float32),
            probabilities=np.array([r.probabilities], dtype=np.float32),
            anomaly_scores=np.array([r.anomaly_score]),
            anomalous=np.array([r.anomalous]),
            inputs=None if inputs is None else np.asarray(inputs)[i : i + 1],
        )
        for i, r in enumerate(records)
    ]


def write(
    store: StateStore, records: list[PredictionRecord], inputs: np.ndarray | None = None
) -> None:
    """Log ``records`` in one ``record_batches`` call."""
    store.record_batches(batches_of(records, inputs))


def record(store: StateStore, n: int, features: int = 4, **kw: object) -> list[PredictionRecord]:
    records = make_records(store.new_ids(n), **kw)  # type: ignore[arg-type]
    inputs = np.array([[r.t + j for j in range(features)] for r in records])
    write(store, records, inputs)
    return records


# -- child processes ------------------------------------------------------------------------


def _child_ids(url: str | None, home: Path, n: int, out: mp.connection.Connection) -> None:
    store = open_backend(url, home)
    out.send(store.new_ids(n))


def _child_record_until_killed(url: str | None, home: Path, out: mp.connection.Connection) -> None:
    store = open_backend(url, home)
    batch = 0
    while True:
        ids = store.new_ids(8)
        write(store, make_records(ids, t0=1000.0 + batch), np.ones((8, 16)))
        out.send(ids)  # "the response was sent"
        batch += 1


def _child_feedback(
    url: str | None,
    home: Path,
    ids: list[str],
    label: int,
    barrier: threading.Barrier,
    out: mp.connection.Connection,
) -> None:
    store = open_backend(url, home)
    order = np.random.default_rng(label).permutation(len(ids))
    barrier.wait()
    accepted = []
    for i in order:
        accepted += store.record_feedback([(ids[i], label)], t=5000.0).accepted
        time.sleep(0.0002)  # let the other process take SQLite's (unfair) write lock
    out.send(accepted)


def _child_read_only_file(directory: str, out: mp.connection.Connection) -> None:
    batches = [make_records(new_ids(1)) for _ in range(3)]  # imports done before setuid
    if os.geteuid() == 0:  # root ignores file modes: act as an unprivileged user
        try:
            os.setgid(65534)
            os.setuid(65534)
        except PermissionError as exc:
            out.send(["skip", str(exc)])
            return
    db = Path(directory) / "state.sqlite3"
    results = []
    with SQLiteState(db) as first:
        write(first, batches[0])
    os.chmod(db, 0o444)
    store = SQLiteState(db)
    try:
        write(store, batches[1])
        results.append("written while read-only")
    except StateError as exc:
        results.append(str(exc))
    for path in db.parent.glob("state.sqlite3*"):  # SQLite gave -wal/-shm the db's mode
        os.chmod(path, 0o644)
    write(store, batches[2])
    results.append(str(len(store.prediction_window("m", "v1", 10))))
    out.send(results)


def _run(target: Callable[..., None], *args: object, timeout: float = 20.0) -> Any:
    receive, send = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=target, args=(*args, send))
    proc.start()
    try:
        deadline = time.monotonic() + timeout
        while not receive.poll(0.05):
            if not proc.is_alive() and not receive.poll(0) or time.monotonic() > deadline:
                raise AssertionError(f"{target.__name__} sent nothing")
        return receive.recv()
    finally:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()


# -- factory --------------------------------------------------------------------------------


def test_open_state_selects_backend_and_path(tmp_path: Path) -> None:
    default = open_state(None, tmp_path)  # SQLite: behind this machine's journal
    assert isinstance(default, JournaledState) and default.directory == tmp_path / "journal"
    assert isinstance(default.inner, SQLiteState)
    assert default.inner.path == tmp_path / "state.sqlite3"
    relative = open_state("sqlite://sub/x.db", tmp_path, journal=False).inner
    assert isinstance(relative, SQLiteState) and relative.path == tmp_path / "sub" / "x.db"
    absolute = open_state(f"sqlite://{tmp_path}/abs.db", Path("/nonexistent")).inner
    assert isinstance(absolute, SQLiteState) and absolute.path == tmp_path / "abs.db"
    read_only = open_state("sqlite://abs.db?mode=ro", tmp_path)  # nothing to ingest into
    assert isinstance(read_only, WriteThroughState)
    assert open_state("sqlite://", tmp_path, input_window=7).options.input_window == 7
    if RedisState is None:
        with pytest.raises(StateError, match="needs the redis package"):
            open_state("redis://localhost:6379/0", tmp_path)
    else:  # opening connects to nothing yet
        shared = open_state("redis://:pw@localhost:1/3?prefix=prod:", tmp_path, max_rows=9)
        assert isinstance(shared, WriteThroughState)  # replicas cannot read a journal
        remote = shared.inner
        assert isinstance(remote, RedisState) and remote.prefix == "prod:"
        assert remote.options.max_rows == 9 and "pw" not in remote.display_url
        tls = open_state("rediss://h:6380/0", tmp_path).inner
        assert isinstance(tls, RedisState) and tls.prefix == "argus:"
        with pytest.raises(ValueError, match="journal"):
            open_state("redis://localhost:1/0", tmp_path, journal=True)
    with pytest.raises(StateError, match="unsupported scheme"):
        open_state("ftp://x", tmp_path)
    with pytest.raises(ValueError, match="unknown state option"):
        open_state(None, tmp_path, input_windw=3)
    with pytest.raises(ValueError, match="max_rows"):
        open_state(None, tmp_path, max_rows=0)


# -- ids, records, feedback -----------------------------------------------------------------


def test_new_ids_are_time_ordered_uuid7_hex() -> None:
    early, late = new_ids(500, now=1.0), new_ids(500, now=2.0)
    assert len(set(early + late)) == 1000
    assert max(early) < min(late)
    assert all(len(i) == 32 and i[12] == "7" and i[16] in "89ab" for i in early)


def test_ids_unique_across_processes_and_restarts(backend: Backend) -> None:
    children = [_run(_child_ids, backend.url, backend.home, 3000) for _ in range(2)]
    first = backend.open()
    mine = first.new_ids(3000)
    first.close()
    again = backend.open().new_ids(3000)  # a "restart"
    everything = [i for ids in children for i in ids] + mine + again
    assert len(set(everything)) == 12000


def test_record_and_lookup_round_trip(store: StateStore) -> None:
    records = record(store, 3)
    found = store.lookup([records[0].id, "nope", records[2].id, records[0].id])
    assert sorted(found) == sorted([records[0].id, records[2].id])
    assert found[records[2].id] == records[2]  # probabilities were float32 already
    assert found[records[0].id].inputs is None  # raw inputs are not logged by default
    assert store.counts("m", "v1").predictions == 3


def test_outcomes_are_lookup_cut_down(store: StateStore) -> None:
    records = record(store, 4)
    store.record_feedback([(records[1].id, 7)], t=2000.0)
    ids = [records[0].id, "nope", records[1].id, records[3].id, records[0].id]
    full = store.lookup(ids)
    outcomes = store.outcomes(ids)
    assert sorted(outcomes) == sorted(full) == sorted({records[0].id, records[1].id, records[3].id})
    for id_, rec in full.items():
        assert outcomes[id_] == (rec.version, rec.label, rec.true_label)
    assert outcomes[records[1].id].true_label == 7 and outcomes[records[0].id].true_label is None
    assert store.outcomes([]) == {}


def test_inputs_logged_only_when_asked(backend: Backend) -> None:
    store = backend.open(store_inputs=True)
    records = record(store, 2, features=3)
    assert store.lookup([records[1].id])[records[1].id].inputs == (1001.0, 1002.0, 1003.0)
    plain = backend.open(input_window=5)
    others = record(plain, 2, features=3, version="v2")
    assert plain.lookup([others[0].id])[others[0].id].inputs is None
    assert plain.input_window("m", "v2", 5).shape == (2, 3)  # the ring keeps them


def test_record_rejects_bad_batches_atomically(store: StateStore) -> None:
    existing = record(store, 1)[0]
    ids = store.new_ids(2)
    with pytest.raises(ValueError, match="repeated"):
        write(store, make_records([ids[0], ids[0]]))
    with pytest.raises(DuplicateIdError) as info:
        write(store, make_records([ids[1], existing.id]))
    assert info.value.ids == [existing.id]
    assert store.lookup(ids) == {}  # nothing of the failed batch was written
    (bad,) = batches_of(make_records(ids[:1]))
    with pytest.raises(ValueError, match="inputs"):
        store.record_batches([replace(bad, inputs=np.ones((3, 2)))])
    assert store.counts("m", "v1").predictions == 1


def test_feedback_joins_by_id_and_first_label_wins(store: StateStore) -> None:
    a, b, c = record(store, 3)
    result = store.record_feedback([(a.id, 2), ("ghost", 1), (b.id, 0), (a.id, 1)], t=2000.0)
    assert result.accepted == [a.id, b.id]
    assert result.unknown_ids == ["ghost"]
    assert result.duplicate_ids == [a.id]  # repeated within the call
    joined = {r.id: r for r in result.accepted_records}
    assert (joined[a.id].model, joined[a.id].version, joined[a.id].true_label) == ("m", "v1", 2)
    assert joined[a.id].label == a.label and joined[a.id].delay == pytest.approx(1000.0)
    again = store.record_feedback([(a.id, 0), (c.id, 1)], t=2001.0)
    assert again.accepted == [c.id] and again.duplicate_ids == [a.id]
    assert store.lookup([a.id])[a.id].true_label == 2
    assert store.lookup([a.id])[a.id].feedback_t == 2000.0
    assert store.counts("m", "v1").labelled == 3
    with pytest.raises(ValueError, match="not an int"):
        store.record_feedback([(a.id, "x")], t=1.0)  # type: ignore[list-item]


def make_batch(
    ids: list[str], *, version: str = "v1", t: float = 1000.0, d: int | None = 3, seed: int = 0
) -> PredictionBatch:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(4), size=len(ids)).astype(np.float32)
    return PredictionBatch(
        model="m",
        version=version,
        t=t,
        ids=ids,
        labels=p.argmax(axis=1),
        confidences=p.max(axis=1),
        probabilities=p,
        anomaly_scores=rng.exponential(size=len(ids)),
        anomalous=rng.random(len(ids)) < 0.5,
        inputs=None if d is None else rng.normal(size=(len(ids), d)).astype(np.float32),
    )


def test_record_batches_round_trip(backend: Backend) -> None:
    store = backend.open(input_window=6)
    batches = [
        make_batch(store.new_ids(4), t=10.0, seed=1),
        make_batch(store.new_ids(3), version="v2", t=11.0, seed=2),
        make_batch(store.new_ids(1), t=12.0, d=None, seed=3),  # no inputs: not in the ring
        make_batch(store.new_ids(2), t=13.0, seed=4),
    ]
    store.record_batches(batches)
    store.record_batches([])
    v1 = [batches[0], batches[2], batches[3]]
    window = store.prediction_window("m", "v1", 100)
    assert window.t.tolist() == [10.0] * 4 + [12.0] + [13.0] * 2
    np.testing.assert_array_equal(window.labels, np.concatenate([b.labels for b in v1]))
    np.testing.assert_array_equal(
        window.probabilities, np.concatenate([b.probabilities for b in v1]).astype(np.float64)
    )
    np.testing.assert_array_equal(
        window.anomaly_scores, np.concatenate([b.anomaly_scores for b in v1])
    )
    np.testing.assert_array_equal(window.anomalous, np.concatenate([b.anomalous for b in v1]))
    rings = [b.inputs for b in v1 if b.inputs is not None]
    np.testing.assert_array_equal(store.input_window("m", "v1", 100), np.concatenate(rings)[-6:])
    assert store.input_window("m", "v2", 100).shape == (3, 3)
    assert store.counts("m", "v1") == Counts(7, 0) and store.counts("m", "v2") == Counts(3, 0)
    b = batches[1]
    found = store.lookup([b.ids[2]])[b.ids[2]]
    assert found == PredictionRecord(
        id=b.ids[2], model="m", version="v2", t=11.0, label=int(b.labels[2]),
        confidence=float(b.confidences[2]), probabilities=tuple(b.probabilities[2].tolist()),
        anomaly_score=float(b.anomaly_scores[2]), anomalous=bool(b.anomalous[2]),
    )  # fmt: skip
    result = store.record_feedback([(b.ids[0], 1), (batches[3].ids[1], 2)], t=50.0)
    assert [(r.version, r.label, r.t) for r in result.accepted_records] == [
        ("v2", int(b.labels[0]), 11.0),
        ("v1", int(batches[3].labels[1]), 13.0),
    ]
    labelled = store.labelled_window("m", "v1", 10)
    assert labelled.predicted.tolist() == [batches[3].labels[1]] and labelled.t.tolist() == [13.0]


def test_record_batches_is_all_or_nothing(backend: Backend) -> None:
    store = backend.open(store_inputs=True)
    existing = make_batch(store.new_ids(2), seed=1)
    store.record_batches([existing])
    ids = store.new_ids(3)
    with pytest.raises(ValueError, match="repeated"):
        store.record_batches([make_batch(ids[:2]), make_batch([ids[2], ids[0]])])
    with pytest.raises(DuplicateIdError) as info:
        store.record_batches([make_batch(ids[:2]), make_batch([ids[2], existing.ids[1]])])
    assert info.value.ids == [existing.ids[1]]
    bad = replace(make_batch([ids[2]]), labels=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"batches\[1\]\.labels"):
        store.record_batches([make_batch(ids[:2]), bad])
    assert store.lookup(ids) == {} and store.counts("m", "v1") == Counts(2, 0)
    assert len(store.input_window("m", "v1", 10)) == 2
    logged = store.lookup([existing.ids[0]])[existing.ids[0]].inputs  # store_inputs: logged
    assert existing.inputs is not None and logged == tuple(existing.inputs[0].tolist())


def test_concurrent_feedback_exactly_one_wins(backend: Backend) -> None:
    store = backend.open()
    ids = [r.id for r in record(store, 150)]
    barrier = SPAWN.Barrier(2)
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(2)]
    procs = [
        SPAWN.Process(
            target=_child_feedback, args=(backend.url, backend.home, ids, label, barrier, send)
        )
        for label, (_, send) in zip((1, 2), pipes, strict=True)
    ]
    for p in procs:
        p.start()
    won = [set(receive.recv()) for receive, _ in pipes]
    for p in procs:
        p.join(20)
    assert won[0].isdisjoint(won[1]) and won[0] | won[1] == set(ids)
    stored = store.lookup(ids)
    assert all(stored[i].true_label == (1 if i in won[0] else 2) for i in ids)
    assert store.counts("m", "v1").labelled == 150


def test_sigkilled_writer_loses_no_reported_prediction(backend: Backend) -> None:
    receive, send = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=_child_record_until_killed, args=(backend.url, backend.home, send))
    proc.start()
    reported: list[str] = []
    while len(reported) < 30 * 8:
        assert receive.poll(20), "the writer stopped reporting"
        reported += receive.recv()
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    proc.join(10)
    while receive.poll(0.1):
        reported += receive.recv()
    store = backend.open()
    assert set(store.lookup(reported)) == set(reported)
    assert store.counts("m", "v1").predictions >= len(reported)


def test_threads_share_a_store(store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(10):
                record(store, 4, seed=seed)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and store.counts("m", "v1").predictions == 160


def test_forked_child_opens_its_own_connection(backend: Backend) -> None:
    store = backend.open()
    record(store, 1)
    parent_id = _client_id(store)
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        try:
            record(store, 2, t0=50.0)
            ok = len(store.prediction_window("m", "v1", 10)) == 3
            os._exit(0 if ok and _client_id(store) != parent_id else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    record(store, 1, t0=90.0)  # the parent's connection still works
    assert len(store.prediction_window("m", "v1", 10)) == 4
    assert _client_id(store) == parent_id


def _client_id(store: StateStore) -> object:
    if RedisState is not None and isinstance(store, RedisState):
        return store._db.connection().client.client_id()  # the server's id of our connection
    return id(getattr(store._db._local, "conn", None))  # type: ignore[attr-defined]


def test_closed_store_refuses_use(backend: Backend) -> None:
    store = backend.open()
    store.get_live("m")
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StateError, match="closed"):
        store.get_live("m")
    if backend.name == "sqlite":
        assert stat.S_ISREG((backend.home / "state.sqlite3").stat().st_mode)


# -- windows --------------------------------------------------------------------------------


def test_prediction_window_is_the_last_n_oldest_first(store: StateStore) -> None:
    first = record(store, 4, t0=100.0)
    second = record(store, 3, t0=200.0)
    record(store, 5, version="v2")
    window = store.prediction_window("m", "v1", 5)
    expected = (first + second)[-5:]
    assert len(window) == 5
    assert window.t.tolist() == [r.t for r in expected]
    assert window.labels.tolist() == [r.label for r in expected]
    assert window.anomalous.tolist() == [r.anomalous for r in expected]
    assert window.anomaly_scores.tolist() == [r.anomaly_score for r in expected]
    np.testing.assert_allclose(window.probabilities, [r.probabilities for r in expected])
    np.testing.assert_allclose(window.confidences, [r.confidence for r in expected])
    assert len(store.prediction_window("m", "v1", 100)) == 7
    empty = store.prediction_window("m", "nope", 10)
    assert len(empty) == 0 and empty.probabilities.shape == (0, 0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        store.prediction_window("m", "v1", -1)


def test_labelled_window_follows_feedback_time(store: StateStore) -> None:
    recs = record(store, 5)
    store.record_feedback([(recs[3].id, 1)], t=3000.0)
    store.record_feedback([(recs[0].id, 0), (recs[4].id, 2)], t=3001.0)
    store.record_feedback([(recs[1].id, 2)], t=3002.0)
    window = store.labelled_window("m", "v1", 3)
    assert window.feedback_t.tolist() == [3001.0, 3001.0, 3002.0]
    assert window.true.tolist() == [0, 2, 2]
    assert window.predicted.tolist() == [recs[0].label, recs[4].label, recs[1].label]
    assert window.t.tolist() == [recs[0].t, recs[4].t, recs[1].t]
    assert len(store.labelled_window("m", "v1", 100)) == 4
    assert len(store.labelled_window("m", "v2", 100)) == 0


def test_input_window_is_a_bounded_ring_per_version(backend: Backend) -> None:
    store = backend.open(input_window=5)
    for batch in range(3):
        record(store, 4, features=2, t0=10.0 * batch)
    record(store, 2, features=2, version="v2", t0=99.0)
    window = store.input_window("m", "v1", 100)
    assert window.dtype == np.float64 and window.shape == (5, 2)
    assert window[:, 0].tolist() == [13.0, 20.0, 21.0, 22.0, 23.0]  # newest 5, oldest first
    assert store.input_window("m", "v1", 2)[:, 0].tolist() == [22.0, 23.0]
    assert store.input_window("m", "v2", 100).shape == (2, 2)
    assert store.input_window("m", "v3", 100).shape == (0, 0)
    big = backend.open(input_window=3)
    record(big, 7, features=2, version="v4", t0=0.0)  # one request larger than the ring
    assert big.input_window("m", "v4", 100)[:, 0].tolist() == [4.0, 5.0, 6.0]
    off = backend.open(input_window=0)
    record(off, 3, version="v5")
    assert off.input_window("m", "v5", 100).shape == (0, 0)
    per_version: dict[str, int] = {}  # the privacy bound: no more raw rows exist at all
    if isinstance(store, SQLiteState):
        with sqlite3.connect(store.path) as db:
            per_version = dict(  # rows of float32 inputs actually held in the ring's blobs
                db.execute(
                    "SELECT version, SUM(LENGTH(x) / (4 * d)) FROM ring JOIN versions "
                    "USING (vid) GROUP BY 1"
                )
            )
    elif RedisState is not None and isinstance(store, RedisState):
        client = store._db.connection().client
        for key in client.scan_iter(f"{store.prefix}*"):
            if client.type(key) == b"list" and key.endswith(b":x"):
                per_version[key.decode().split(":")[-2]] = client.llen(key)
    assert per_version == {"v1": 5, "v2": 2, "v4": 3}


def test_input_window_read_is_fast(backend: Backend) -> None:
    store = backend.open(prune_every=0)
    rng = np.random.default_rng(0)
    for start in range(0, 1000, 250):
        ids = store.new_ids(250)
        write(store, make_records(ids, t0=start), rng.random((250, 784)))
    began = time.perf_counter()
    window = store.input_window("m", "v1", 1000)
    predictions = store.prediction_window("m", "v1", 1000)
    elapsed = time.perf_counter() - began
    assert window.shape == (1000, 784) and len(predictions) == 1000
    assert elapsed < 0.25  # ~10 ms here; generous for a loaded CI machine


# -- live pointer ---------------------------------------------------------------------------


def test_live_pointer_history_and_rollback(store: StateStore) -> None:
    assert store.get_live("m") is None and store.live_marker("m").serial == 0
    with pytest.raises(NoRollbackTargetError):
        store.previous_live("m")
    for t, version in enumerate("ABC"):
        store.set_live("m", version, reason="activate", t=float(t))
    store.set_live("m", "C", reason="activate", t=9.0)  # already live: no-op
    assert store.live_marker("m").version == "C" and store.live_marker("m").serial == 3
    assert store.previous_live("m") == "B"
    assert store.rollback("m", t=10.0) == "B" and store.get_live("m") == "B"
    assert store.rollback("m", t=11.0) == "A" and store.get_live("m") == "A"
    with pytest.raises(NoRollbackTargetError, match="no earlier live version") as info:
        store.rollback("m", t=12.0)
    assert isinstance(info.value, StateError)
    assert store.get_live("m") == "A" and store.live_marker("m").serial == 5
    assert store.history("m") == [
        Switch(0.0, "A", None, "activate"),
        Switch(1.0, "B", "A", "activate"),
        Switch(2.0, "C", "B", "activate"),
        Switch(10.0, "B", "C", "rollback"),
        Switch(11.0, "A", "B", "rollback"),
    ]
    assert store.get_live("other") is None and store.history("other") == []


def test_rollback_after_reactivating_an_old_version(store: StateStore) -> None:
    for t, version in enumerate("ABA"):
        store.set_live("m", version, reason="activate", t=float(t))
    assert store.rollback("m", t=5.0) == "B"
    assert store.rollback("m", t=6.0) == "A"


def test_names_with_separators_stay_apart(store: StateStore) -> None:
    odd = record(store, 2, model="m:1%", version="v:2")
    plain = record(store, 1, model="m", version="1%:v:2")
    result = store.record_feedback([(odd[0].id, 1), (plain[0].id, 2)], t=2000.0)
    assert [(r.model, r.version) for r in result.accepted_records] == [
        ("m:1%", "v:2"),
        ("m", "1%:v:2"),
    ]
    assert store.counts("m:1%", "v:2") == Counts(2, 1)
    assert store.counts("m", "1%:v:2") == Counts(1, 1)
    assert store.labelled_window("m:1%", "v:2", 10).true.tolist() == [1]
    assert len(store.prediction_window("m:1%", "v:2", 10)) == 2
    assert store.input_window("m", "1%:v:2", 10).shape == (1, 4)
    store.set_live("m:1%", "v:2", reason="activate", t=1.0)
    assert store.get_live("m:1%") == "v:2" and store.get_live("m") is None


# -- retention ------------------------------------------------------------------------------


def test_prune_by_age(backend: Backend) -> None:
    store = backend.open(retention_seconds=100.0, prune_every=0, input_window=6)
    old = record(store, 5, t0=0.0)
    new = record(store, 5, t0=500.0)
    assert store.input_window("m", "v1", 100)[:, 0].tolist() == [4.0] + [r.t for r in new]
    assert store.prune(now=550.0) == 5
    assert set(store.lookup([r.id for r in old + new])) == {r.id for r in new}
    assert store.input_window("m", "v1", 100)[:, 0].tolist() == [r.t for r in new]
    assert store.counts("m", "v1").predictions == 10  # lifetime totals
    assert store.prune(now=550.0) == 0
    more = record(store, 3, t0=600.0)  # the ring refills up to its bound after a prune
    assert store.input_window("m", "v1", 100)[:, 0].tolist() == [r.t for r in (new + more)[-6:]]


def test_prune_by_row_count_keeps_the_newest(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_CHUNK", 1)  # SQLite deletes in chunks of 20 rows
    if redis_store is not None:
        monkeypatch.setattr(redis_store, "_CHUNK", 7)  # Redis: 7 rows per script
    store = backend.open(max_rows=20, prune_every=0)
    records = record(store, 50, t0=1000.0)
    assert store.prune(now=1000.0) == 30
    assert set(store.lookup([r.id for r in records])) == {r.id for r in records[-20:]}


def test_writers_prune_every_n_rows(backend: Backend) -> None:
    store = backend.open(max_rows=10, prune_every=15)
    record(store, 10)
    assert len(store.prediction_window("m", "v1", 100)) == 10
    record(store, 10)  # 20 rows written: pruned back to 10
    assert len(store.prediction_window("m", "v1", 100)) == 10


# -- SQLite specifics: read-only, locks, schema ---------------------------------------------


def test_read_only_url_can_read_but_not_write(tmp_path: Path) -> None:
    writer = open_backend(None, tmp_path)
    rec = record(writer, 1)[0]
    reader = open_backend("sqlite://state.sqlite3?mode=ro", tmp_path)
    assert reader.lookup([rec.id])[rec.id] == rec
    with pytest.raises(StateError, match="read-only"):
        write(reader, make_records(reader.new_ids(1)))
    with pytest.raises(StateError, match="read-only"):
        reader.set_live("m", "v1", reason="activate", t=0.0)


def test_locked_database_raises_then_recovers(tmp_path: Path) -> None:
    store = open_backend(None, tmp_path, busy_timeout=0.05)
    record(store, 1)
    other = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(StateError, match="locked"):
        record(store, 1)
    assert len(store.prediction_window("m", "v1", 10)) == 1  # WAL: reads go on
    other.execute("ROLLBACK")
    other.close()
    record(store, 1)
    assert len(store.prediction_window("m", "v1", 10)) == 2


def test_read_only_file_raises_then_recovers() -> None:
    directory = tempfile.mkdtemp(prefix="argus-ro-")  # reachable by an unprivileged user
    try:
        os.chmod(directory, 0o777)
        failure, rows = _run(_child_read_only_file, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if failure == "skip":
        pytest.skip(f"cannot act as an unprivileged user: {rows}")
    assert "cannot record predictions" in failure and "read-only" in failure
    assert rows == "2"


def test_newer_schema_or_foreign_file_is_refused(tmp_path: Path) -> None:
    record(open_backend(None, tmp_path), 1)
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match="newer than this Argus"):
        open_backend(None, tmp_path).get_live("m")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match="not a database"):
        open_backend("sqlite://junk.db", tmp_path).get_live("m")


def test_older_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("CREATE TABLE predictions (seq INTEGER PRIMARY KEY)")
    with pytest.raises(StateError, match="older Argus.*[Mm]ove the file"):
        open_backend(None, tmp_path).get_live("m")
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"schema_version", "predictions"}


def _first_use(store: StateStore, barrier: threading.Barrier, errors: list) -> None:
    barrier.wait()
    try:
        store.counts("m", "v1")
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_fresh_file_opened_by_many_threads_at_once(tmp_path: Path) -> None:
    for attempt in range(20):  # "database is locked" came in about 1 of 25 attempts
        store = open_backend(f"sqlite://fresh-{attempt}.db", tmp_path)
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_first_use, args=(store, barrier, errors)) for _ in range(6)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        store.close()
        assert not errors, errors[0]


def test_odd_ids_and_a_cut_block_survive_prune(tmp_path: Path) -> None:
    store = open_backend(None, tmp_path, max_rows=5, prune_every=0)
    odd = ["nul\x00inside", 'quote"and\\slash', "ünï cødé 🙂", "\u2028"]
    store.record_batches([make_batch(odd, t=1.0)])
    plain = store.new_ids(4)
    store.record_batches([make_batch(plain[:2], t=2.0), make_batch(plain[2:], t=3.0)])
    assert set(store.lookup(odd + plain)) == set(odd + plain)
    assert store.record_feedback([(odd[0], 1)], t=4.0).accepted == [odd[0]]
    assert store.prune(now=10.0) == 3  # the oldest 3 of 8 rows; the first block is cut
    assert set(store.lookup(odd + plain)) == {odd[3], *plain}
    window = store.prediction_window("m", "v1", 100)
    assert window.t.tolist() == [1.0, 2.0, 2.0, 3.0, 3.0]
    assert len(store.labelled_window("m", "v1", 10)) == 0  # the labelled row was pruned
    with pytest.raises(DuplicateIdError):
        store.record_batches([make_batch([odd[3]], t=5.0)])
    store.record_batches([make_batch([odd[0]], t=5.0)])  # a pruned id may come back
    assert store.prune(now=10.0) == 1 and set(store.lookup(odd)) == {odd[0]}


# -- Redis specifics: prefixes, failures, retries -------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, free to break (stop, read-only, maxmemory, password)."""
    with RedisServer(require_redis()) as server:
        yield server


def test_redis_prefixes_keep_deployments_apart(redis_server: RedisServer, tmp_path: Path) -> None:
    a = open_backend(f"{redis_server.url}?prefix=a-{uuid.uuid4().hex}:", tmp_path)
    b = open_backend(f"{redis_server.url}?prefix=b-{uuid.uuid4().hex}:", tmp_path)
    ids = [r.id for r in record(a, 3)]
    a.set_live("m", "v1", reason="activate", t=1.0)
    assert b.lookup(ids) == {} and b.counts("m", "v1") == Counts(0, 0)
    assert b.get_live("m") is None and b.record_feedback([(ids[0], 1)], 2.0).unknown_ids
    assert isinstance(a, RedisState)
    client = a._db.connection().client
    assert all(k.startswith(a.prefix.encode()) for k in client.scan_iter(f"{a.prefix}*"))


def test_redis_failures_raise_state_error_then_recover(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    import redis

    host = f"127.0.0.1:{own_redis.port}"
    store = open_backend(own_redis.url, tmp_path, busy_timeout=0.5)
    record(store, 1)
    own_redis.stop()
    with pytest.raises(StateError, match=f"Redis state at redis://{host}/0.*reachable"):
        record(store, 1)
    own_redis.start()  # same port, empty dataset: the next call reconnects
    record(store, 1)
    admin = redis.Redis(port=own_redis.port)
    admin.replicaof("127.0.0.1", 1)  # a replica of nothing: read-only
    with pytest.raises(StateError, match="read-only replica"):
        store.set_live("m", "v1", reason="activate", t=1.0)
    assert store.counts("m", "v1").predictions == 1  # reads go on
    admin.replicaof("NO", "ONE")
    admin.config_set("maxmemory", 1)
    with pytest.raises(StateError, match="maxmemory"):
        record(store, 1)
    admin.config_set("maxmemory", 0)
    record(store, 1)
    assert store.counts("m", "v1").predictions == 2
    admin.config_set("requirepass", "s3cret")
    good = open_backend(f"redis://:s3cret@{host}/0", tmp_path)
    assert good.counts("m", "v1").predictions == 2
    with pytest.raises(StateError) as info:
        open_backend(f"redis://user:wrong-pw@{host}/0?password=wrong-pw", tmp_path).get_live("m")
    assert "wrong-pw" not in str(info.value) and host in str(info.value)
    assert "check the user and password" in str(info.value)
    good.close()


def test_redis_retried_writes_report_the_first_outcome(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_backend(f"{redis_server.url}?prefix=retry-{uuid.uuid4().hex}:", tmp_path)
    assert isinstance(store, RedisState)
    records = make_records(store.new_ids(2))
    keys, args = store._record_arguments(records, np.ones((2, 3), dtype=np.float32))
    conn = store._db.connection()
    for _ in range(2):  # the same call twice (the second is the retry): applied once
        assert conn.record(keys=keys, args=args, client=conn.client) == [0]
    assert store.counts("m", "v1").predictions == 2
    assert store.input_window("m", "v1", 10).shape == (2, 3)
    with pytest.raises(DuplicateIdError):  # a new call with the same ids is a duplicate
        write(store, records)
    monkeypatch.setattr(os, "urandom", lambda n: b"\x01" * n)  # one token for two calls
    first = store.record_feedback([(records[0].id, 1)], t=5.0)
    retry = store.record_feedback([(records[0].id, 1)], t=5.0)
    assert first.accepted == retry.accepted == [records[0].id]
    assert store.counts("m", "v1").labelled == 1
    monkeypatch.undo()
    assert store.record_feedback([(records[0].id, 1)], t=6.0).duplicate_ids == [records[0].id]
    store.set_live("m", "A", reason="activate", t=1.0)  # a rollback that lost a race:
    assert store._switch("m", "B", "rollback", 2.0, expected="0") == -1  # nothing changes
    assert store.live_marker("m") == LiveMarker("A", 1) and len(store.history("m")) == 1
    for version in "BC":
        store.set_live("m", version, reason="activate", t=2.0)
    monkeypatch.setattr(os, "urandom", lambda n: b"\x02" * n)
    for _ in range(2):  # a rollback sent twice (the retry) is still one rollback
        assert store._switch("m", "B", "rollback", 3.0, expected="3") == 1
    assert store.get_live("m") == "B" and len(store.history("m")) == 4
    assert store.rollback("m", t=4.0) == "A"


def test_a_failed_prune_is_logged_and_counted_not_raised(
    backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.open(prune_every=2)
    seen: list[tuple[str, str]] = []
    store.on_error = lambda operation, exc: seen.append((operation, str(exc)))

    def refuse(now: float) -> int:
        raise StateError("no space left")

    monkeypatch.setattr(store, "prune", refuse)
    record(store, 3)  # the write commits; the prune after it fails
    assert seen == [("prune", "no space left")]
    assert "prune failed: no space left" in caplog.text
    assert store.counts("m", "v1").predictions == 3


def test_the_first_switch_records_the_version_that_served_by_default(store: StateStore) -> None:
    store.set_live("m", "A", reason="activate", t=1.0, default="B")  # B was the newest
    assert store.get_live("m") == "A" and store.previous_live("m") == "B"
    assert store.rollback("m", t=2.0) == "B"
    store.set_live("m", "C", reason="activate", t=3.0, default="Z")  # a pointer exists: no-op
    store.set_live("n", "A", reason="activate", t=4.0, default="A")  # the default itself
    assert store.history("m") == [
        Switch(1.0, "B", None, "default"),
        Switch(1.0, "A", "B", "activate"),
        Switch(2.0, "B", "A", "rollback"),
        Switch(3.0, "C", "B", "activate"),
    ]
    assert store.history("n") == [Switch(4.0, "A", None, "activate")]


def test_a_version_2_file_is_upgraded_in_place(tmp_path: Path) -> None:
    kept = record(open_backend(None, tmp_path), 2)
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:  # as Argus wrote it before
        for table in ("candidates", "leases", "figures", "docs"):  # what 3 and 4 added
            db.execute(f"DROP TABLE {table}")
        for column in ("actor", "detail"):
            db.execute(f"ALTER TABLE switches DROP COLUMN {column}")
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version VALUES (2)")
    with pytest.raises(StateError, match="open it once read-write"):
        open_backend("sqlite://state.sqlite3?mode=ro", tmp_path).get_live("m")
    store = open_backend(None, tmp_path)
    assert store.get_candidate("m") is None  # the table was added
    assert sorted(store.lookup([r.id for r in kept])) == sorted(r.id for r in kept)
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 4


def test_candidate_settings_round_trip(store: StateStore) -> None:
    assert store.get_candidate("m") is None
    shadow = Candidate("shadow", "B", 0.5, 10.0)
    store.set_candidate("m", shadow)
    assert store.get_candidate("m") == shadow and store.get_candidate("other") is None
    canary = Candidate("canary", "C", 0.25, 11.0)
    store.set_candidate("m", canary)  # one candidate per model: replaced whole
    assert store.get_candidate("m") == canary
    store.set_candidate("m", None)
    assert store.get_candidate("m") is None
    store.set_candidate("m", None)  # ending none is fine
    with pytest.raises(ValueError, match="share"):
        Candidate("shadow", "B", 0.0, 1.0)
    with pytest.raises(ValueError, match="role"):
        Candidate("mirror", "B", 1.0, 1.0)


def test_recent_ids_are_the_last_n_oldest_first(store: StateStore) -> None:
    first = record(store, 5, t0=100.0)
    second = record(store, 3, t0=200.0)
    record(store, 2, version="v2")
    ids = [r.id for r in first + second]
    assert store.recent_ids("m", "v1", 4) == ids[-4:]
    assert store.recent_ids("m", "v1", 100) == ids
    assert store.recent_ids("m", "v1", 0) == [] and store.recent_ids("m", "nope", 5) == []


def test_one_holder_of_a_lease_at_a_time(store: StateStore) -> None:
    assert store.acquire_lease("history", "a", ttl=0.5, now=100.0)
    assert not store.acquire_lease("history", "b", ttl=0.5, now=100.1)  # a holds it
    assert store.acquire_lease("history", "a", ttl=0.5, now=100.2)  # a renews
    assert store.acquire_lease("other", "b", ttl=0.5, now=100.2)  # another lease
    if isinstance(store, SQLiteState):  # SQLite compares the callers' clocks
        assert store.acquire_lease("history", "b", ttl=0.5, now=101.0)  # a's expired
    else:  # Redis expires it itself, on its own clock
        time.sleep(0.6)
        assert store.acquire_lease("history", "b", ttl=0.5, now=0.0)
    assert not store.acquire_lease("history", "a", ttl=0.5, now=101.0)


def test_figures_history_is_kept_in_order_and_bounded(store: StateStore) -> None:
    for i in range(8):
        point = FiguresPoint("m", "v1" if i < 5 else "v2", 1000.0 + 10 * i, {"accuracy": i / 10})
        store.record_figures(point, keep_seconds=1e9, keep_points=6)
    kept = store.figures_since("m", 0.0)
    assert [p.t for p in kept] == [1020.0, 1030.0, 1040.0, 1050.0, 1060.0, 1070.0]  # 6 points
    assert [p.version for p in kept] == ["v1"] * 3 + ["v2"] * 3
    assert kept[0].figures == {"accuracy": 0.2}
    assert [p.t for p in store.figures_since("m", 1055.0)] == [1060.0, 1070.0]
    store.record_figures(FiguresPoint("m", "v2", 1100.0, {"accuracy": None}), 35.0, 100)
    assert [p.t for p in store.figures_since("m", 0.0)] == [1070.0, 1100.0]  # by age
    assert store.figures_since("other", 0.0) == []


def test_switches_carry_actor_and_detail_and_can_be_fenced(store: StateStore) -> None:
    store.set_live("m", "A", reason="activate", t=1.0, actor="cli")
    detail = {"rule": "disagrees", "figures": {"agreement": 0.4}, "rows": 300}
    assert store.set_live("m", "B", reason="activate", t=2.0, actor="http")
    # the guard decided on B: a second replica acting on the same decision changes nothing
    assert store.set_live(
        "m", "A", reason="auto_rollback", t=3.0, actor="guard", detail=detail, expected_live="B"
    )
    assert not store.set_live(
        "m", "A", reason="auto_rollback", t=3.1, actor="guard", detail=detail, expected_live="B"
    )
    history = store.history("m")
    assert [(s.reason, s.actor) for s in history] == [
        ("activate", "cli"), ("activate", "http"), ("auto_rollback", "guard"),
    ]  # fmt: skip
    assert history[-1].detail == detail and history[0].detail is None
    with pytest.raises(NoRollbackTargetError):  # an automatic rollback is an undo as well
        store.previous_live("m")
    store.put_doc("guard", {"evaluated": 3.0, "failing": ["disagrees"]})
    store.put_doc("guard", {"evaluated": 4.0, "failing": []})
    assert store.get_doc("guard") == {"evaluated": 4.0, "failing": []}
    assert store.get_doc("nope") is None


def test_restore_live_sets_only_a_missing_pointer_and_one_restorer_wins(
    store: StateStore,
) -> None:
    assert store.restore_live("m", "v1", 10.0, actor="worker 1")  # no pointer: restored
    assert not store.restore_live("m", "v2", 11.0, actor="worker 2")  # one exists now
    assert store.get_live("m") == "v1"
    (entry,) = store.history("m")
    assert (entry.version, entry.previous, entry.reason, entry.actor) == (
        "v1", None, "restored", "worker 1",
    )  # fmt: skip
    store.set_live("m", "v2", "activate", 12.0)
    assert not store.restore_live("m", "v1", 13.0)  # never overrides a live pointer
    assert store.get_live("m") == "v2" and len(store.history("m")) == 2


def _restore_in_child(url: str | None, home: str, version: str, results: Any) -> None:
    state = open_backend(url, Path(home))
    try:
        results.put((version, state.restore_live("race", version, 1.0)))
    finally:
        state.close()


def test_concurrent_restorers_in_separate_processes_agree_on_one(backend: Backend) -> None:
    backend.open().close()  # the schema exists before the children race
    results = SPAWN.Queue()
    children = [
        SPAWN.Process(target=_restore_in_child, args=(backend.url, str(backend.home), v, results))
        for v in ("a", "b", "c", "d")
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    outcomes = dict(results.get(timeout=5) for _ in children)
    winners = [v for v, won in outcomes.items() if won]
    assert len(winners) == 1
    store = backend.open()
    try:
        assert store.get_live("race") == winners[0]
        assert [s.reason for s in store.history("race")] == ["restored"]
    finally:
        store.close()
