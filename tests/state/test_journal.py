"""The write-behind journal: durable on return, visible to every reader, ingested once."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from errors import DuplicateIdError, StateError
from state.journal import frame, read_frames
from state.opener import open_state
from state.records import PredictionBatch
from state.shared import JournaledState


def batch(ids: list[str], version: str = "v1", seed: int = 0, d: int = 4) -> PredictionBatch:
    rng = np.random.default_rng(seed)
    n = len(ids)
    p = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    return PredictionBatch(
        model="m",
        version=version,
        t=100.0 + seed,
        ids=ids,
        labels=p.argmax(axis=1),
        confidences=p.max(axis=1),
        probabilities=p,
        anomaly_scores=rng.exponential(10, size=n),
        anomalous=rng.random(n) < 0.3,
        inputs=rng.normal(size=(n, d)).astype(np.float32),
    )


def test_encode_decode_round_trip() -> None:
    b = batch(["a", "b", "c"], seed=3)
    ((end, payload),) = list(_frames(frame(b.encode())))
    back = PredictionBatch.decode(payload)
    assert list(back.ids) == ["a", "b", "c"] and (back.model, back.version, back.t) == (
        "m",
        "v1",
        103.0,
    )
    for field in (
        "labels",
        "confidences",
        "probabilities",
        "anomaly_scores",
        "anomalous",
        "inputs",
    ):
        np.testing.assert_array_equal(getattr(back, field), getattr(b, field))


def _frames(data: bytes, tmp: Path | None = None) -> list[tuple[int, bytes]]:
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False) as fh:
        fh.write(data)
    try:
        return list(read_frames(Path(fh.name), 0))
    finally:
        os.unlink(fh.name)


def test_a_torn_or_damaged_tail_is_not_read() -> None:
    one, two = frame(batch(["a"]).encode()), frame(batch(["b"]).encode())
    assert len(_frames(one + two[:-3])) == 1
    damaged = bytearray(one + two)
    damaged[-1] ^= 0xFF
    assert len(_frames(bytes(damaged))) == 1


def test_a_recorded_batch_is_visible_to_another_reader(tmp_path: Path) -> None:
    writer = open_state(None, tmp_path)
    reader = open_state(None, tmp_path)
    b = batch(["a", "b"])
    writer.record_batch(b, check_ids=False)
    found = reader.lookup(["a", "b", "zzz"])
    assert set(found) == {"a", "b"}
    assert found["b"].label == int(b.labels[1])
    assert reader.counts("m", "v1").predictions == 2
    np.testing.assert_allclose(reader.input_window("m", "v1", 10), b.inputs)
    with pytest.raises(DuplicateIdError):
        writer.record_batch(batch(["b", "c"]))
    assert reader.counts("m", "v1").predictions == 2
    writer.close()
    reader.close()


def test_reingesting_after_a_lost_offset_changes_nothing(tmp_path: Path) -> None:
    state = open_state(None, tmp_path)
    state.record_batch(batch(["a", "b", "c"]), check_ids=False)
    assert state.counts("m", "v1").predictions == 3
    for offset in (tmp_path / "journal").glob("*.offset"):
        offset.unlink()  # as if the process died between the insert and saving progress
    fresh = open_state(None, tmp_path)
    assert fresh.counts("m", "v1").predictions == 3
    assert fresh.dropped_duplicates == 3  # seen again, recognised by id, skipped


def test_the_same_new_id_from_two_writers_is_kept_once(tmp_path: Path) -> None:
    a, b = open_state(None, tmp_path), open_state(None, tmp_path)
    a.record_batch(batch(["x", "a1"], seed=1), check_ids=False)
    b.record_batch(batch(["x", "b1"], seed=2), check_ids=False)
    assert set(a.lookup(["x", "a1", "b1"])) == {"x", "a1", "b1"}
    assert a.counts("m", "v1").predictions == 3
    assert a.dropped_duplicates + b.dropped_duplicates == 1


def _child(home: str, conn: object) -> None:
    state = open_state(None, Path(home))
    i = 0
    while True:
        ids = [f"k{i}-{j}" for j in range(3)]
        state.record_batch(batch(ids, seed=i), check_ids=False)
        conn.send(ids)  # type: ignore[attr-defined]
        i += 1


def test_sigkill_right_after_a_write_loses_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    parent, child_end = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(str(tmp_path), child_end))
    proc.start()
    reported: list[str] = []
    while len(reported) < 300:
        reported.extend(parent.recv())
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    while parent.poll():
        reported.extend(parent.recv())
    state = open_state(None, tmp_path)
    found = state.lookup(reported)
    assert len(found) == len(reported)
    # the dead writer's journal was ingested and removed
    assert not list((tmp_path / "journal").glob("journal-*.log"))


def test_rotation_retires_old_files(tmp_path: Path) -> None:
    state = open_state(None, tmp_path)
    state.journal.rotate_bytes = 1000
    for i in range(20):
        state.record_batch(batch([f"r{i}-{j}" for j in range(4)], seed=i), check_ids=False)
    files_before = len(list((tmp_path / "journal").glob("journal-*.log")))
    assert files_before > 3
    assert state.counts("m", "v1").predictions == 80
    assert len(list((tmp_path / "journal").glob("journal-*.log"))) == 1  # only the open one


def test_background_ingestion_and_close(tmp_path: Path) -> None:
    state = JournaledState(
        open_state(None, tmp_path).inner, tmp_path / "journal", ingest_every=0.05
    )
    state.start()
    state.record_batch(batch(["a"]), check_ids=False)
    for _ in range(100):
        if state.inner.counts("m", "v1").predictions == 1:
            break
        time.sleep(0.02)
    assert state.inner.counts("m", "v1").predictions == 1  # without any read ingesting
    state.close()


def test_an_id_repeated_within_one_journal_is_kept_once(tmp_path: Path) -> None:
    state = open_state(None, tmp_path)
    state.record_batch(batch(["x", "a"], seed=1), check_ids=False)
    state.record_batch(batch(["b", "x"], seed=2), check_ids=False)  # raced past the check
    assert set(state.lookup(["x", "a", "b"])) == {"x", "a", "b"}
    assert state.counts("m", "v1").predictions == 3 and state.dropped_duplicates == 1
    assert state.lookup(["x"])["x"].t == 101.0  # the first one wins
    state.close()


def test_a_failed_ingestion_is_counted_every_round_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = open_state(None, tmp_path)
    state.ingest_every = 0.0  # type: ignore[attr-defined]
    seen: list[str] = []

    def hook(operation: str, exc: StateError) -> None:
        seen.append(f"{operation}: {exc}")
        if len(seen) == 3:
            state._stop.set()  # type: ignore[attr-defined]  # ends _run after 3 rounds

    def refuse(batches: object) -> None:
        raise StateError("disk full")

    state.on_error = hook
    monkeypatch.setattr(state.inner, "record_batches", refuse)
    state.record_batch(batch(["a", "b"]), check_ids=False)  # the journal takes it
    state._run()  # type: ignore[attr-defined]  # the background loop, in this thread
    assert seen == ["ingest: disk full"] * 3
    assert caplog.text.count("journal ingestion failed") == 1
    monkeypatch.undo()
    assert sorted(state.lookup(["a", "b"])) == ["a", "b"]  # kept, ingested once it works
    state.close()
