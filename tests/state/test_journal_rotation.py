"""The journal must lose no row when its writer rotates while another process ingests.

Found by ``bench/load.py`` (60 s at 64 connections: 62 of 119,549 answered rows missing
from the log, and 13 labels reported unknown for them). ``JournaledState._ingest_file``
reads a journal's frames, stores them, and only then asks whether the file's writer is
gone; a writer that appended a frame and rotated to a new file in between has released
the owner lock, so the file is deleted with that frame unread. Deciding "gone" before
reading (a gone writer appends nothing more) closes the gap.

This test replays that interleaving deterministically: the reader's ``_store`` is the
moment the writer appends one more frame and rotates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from state.opener import open_state
from state.records import PredictionBatch
from state.shared import JournaledState


def _batch(i: int) -> PredictionBatch:
    return PredictionBatch(
        model="m",
        version="v",
        t=float(i),
        ids=[f"row-{i}"],
        labels=np.array([1]),
        confidences=np.array([0.5], dtype=np.float32),
        probabilities=np.full((1, 10), 0.1, dtype=np.float32),
        anomaly_scores=np.array([1.0]),
        anomalous=np.array([False]),
        inputs=np.zeros((1, 64), dtype=np.float32),
    )


def test_a_rotation_during_ingestion_loses_no_row(tmp_path: Path) -> None:
    writer = JournaledState(open_state(None, tmp_path).inner, tmp_path / "journal")
    reader = JournaledState(open_state(None, tmp_path).inner, tmp_path / "journal")
    for i in range(3):
        writer.record_batch(_batch(i), check_ids=False)
    store = reader._store
    fired = False

    def store_then_writer_moves_on(payloads: list[bytes]) -> int:
        nonlocal fired
        rows = store(payloads)
        if not fired:  # between the reader's read and its "is the writer gone?" check
            fired = True
            writer.record_batch(_batch(3), check_ids=False)  # into the file being ingested
            writer.journal.rotate_bytes = 0  # the next append rotates to a new file
            writer.record_batch(_batch(4), check_ids=False)
        return rows

    reader._store = store_then_writer_moves_on  # type: ignore[method-assign]
    reader.ingest()
    assert fired
    writer.close()
    reader.close()
    state = open_state(None, tmp_path)
    try:
        found = state.lookup([f"row-{i}" for i in range(5)])
    finally:
        state.close()
    assert sorted(found) == [f"row-{i}" for i in range(5)]
