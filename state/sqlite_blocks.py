"""Writing and deleting log rows in the SQLite schema of ``state/sqlite_db.py``.

Storage is batch-oriented: rows arrive by request (``PredictionBatch``) and are stored by
block, so a row costs about one small B-tree insert (its id) and the rest is paid per
block. ``merge`` merges the successive batches of a version into blocks of up to
``_BLOCK_ROWS`` rows or about ``_BLOCK_BYTES`` bytes (inputs included; a batch is never
split), so small requests are cheap too.

Input window: each write adds, per version, the inputs of at most its newest
``input_window`` rows to ``ring`` and trims the oldest ones in the same transaction (whole
blocks, then the leading rows of the oldest kept block), so at most ``input_window`` raw
rows per version exist. ``secure_delete=FAST`` zeroes deleted rows in place where that
costs no extra I/O.

Retention (``SQLiteState.prune``, with the helpers at the end of this module) deletes in
arrival order (``seq``), which follows ``t`` up to the
workers' clock skew, so no index on ``t`` slows the hot path; row-count pruning keeps the
newest ``max_rows`` rows (the oldest block may be cut: its ``lo`` advances). Deletes run
in short transactions of 10 000 rows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic_core import to_json

from state.records import PredictionBatch

_BLOCK_ROWS = 1024  # merge puts the successive batches of a version into blocks of at most
_BLOCK_BYTES = 256 << 10  # this many rows and (about) this many bytes; no batch is split
_INSERT_BLOCK = "INSERT INTO blocks VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_IDS = "INSERT INTO ids (id, vid, block, pos) SELECT value, ?, ?, key FROM json_each(?)"
_INSERT_ID = "INSERT INTO ids (id, vid, block, pos) VALUES (?, ?, ?, ?)"
_DELETE_IDS = """
DELETE FROM ids WHERE block = ?1 AND id IN (
    SELECT value FROM json_each(?2) WHERE key >= ?3 AND key < ?4)
"""
_CUT_RING = """
UPDATE ring SET ts = substr(ts, 8 * ?1 + 1), x = substr(x, 4 * d * ?1 + 1), rows = rows - ?1
WHERE block = ?2
"""


@dataclass
class Block:
    """Rows of one version, as arrays, on their way to one ``blocks`` row."""

    model: str
    version: str
    ids: list[str]
    ts: np.ndarray  # float64 (n,)
    labels: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float64 (n,)
    scores: np.ndarray  # float64 (n,)
    anomalous: np.ndarray  # uint8 (n,)
    probabilities: np.ndarray  # float32 (n, k)
    x: np.ndarray | None = None  # float32 (n, d): logged inputs
    ring: list[np.ndarray] = field(default_factory=list)  # float32 (n, d) in parts


def merge(batches: Sequence[PredictionBatch], *, ring: bool, log_inputs: bool) -> list[Block]:
    """Check ``batches`` and merge each version's successive batches (while they have the
    same classes and input width) into blocks of at most ``_BLOCK_ROWS`` rows and about
    ``_BLOCK_BYTES`` bytes, so a version's rows keep their order; ``ring``/``log_inputs``:
    their inputs feed the ring / the log."""
    use_inputs = ring or log_inputs
    chunks: list[tuple[int, list[PredictionBatch]]] = []  # (input width, batches)
    open_: dict[tuple[str, str], tuple[int, int, int]] = {}  # version: k, d, chunk
    size: dict[int, int] = {}  # rows per chunk
    for position, b in enumerate(batches):
        if not len(b.ids):
            continue
        n, k, d = b.check(f"batches[{position}]")
        if not use_inputs:
            d = -1
        cap = max(1, min(_BLOCK_ROWS, _BLOCK_BYTES // (80 + 4 * k + 4 * max(d, 0))))
        current = open_.get((b.model, b.version))
        if current is None or current[:2] != (k, d) or size[current[2]] + n > cap:
            current = (k, d, len(chunks))  # a new block; rows of a version stay in order
            open_[(b.model, b.version)] = current
            chunks.append((d, []))
            size[current[2]] = 0
        chunks[current[2]][1].append(b)
        size[current[2]] += n
    blocks = []
    for d, chunk in chunks:
        inputs = [np.asarray(b.inputs, dtype="<f4") for b in chunk] if d >= 0 else []
        blocks.append(
            Block(
                model=chunk[0].model,
                version=chunk[0].version,
                ids=[id_ for b in chunk for id_ in b.ids],
                ts=np.repeat(
                    np.array([b.t for b in chunk], dtype="<f8"), [len(b.ids) for b in chunk]
                ),
                labels=_cat([b.labels for b in chunk], "<i8"),
                confidences=_cat([b.confidences for b in chunk], "<f8"),
                scores=_cat([b.anomaly_scores for b in chunk], "<f8"),
                anomalous=_cat([b.anomalous for b in chunk], "u1"),
                probabilities=_cat([b.probabilities for b in chunk], "<f4"),
                x=_cat(inputs, "<f4") if inputs and log_inputs else None,
                ring=inputs if ring else [],
            )
        )
    return blocks


def _cat(arrays: list, dtype: str) -> np.ndarray:
    if len(arrays) == 1:
        return np.ascontiguousarray(arrays[0], dtype=dtype)
    return np.concatenate(arrays, dtype=dtype, casting="unsafe")


def insert(conn: sqlite3.Connection, blocks: list[Block], input_window: int) -> None:
    """Write ``blocks`` in the caller's write transaction: each takes the next arrival
    numbers, its version's lifetime prediction count grows, its ids join ``ids`` and its
    inputs feed the ring of ``input_window`` rows."""
    row = conn.execute("SELECT block + n FROM blocks ORDER BY block DESC LIMIT 1").fetchone()
    ring_top = conn.execute("SELECT MAX(block) FROM ring").fetchone()[0]
    number = max(row[0] if row else 0, -1 if ring_top is None else ring_top + 1)
    totals: dict[tuple[str, str], int] = {}
    for b in blocks:
        totals[(b.model, b.version)] = totals.get((b.model, b.version), 0) + len(b.ids)
    vids: dict[tuple[str, str], int] = {}
    for (model, version), predictions in totals.items():
        vids[(model, version)] = conn.execute(
            "INSERT INTO versions (model, version, predictions, labelled) VALUES (?, ?, ?, 0) "
            "ON CONFLICT (model, version) DO UPDATE SET "
            "predictions = predictions + excluded.predictions RETURNING vid",
            (model, version, predictions),
        ).fetchone()[0]
    block_rows: list[tuple[object, ...]] = []
    id_lists: list[tuple[int, int, str]] = []
    id_rows: list[tuple[str, int, int, int]] = []
    rings: dict[int, list[tuple[int, Block]]] = {}
    for b in blocks:
        vid = vids[(b.model, b.version)]
        listed = to_json(list(b.ids)).decode()
        d = 0 if b.x is None else b.x.shape[1]
        block_rows.append(
            (number, vid, float(b.ts.max()), len(b.ids), b.probabilities.shape[1], d,
             b.ts.tobytes(), b.labels.tobytes(), b.confidences.tobytes(),
             b.scores.tobytes(), b.anomalous.tobytes(), b.probabilities.tobytes(), listed,
             None if b.x is None else b.x.tobytes())
        )  # fmt: skip
        if json_safe(listed):
            id_lists.append((vid, number, listed))
        else:
            id_rows += [(id_, vid, number, pos) for pos, id_ in enumerate(b.ids)]
        if b.ring:
            rings.setdefault(vid, []).append((number, b))
        number += len(b.ids)
    conn.executemany(_INSERT_IDS, id_lists)
    conn.executemany(_INSERT_ID, id_rows)
    conn.executemany(_INSERT_BLOCK, block_rows)
    for vid, entries in rings.items():
        push_inputs(conn, vid, entries, input_window)


def push_inputs(
    conn: sqlite3.Connection, vid: int, entries: list[tuple[int, Block]], keep: int
) -> None:
    """Add the inputs of the newest ``keep`` rows of ``entries`` (block number, block) to
    the version's ring, then drop its rows beyond that bound."""
    need = keep
    new: list[tuple[int, int, float, int, int, bytes, bytes]] = []
    for number, b in reversed(entries):
        if need <= 0:
            break
        take = min(need, len(b.ids))
        x = _cat(b.ring, "<f4")[len(b.ids) - take :]
        ts = b.ts[len(b.ids) - take :]
        new.append((number, vid, float(ts.max()), take, x.shape[1], ts.tobytes(), x.tobytes()))
        need -= take
    new.reverse()
    conn.executemany("INSERT INTO ring VALUES (?, ?, ?, ?, ?, ?, ?)", new)
    (held,) = conn.execute(
        "UPDATE versions SET ring_rows = ring_rows + ? WHERE vid = ? RETURNING ring_rows",
        (keep - need, vid),
    ).fetchone()
    excess = held - keep
    if excess <= 0:
        return
    gone: list[tuple[int]] = []
    cut: tuple[int, int] | None = None
    cursor = conn.execute("SELECT block, rows FROM ring WHERE vid = ? ORDER BY block", (vid,))
    for block, rows in cursor:  # oldest first: whole blocks, then part of one
        if rows <= excess:
            gone.append((block,))
            excess -= rows
        else:
            cut, excess = (excess, block), 0
        if excess == 0:
            break
    cursor.close()
    conn.executemany("DELETE FROM ring WHERE block = ?", gone)
    if cut is not None:
        conn.execute(_CUT_RING, cut)
    conn.execute("UPDATE versions SET ring_rows = ? WHERE vid = ?", (keep, vid))


def age_boundary(conn: sqlite3.Connection, table: str, cutoff: float) -> int | None:
    """The first seq to keep in ``table`` (blocks or ring) by age: that of the first row,
    in arrival order, stamped at or after ``cutoff`` (found by scanning only the blocks
    that go, and the one it is in), else the seq after the last row; ``None`` when the
    table is empty."""
    first = "lo" if table == "blocks" else "0"
    cursor = conn.execute(
        f"SELECT block, {first}, ts FROM {table} WHERE t_max >= ? ORDER BY block", (cutoff,)
    )
    for block, lo, ts in cursor:
        later = np.flatnonzero(np.frombuffer(ts, dtype="<f8")[lo:] >= cutoff)
        if later.size:
            cursor.close()
            return int(block + lo + later[0])
    end = "block + n" if table == "blocks" else "block + rows"
    row = conn.execute(f"SELECT {end} FROM {table} ORDER BY block DESC LIMIT 1").fetchone()
    return None if row is None else int(row[0])


def prune_log(conn: sqlite3.Connection, limit: int, budget: int) -> int:
    """Delete up to ``budget`` of the oldest log rows with seq < ``limit``; rows deleted."""
    plan: list[tuple[int, int, int, int]] = []  # block, n, lo, new lo
    cursor = conn.execute(
        "SELECT block, n, lo FROM blocks WHERE block < ? ORDER BY block", (limit,)
    )
    for block, n, lo in cursor:
        take = min(min(n, limit - block) - lo, budget)
        if take > 0:
            plan.append((block, n, lo, lo + take))
            budget -= take
        if budget <= 0:
            break
    cursor.close()
    for block, n, lo, new_lo in plan:
        (listed,) = conn.execute("SELECT ids FROM blocks WHERE block = ?", (block,)).fetchone()
        if json_safe(listed):
            conn.execute(_DELETE_IDS, (block, listed, lo, new_lo))
        else:
            gone = json.loads(listed)[lo:new_lo]
            conn.executemany(
                "DELETE FROM ids WHERE id = ? AND block = ?", [(id_, block) for id_ in gone]
            )
        if new_lo == n:
            conn.execute("DELETE FROM blocks WHERE block = ?", (block,))
        else:
            conn.execute("UPDATE blocks SET lo = ? WHERE block = ?", (new_lo, block))
    return sum(new_lo - lo for _, _, lo, new_lo in plan)


def prune_ring(conn: sqlite3.Connection, keep_from: int) -> bool:
    """Drop the ring's rows with seq < ``keep_from`` (every version); True if any."""
    changed = (
        conn.execute(
            "DELETE FROM ring WHERE block < ?1 AND block + rows <= ?1", (keep_from,)
        ).rowcount
        > 0
    )
    row = conn.execute(
        "SELECT block FROM ring WHERE block < ? ORDER BY block DESC LIMIT 1", (keep_from,)
    ).fetchone()
    if row is not None:  # the block keep_from falls in: drop its leading rows
        conn.execute(_CUT_RING, (keep_from - row[0], row[0]))
        changed = True
    return changed


def json_safe(listed: str) -> bool:
    """True when SQLite's ``json_each`` reads the JSON list of ids back exactly (it
    cannot carry NUL characters; such lists take the slower per-row path)."""
    return "\\u0000" not in listed
