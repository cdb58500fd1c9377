"""The embedded ``StateStore``: one SQLite file in WAL mode, shared by every local process.

Storage is batch-oriented: a request's rows are stored by block (packed arrays), so a row
costs about one small B-tree insert (its id) and the rest is paid per block. The schema,
connections and durability are described in ``state/sqlite_db.py``; how rows are
merged into blocks, how the input window stays bounded and how retention deletes are in
``state/sqlite_blocks.py``. This module answers the ``StateStore`` methods.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from errors import DuplicateIdError, StateError
from state import sqlite_blocks
from state.backend import (
    Backend,
    check_unique,
    checked_feedback,
    empty_prediction_window,
    rollback_target_of,
    window_length,
)
from state.records import Outcome, PredictionBatch, PredictionRecord
from state.sqlite_db import SCHEMA_VERSION, SQLiteFile, is_integrity
from state.types import (
    DEFAULT,
    RESTORED,
    ROLLBACK,
    Candidate,
    Counts,
    FeedbackRecord,
    FeedbackResult,
    FiguresPoint,
    LabelledWindow,
    LiveMarker,
    PredictionWindow,
    StateOptions,
    Switch,
)

__all__ = ["SCHEMA_VERSION", "SQLiteState"]

_CHUNK = 500  # ids per IN (...) query; rows per prune transaction is _CHUNK * 20
_I8 = struct.Struct("<q")
_F8 = struct.Struct("<d")
_FEEDBACK = """
UPDATE ids SET true_label = ?, feedback_t = ?,
    predicted = (SELECT substr(labels, 8 * ids.pos + 1, 8) FROM blocks WHERE block = ids.block),
    t = (SELECT substr(ts, 8 * ids.pos + 1, 8) FROM blocks WHERE block = ids.block)
WHERE id = ? AND true_label IS NULL RETURNING vid, predicted, t
"""
_LABELLED = """
SELECT predicted, true_label, t, feedback_t FROM ids
WHERE vid = ? AND true_label IS NOT NULL
ORDER BY feedback_t DESC, block DESC, pos DESC LIMIT ?
"""


class SQLiteState(Backend):
    """``StateStore`` over the SQLite file ``path`` (see the module docstring)."""

    def __init__(
        self, path: Path, options: StateOptions | None = None, *, read_only: bool = False
    ) -> None:
        super().__init__(options)
        self.path = Path(path)
        self.read_only = read_only
        self._db = SQLiteFile(self.path, self.options.busy_timeout, read_only=read_only)
        self._use = self._db.use

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- predictions and feedback -------------------------------------------------------

    def record_batches(self, batches: Sequence[PredictionBatch]) -> None:
        ring = self.options.input_window > 0
        self._write(sqlite_blocks.merge(batches, ring=ring, log_inputs=self.options.store_inputs))

    def _write(self, new: list[sqlite_blocks.Block]) -> None:
        """Store ``new`` in one transaction."""
        if not new:
            return
        ids = [id_ for b in new for id_ in b.ids]
        check_unique(ids)
        try:
            with self._use("record predictions", write=True) as conn:
                sqlite_blocks.insert(conn, new, self.options.input_window)
        except StateError as exc:
            taken = self._existing(ids) if is_integrity(exc) else []
            if taken:
                raise DuplicateIdError(f"ids already recorded: {taken[:5]}", taken) from exc
            raise
        self._written(len(ids), max(float(b.ts.max()) for b in new))

    def _existing(self, ids: Sequence[str]) -> list[str]:
        """The ids among ``ids`` already logged, sorted."""
        found: list[str] = []
        with self._use("look up predictions") as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                marks = ", ".join("?" * len(chunk))
                query = f"SELECT id FROM ids WHERE id IN ({marks})"
                found += [row[0] for row in conn.execute(query, chunk)]
        return sorted(found)

    def record_feedback(self, items: Sequence[tuple[str, int]], t: float) -> FeedbackResult:
        checked = checked_feedback(items)
        accepted: list[str] = []
        unknown: list[str] = []
        duplicate: list[str] = []
        joined: list[FeedbackRecord] = []
        with self._use("record feedback", write=True) as conn:
            seen: set[str] = set()
            names: dict[int, tuple[str, str]] = {}
            per_version: Counter[int] = Counter()
            for id_, label in checked:
                if id_ in seen:
                    duplicate.append(id_)
                    continue
                seen.add(id_)
                row = conn.execute(_FEEDBACK, (label, float(t), id_)).fetchall()
                if row:
                    vid, predicted, t_pred = row[0]
                    if vid not in names:
                        names[vid] = conn.execute(
                            "SELECT model, version FROM versions WHERE vid = ?", (vid,)
                        ).fetchone()
                    per_version[vid] += 1
                    accepted.append(id_)
                    model, version = names[vid]
                    joined.append(
                        FeedbackRecord(
                            id_, model, version, _I8.unpack(predicted)[0], label,
                            _F8.unpack(t_pred)[0], float(t),
                        )
                    )  # fmt: skip
                elif conn.execute("SELECT 1 FROM ids WHERE id = ?", (id_,)).fetchone():
                    duplicate.append(id_)
                else:
                    unknown.append(id_)
            conn.executemany(
                "UPDATE versions SET labelled = labelled + ? WHERE vid = ?",
                [(n, vid) for vid, n in per_version.items()],
            )
        return FeedbackResult(accepted, unknown, duplicate, joined)

    def lookup(self, ids: Sequence[str]) -> dict[str, PredictionRecord]:
        joined = self._with_blocks(
            ids,
            "i.id, v.model, v.version, i.block, i.pos, i.true_label, i.feedback_t",
            "k, d, ts, labels, confidences, scores, anomalous, probabilities, x",
        )
        return {row[0]: _record(row, block) for row, block in joined}

    def outcomes(self, ids: Sequence[str]) -> dict[str, Outcome]:
        joined = self._with_blocks(ids, "i.id, v.version, i.block, i.pos, i.true_label", "labels")
        return {
            id_: Outcome(version, _I8.unpack_from(block[1], 8 * pos)[0], true)
            for (id_, version, _, pos, true), block in joined
        }

    def _with_blocks(
        self, ids: Sequence[str], columns: str, block_columns: str
    ) -> list[tuple[tuple, tuple]]:
        """(row, block) of each logged id among ``ids``: ``columns`` of ``ids AS i JOIN
        versions AS v`` (``i.block`` among them), and ``block``, ``block_columns`` of its
        block, each block read once."""
        at = [c.strip() for c in columns.split(",")].index("i.block")
        wanted = list(dict.fromkeys(ids))
        joined: list[tuple[tuple, tuple]] = []
        with self._use("look up predictions") as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT {columns} FROM ids AS i JOIN versions AS v ON v.vid = i.vid "
                    f"WHERE i.id IN ({marks})",
                    chunk,
                ).fetchall()
                blocks: dict[int, tuple] = {}
                for first in range(0, len(rows), _CHUNK):
                    numbers = list({r[at] for r in rows[first : first + _CHUNK]} - set(blocks))
                    marks = ", ".join("?" * len(numbers))
                    for block in conn.execute(
                        f"SELECT block, {block_columns} FROM blocks WHERE block IN ({marks})",
                        numbers,
                    ):
                        blocks[block[0]] = block
                joined += [(r, blocks[r[at]]) for r in rows]
        return joined

    # -- windows ------------------------------------------------------------------------

    def input_window(self, model: str, version: str, n: int) -> np.ndarray:
        n = window_length(n, "n")
        parts: list[tuple[int, bytes]] = []  # newest first: (d, float32 rows)
        have = 0
        with self._use("read the input window") as conn:
            vid = _vid(conn, model, version)
            if vid is not None and n:
                cursor = conn.execute(
                    "SELECT rows, d, x FROM ring WHERE vid = ? ORDER BY block DESC", (vid,)
                )
                for rows, d, x in cursor:
                    take = min(rows, n - have)
                    parts.append((d, x[4 * d * (rows - take) :]))
                    have += take
                    if have >= n:
                        break
                cursor.close()
        if not parts:
            return np.empty((0, 0))
        d = parts[0][0]
        if any(p[0] != d for p in parts):
            raise StateError(f"inputs of {model}:{version}: stored rows have different lengths")
        flat = np.frombuffer(b"".join(p[1] for p in reversed(parts)), dtype="<f4")
        return flat.reshape(have, d).astype(np.float64)

    def prediction_window(self, model: str, version: str, n: int) -> PredictionWindow:
        n = window_length(n, "n")
        parts: list[tuple[int, tuple]] = []  # newest first: (first pos taken, block row)
        have = 0
        with self._use("read the prediction window") as conn:
            vid = _vid(conn, model, version)
            if vid is not None and n:
                cursor = conn.execute(
                    "SELECT n, lo, k, ts, labels, confidences, scores, anomalous, "
                    "probabilities FROM blocks WHERE vid = ? ORDER BY block DESC",
                    (vid,),
                )
                for row in cursor:
                    take = min(row[0] - row[1], n - have)
                    if take > 0:
                        parts.append((row[0] - take, row))
                        have += take
                    if have >= n:
                        break
                cursor.close()
        if not parts:
            return empty_prediction_window()
        parts.reverse()
        k = parts[0][1][2]
        if any(row[2] != k for _, row in parts):
            what = f"probabilities of {model}:{version}"
            raise StateError(f"{what}: stored rows have different lengths")

        def column(index: int, size: int, dtype: str) -> np.ndarray:
            data = b"".join(row[index][size * first :] for first, row in parts)
            return np.frombuffer(data, dtype=dtype)

        return PredictionWindow(
            labels=column(4, 8, "<i8").astype(np.int64),
            confidences=column(5, 8, "<f8").astype(np.float64),
            probabilities=column(8, 4 * k, "<f4").reshape(have, k).astype(np.float64),
            anomaly_scores=column(6, 8, "<f8").astype(np.float64),
            anomalous=column(7, 1, "u1").astype(bool),
            t=column(3, 8, "<f8").astype(np.float64),
        )

    def labelled_window(self, model: str, version: str, m: int) -> LabelledWindow:
        m = window_length(m, "m")
        with self._use("read the labelled window") as conn:
            vid = _vid(conn, model, version)
            rows = [] if vid is None else conn.execute(_LABELLED, (vid, m)).fetchall()
        rows.reverse()
        return LabelledWindow(
            predicted=np.frombuffer(b"".join(r[0] for r in rows), dtype="<i8").astype(np.int64),
            true=np.array([r[1] for r in rows], dtype=np.int64),
            t=np.frombuffer(b"".join(r[2] for r in rows), dtype="<f8").astype(np.float64),
            feedback_t=np.array([r[3] for r in rows], dtype=np.float64),
        )

    def counts(self, model: str, version: str) -> Counts:
        with self._use("read counts") as conn:
            row = conn.execute(
                "SELECT predictions, labelled FROM versions WHERE model = ? AND version = ?",
                (model, version),
            ).fetchone()
        return Counts(*row) if row else Counts(0, 0)

    # -- live pointer -------------------------------------------------------------------

    def live_marker(self, model: str) -> LiveMarker:
        with self._use("read the live pointer") as conn:
            row = conn.execute(
                "SELECT version, serial FROM live WHERE model = ?", (model,)
            ).fetchone()
        return LiveMarker(row[0], row[1]) if row else LiveMarker(None, 0)

    def set_live(
        self,
        model: str,
        version: str,
        reason: str,
        t: float,
        *,
        default: str | None = None,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
        expected_live: str | None = None,
    ) -> bool:
        with self._use("set the live version", write=True) as conn:
            row = conn.execute("SELECT version FROM live WHERE model = ?", (model,)).fetchone()
            if expected_live is not None and (row is None or row[0] != expected_live):
                return False  # decided on a live version that is no longer live
            if default is not None and default != version and row is None:
                self._switch(conn, model, default, DEFAULT, t)
            self._switch(conn, model, version, reason, t, actor, detail)
        return True

    def restore_live(self, model: str, version: str, t: float, *, actor: str | None = None) -> bool:
        with self._use("restore the live version", write=True) as conn:
            row = conn.execute("SELECT version FROM live WHERE model = ?", (model,)).fetchone()
            if row is not None:
                return False
            self._switch(conn, model, version, RESTORED, t, actor)
        return True

    def _switch(
        self,
        conn: sqlite3.Connection,
        model: str,
        version: str,
        reason: str,
        t: float,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        row = conn.execute("SELECT version, serial FROM live WHERE model = ?", (model,)).fetchone()
        previous, serial = row if row else (None, 0)
        if previous == version:
            return
        conn.execute(
            "INSERT INTO switches (model, t, version, previous, reason, actor, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, float(t), version, previous, reason, actor,
             None if detail is None else json.dumps(detail)),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO live VALUES (?, ?, ?) ON CONFLICT (model) DO UPDATE "
            "SET version = excluded.version, serial = excluded.serial",
            (model, version, serial + 1),
        )

    def get_candidate(self, model: str) -> Candidate | None:
        with self._use("read the candidate") as conn:
            row = conn.execute(
                "SELECT role, version, share, t FROM candidates WHERE model = ?", (model,)
            ).fetchone()
        return None if row is None else Candidate(*row)

    def set_candidate(self, model: str, candidate: Candidate | None) -> None:
        with self._use("set the candidate", write=True) as conn:
            if candidate is None:
                conn.execute("DELETE FROM candidates WHERE model = ?", (model,))
                return
            c = candidate
            conn.execute(
                "INSERT INTO candidates VALUES (?, ?, ?, ?, ?) ON CONFLICT (model) DO UPDATE "
                "SET role = excluded.role, version = excluded.version, "
                "share = excluded.share, t = excluded.t",
                (model, c.role, c.version, float(c.share), float(c.t)),
            )

    def recent_ids(self, model: str, version: str, n: int) -> list[str]:
        n = window_length(n, "n")
        parts: list[list[str]] = []  # newest block first
        have = 0
        with self._use("read recent ids") as conn:
            vid = _vid(conn, model, version)
            if vid is not None and n:
                cursor = conn.execute(
                    "SELECT lo, ids FROM blocks WHERE vid = ? ORDER BY block DESC", (vid,)
                )
                for lo, listed in cursor:
                    ids = json.loads(listed)[lo:]
                    take = ids[max(0, len(ids) - (n - have)) :]
                    parts.append(take)
                    have += len(take)
                    if have >= n:
                        break
                cursor.close()
        return [id_ for part in reversed(parts) for id_ in part]

    def labelled_ids(self, model: str, version: str, m: int) -> list[str]:
        m = window_length(m, "m")
        with self._use("read labelled ids") as conn:
            vid = _vid(conn, model, version)
            rows = (
                []
                if vid is None or not m
                else conn.execute(
                    "SELECT id FROM ids WHERE vid = ? AND true_label IS NOT NULL "
                    "ORDER BY feedback_t DESC, block DESC, pos DESC LIMIT ?",
                    (vid, m),
                ).fetchall()
            )
        return [r[0] for r in reversed(rows)]

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        with self._use("take a lease", write=True) as conn:
            row = conn.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET holder = excluded.holder, expires = excluded.expires "
                "WHERE leases.holder = excluded.holder OR leases.expires <= ? "
                "RETURNING holder",
                (name, holder, float(now) + float(ttl), float(now)),
            ).fetchone()
        return row is not None

    def record_figures(self, point: FiguresPoint, keep_seconds: float, keep_points: int) -> None:
        doc = json.dumps(point.figures, allow_nan=False)
        with self._use("record the figures' history", write=True) as conn:
            conn.execute(
                "INSERT INTO figures (model, version, t, doc) VALUES (?, ?, ?, ?)",
                (point.model, point.version, float(point.t), doc),
            )
            conn.execute(
                "DELETE FROM figures WHERE model = ? AND t < ?",
                (point.model, float(point.t) - keep_seconds),
            )
            conn.execute(
                "DELETE FROM figures WHERE model = ? AND seq <= (SELECT seq FROM figures "
                "WHERE model = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (point.model, point.model, int(keep_points)),
            )

    def figures_since(self, model: str, since: float) -> list[FiguresPoint]:
        with self._use("read the figures' history") as conn:
            rows = conn.execute(
                "SELECT version, t, doc FROM figures WHERE model = ? AND t >= ? ORDER BY t, seq",
                (model, float(since)),
            ).fetchall()
        return [FiguresPoint(model, v, t, json.loads(doc)) for v, t, doc in rows]

    def history(self, model: str) -> list[Switch]:
        with self._use("read the live history") as conn:
            return _history(conn, model)

    def rollback(
        self,
        model: str,
        t: float,
        *,
        reason: str = ROLLBACK,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        with self._use("roll back", write=True) as conn:
            target = rollback_target_of(model, _history(conn, model))
            self._switch(conn, model, target, reason, t, actor, detail)
        return target

    def put_doc(self, name: str, doc: dict[str, Any]) -> None:
        with self._use("store a document", write=True) as conn:
            conn.execute(
                "INSERT INTO docs VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                (name, json.dumps(doc, allow_nan=False)),
            )

    def get_doc(self, name: str) -> dict[str, Any] | None:
        with self._use("read a document") as conn:
            row = conn.execute("SELECT doc FROM docs WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -- retention ----------------------------------------------------------------------

    def prune(self, now: float) -> int:
        # Rows are pruned in arrival (seq) order, which follows t up to the workers' clock
        # skew; no index on t to keep up on the hot path. What goes is found by reading
        # first, so that a prune with nothing to do takes no write lock.
        cutoff = float(now) - self.options.retention_seconds
        with self._use("prune") as conn:
            keep_from = sqlite_blocks.age_boundary(conn, "blocks", cutoff)
            top = conn.execute(
                "SELECT block + n FROM blocks ORDER BY block DESC LIMIT 1"
            ).fetchone()
            bottom = conn.execute("SELECT block + lo FROM blocks ORDER BY block LIMIT 1").fetchone()
            ring_from = sqlite_blocks.age_boundary(conn, "ring", cutoff)
            ring_bottom = conn.execute("SELECT MIN(block) FROM ring").fetchone()[0]
        removed = 0
        if keep_from is not None and top is not None and bottom is not None:
            limit = max(keep_from, top[0] - self.options.max_rows)  # delete seq < limit
            budget = _CHUNK * 20
            while bottom[0] < limit:  # short transactions: writers wait for one chunk at most
                with self._use("prune", write=True) as conn:
                    step = sqlite_blocks.prune_log(conn, limit, budget)
                removed += step
                if step < budget:
                    break
        if ring_from is not None and ring_bottom is not None and ring_bottom < ring_from:
            with self._use("prune", write=True) as conn:
                # the boundary again, as of now, inside the write lock
                ring_from = sqlite_blocks.age_boundary(conn, "ring", cutoff)
                if ring_from is not None and sqlite_blocks.prune_ring(conn, ring_from):
                    conn.execute(
                        "UPDATE versions SET ring_rows = (SELECT COALESCE(SUM(rows), 0) "
                        "FROM ring WHERE ring.vid = versions.vid) WHERE ring_rows > 0"
                    )
        return removed


def _vid(conn: sqlite3.Connection, model: str, version: str) -> int | None:
    row = conn.execute(
        "SELECT vid FROM versions WHERE model = ? AND version = ?", (model, version)
    ).fetchone()
    return None if row is None else int(row[0])


def _record(row: tuple, block: tuple) -> PredictionRecord:
    id_, model, version, _, pos, true, feedback_t = row
    _, k, d, ts, labels, confidences, scores, anomalous, probs, x = block
    return PredictionRecord(
        id=id_,
        model=model,
        version=version,
        t=_F8.unpack_from(ts, 8 * pos)[0],
        label=_I8.unpack_from(labels, 8 * pos)[0],
        confidence=_F8.unpack_from(confidences, 8 * pos)[0],
        probabilities=tuple(np.frombuffer(probs, "<f4", count=k, offset=4 * k * pos).tolist()),
        anomaly_score=_F8.unpack_from(scores, 8 * pos)[0],
        anomalous=anomalous[pos] != 0,
        inputs=None if not d else tuple(np.frombuffer(x, "<f4", d, 4 * d * pos).tolist()),
        true_label=true,
        feedback_t=feedback_t,
    )


def _history(conn: sqlite3.Connection, model: str) -> list[Switch]:
    rows = conn.execute(
        "SELECT t, version, previous, reason, actor, detail FROM switches WHERE model = ? "
        "ORDER BY seq",
        (model,),
    ).fetchall()
    return [
        Switch(t, v, p, r, actor, None if detail is None else json.loads(detail))
        for t, v, p, r, actor, detail in rows
    ]
