"""The embedded ``StateStore``: one SQLite file in WAL mode, shared by every local process.

Storage is batch-oriented: rows arrive by request (``PredictionBatch``) and are stored by
block, so a row costs about one small B-tree insert (its id) and the rest is paid per
block. ``record_batches`` merges the successive batches of a version into blocks of up to
``_BLOCK_ROWS`` rows or about ``_BLOCK_BYTES`` bytes (inputs included; a batch is never
split), so small requests are cheap too.
Schema (version 2)::

    versions (vid INTEGER PRIMARY KEY, model, version, predictions, labelled, ring_rows)
        one row per (model, version): the small ``vid`` used everywhere else, the
        lifetime counts, and how many input rows the version's ring holds
    blocks   (block INTEGER PRIMARY KEY, vid, t_max, n, lo, k, d, ts, labels,
              confidences, scores, anomalous, probabilities, ids, x)
        ``n`` log rows of one version. ``block`` is the arrival number (seq) of its first
        row, so row ``pos`` is row ``block + pos`` of the log; rows ``pos < lo`` were
        pruned. Columns are packed little-endian arrays of ``n`` entries: ``ts`` (times)
        float64, labels int64, confidences and scores float64, anomalous uint8,
        probabilities float32 ``n x k``, ``x`` the logged inputs float32 ``n x d`` (only
        with ``store_inputs`` or records carrying inputs; ``d = 0``: none); ``ids`` is
        the JSON list of the rows' ids; ``t_max`` the newest time (for prune's age scan).
        Index ``blocks_version (vid)``.
    ids      (id TEXT PRIMARY KEY, vid, block, pos, true_label, feedback_t, predicted, t)
             WITHOUT ROWID
        one slim row per logged prediction: the join of ``lookup`` and feedback. Feedback
        fills ``true_label``, ``feedback_t`` and copies the row's label and time as 8-byte
        blobs (``predicted``, ``t``), so that the partial index ``ids_labelled (vid,
        feedback_t, block, pos, true_label, predicted, t) WHERE true_label IS NOT NULL``
        alone answers the labelled window. Unlabelled rows do not touch that index.
    ring     (block INTEGER PRIMARY KEY, vid, t_max, rows, d, ts, x)
        the input window: float32 ``rows x d`` inputs (and float64 times) of the newest
        rows of one block. Index ``ring_version (vid)``.
    live, switches, schema_version
        the live pointer, its history, the schema version.

A database of another schema version is refused with a ``StateError`` (an older one: move
the file away and a new one is made).

Connections: one per thread per process, opened lazily (``check_same_thread=False`` only
so that ``close`` may close them all). The store remembers the pid that opened them; a
forked child finds a different pid, parks the inherited connections (kept referenced,
never used: SQLite forbids carrying a connection across fork) and opens its own. Writers
of one process take a process-local lock before SQLite's write lock, so threads queue on
a mutex rather than in SQLite's sleeping busy handler; other processes wait for up to
``busy_timeout`` seconds. Opening a connection (WAL mode, schema) holds a per-file lock of
the process and retries while another process holds the file's lock, so concurrent first
opens of a fresh file do not fail. Group commit (threads sharing one transaction) was
measured and left out: with the GIL, callers seldom overlap, groups averaged 1.1 requests.

Durability: each write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction, in WAL mode with
``synchronous=NORMAL``: a committed transaction is in the WAL file (the OS's page cache)
before the call returns, so it survives the process being killed; a power loss or kernel
crash may lose the last transactions (no fsync per commit).

Input window: each write adds, per version, the inputs of at most its newest
``input_window`` rows to ``ring`` and trims the oldest ones in the same transaction (whole
blocks, then the leading rows of the oldest kept block), so at most ``input_window`` raw
rows per version exist. ``secure_delete=FAST`` zeroes deleted rows in place where that
costs no extra I/O.

Retention: ``prune`` deletes in arrival order (``seq``), which follows ``t`` up to the
workers' clock skew, so no index on ``t`` slows the hot path; row-count pruning keeps the
newest ``max_rows`` rows (the oldest block may be cut: its ``lo`` advances). Deletes run
in short transactions of 10 000 rows.

Failures (read-only file, lock held past ``busy_timeout``, missing directory, corrupt
file) raise ``StateError`` naming the file and the cause. After a read-only, I/O or
open error the thread's connection is dropped, so the next call reconnects and recovers as
soon as the file is writable again.
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic_core import to_json

from models.errors import StateError
from monitoring.state import (
    ROLLBACK,
    Counts,
    DuplicateIdError,
    FeedbackRecord,
    FeedbackResult,
    LabelledWindow,
    LiveMarker,
    NoRollbackTargetError,
    PredictionBatch,
    PredictionRecord,
    PredictionWindow,
    StateOptions,
    Switch,
    new_ids,
    rollback_target,
)

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE versions (
    vid INTEGER PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL,
    predictions INTEGER NOT NULL DEFAULT 0, labelled INTEGER NOT NULL DEFAULT 0,
    ring_rows INTEGER NOT NULL DEFAULT 0, UNIQUE (model, version));
CREATE TABLE blocks (
    block INTEGER PRIMARY KEY, vid INTEGER NOT NULL, t_max REAL NOT NULL, n INTEGER NOT NULL,
    lo INTEGER NOT NULL, k INTEGER NOT NULL, d INTEGER NOT NULL, ts BLOB NOT NULL,
    labels BLOB NOT NULL, confidences BLOB NOT NULL, scores BLOB NOT NULL,
    anomalous BLOB NOT NULL, probabilities BLOB NOT NULL, ids TEXT NOT NULL, x BLOB);
CREATE INDEX blocks_version ON blocks (vid);
CREATE TABLE ids (
    id TEXT PRIMARY KEY, vid INTEGER NOT NULL, block INTEGER NOT NULL, pos INTEGER NOT NULL,
    true_label INTEGER, feedback_t REAL, predicted BLOB, t BLOB) WITHOUT ROWID;
CREATE INDEX ids_labelled ON ids (vid, feedback_t, block, pos, true_label, predicted, t)
    WHERE true_label IS NOT NULL;
CREATE TABLE ring (
    block INTEGER PRIMARY KEY, vid INTEGER NOT NULL, t_max REAL NOT NULL,
    rows INTEGER NOT NULL, d INTEGER NOT NULL, ts BLOB NOT NULL, x BLOB NOT NULL);
CREATE INDEX ring_version ON ring (vid);
CREATE TABLE live (
    model TEXT PRIMARY KEY, version TEXT NOT NULL, serial INTEGER NOT NULL);
CREATE TABLE switches (
    seq INTEGER PRIMARY KEY, model TEXT NOT NULL, t REAL NOT NULL, version TEXT NOT NULL,
    previous TEXT, reason TEXT NOT NULL);
CREATE INDEX switches_model ON switches (model);
"""
_RECONNECT = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_CHUNK = 500  # ids per IN (...) query; rows per prune transaction is _CHUNK * 20
_BLOCK_ROWS = 1024  # record_batches merges the batches of a version into blocks of at most
_BLOCK_BYTES = 256 << 10  # this many rows and (about) this many bytes; no batch is split
_PARKED: list[sqlite3.Connection] = []  # inherited across fork: never used, never closed
_OPENING: dict[str, threading.Lock] = {}  # per file: one thread of the process opens it
_OPENING_GUARD = threading.Lock()

_I8 = struct.Struct("<q")
_F8 = struct.Struct("<d")
_INSERT_BLOCK = "INSERT INTO blocks VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_IDS = "INSERT INTO ids (id, vid, block, pos) SELECT value, ?, ?, key FROM json_each(?)"
_INSERT_ID = "INSERT INTO ids (id, vid, block, pos) VALUES (?, ?, ?, ?)"
_LABEL = "UPDATE ids SET true_label = ?, feedback_t = ?, predicted = ?, t = ? WHERE id = ?"
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
_DELETE_IDS = """
DELETE FROM ids WHERE block = ?1 AND id IN (
    SELECT value FROM json_each(?2) WHERE key >= ?3 AND key < ?4)
"""
_CUT_RING = """
UPDATE ring SET ts = substr(ts, 8 * ?1 + 1), x = substr(x, 4 * d * ?1 + 1), rows = rows - ?1
WHERE block = ?2
"""


@dataclass
class _Block:
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
    labelled: list[tuple[int, int, float | None]] = field(default_factory=list)


def _merge(batches: Sequence[PredictionBatch], *, ring: bool, log_inputs: bool) -> list[_Block]:
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
            _Block(
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


class SQLiteState:
    """``StateStore`` over the SQLite file ``path`` (see the module docstring)."""

    def __init__(
        self, path: Path, options: StateOptions | None = None, *, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.options = options or StateOptions()
        self.read_only = read_only
        self.last_prune_error: StateError | None = None
        self._closed = False
        self._reset(os.getpid())

    def _reset(self, pid: int) -> None:
        self._pid = pid
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns
        self._write_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._unpruned = 0

    # -- connections and errors ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StateError(f"state store {self.path} is closed")
        pid = os.getpid()
        if pid != self._pid:  # forked: park the parent's connections, open our own
            _PARKED.extend(self._conns)
            self._reset(pid)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self.read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            resolved = self.path.resolve()
            uri = resolved.as_uri() + ("?mode=ro" if self.read_only else "")
        except OSError as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc
        with _OPENING_GUARD:
            opening = _OPENING.setdefault(str(resolved), threading.Lock())
        with opening:  # threads of this process open the file one at a time
            try:
                conn = sqlite3.connect(
                    uri,
                    uri=True,
                    timeout=self.options.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise StateError(f"cannot open the state database {self.path}: {exc}") from exc
            try:
                self._retry_busy(lambda: self._prepare(conn))
            except BaseException as exc:
                conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise StateError(self._describe("open", exc)) from exc
                raise
        return conn

    def _retry_busy(self, step: Callable[[], None]) -> None:
        """Run ``step``; while another process holds the file's lock in a way SQLite's
        busy handler does not wait for (switching to WAL, a fresh file's first
        transactions), retry for up to ``busy_timeout`` seconds."""
        deadline = time.monotonic() + self.options.busy_timeout
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not self.read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA secure_delete=FAST")
        found = _schema_version(conn)
        if found is None and not self.read_only:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    found = _schema_version(conn)  # another process may have made it
                    if found is None:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                        found = SCHEMA_VERSION
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        if found is not None and found > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {found}, newer than this "
                f"Argus understands ({SCHEMA_VERSION}): upgrade Argus"
            )
        if found is not None and found < SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {found}, written by an older "
                f"Argus; this one stores predictions differently (version {SCHEMA_VERSION}). "
                f"Move the file (and its -wal and -shm companions) away: a new one is made "
                f"at the next start (the old prediction log and live pointer are not carried "
                f"over)"
            )

    def _describe(self, what: str, exc: sqlite3.Error) -> str:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        hint = ""
        if code == sqlite3.SQLITE_READONLY:
            hint = " (the file, its -wal/-shm companions or its directory is read-only)"
        elif code in _BUSY:
            hint = f" (another writer held it for more than {self.options.busy_timeout} s)"
        return f"cannot {what} in the state database {self.path}: {exc}{hint}"

    @contextmanager
    def _use(self, what: str, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; with ``write``, inside one committed write transaction."""
        conn = self._conn()
        try:
            if write:
                if self.read_only:
                    raise StateError(f"cannot {what}: state database {self.path} is read-only")
                with self._write_lock:
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
                    conn.execute("COMMIT")
            else:
                yield conn
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if not isinstance(exc, sqlite3.Error):
                raise
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _RECONNECT:
                self._drop(conn)
            raise StateError(self._describe(what, exc)) from exc

    def _drop(self, conn: sqlite3.Connection) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            _PARKED.extend(self._conns)
        else:
            with self._lock:
                for conn in self._conns:
                    conn.close()
        self._conns = []

    def __enter__(self) -> SQLiteState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- predictions and feedback -------------------------------------------------------

    def new_ids(self, n: int) -> list[str]:
        return new_ids(n)

    def record_batches(self, batches: Sequence[PredictionBatch]) -> None:
        ring = self.options.input_window > 0
        self._write(_merge(batches, ring=ring, log_inputs=self.options.store_inputs))

    def record_predictions(
        self, records: Sequence[PredictionRecord], inputs: np.ndarray | None = None
    ) -> None:
        if not records:
            return
        rows32: np.ndarray | None = None
        if inputs is not None:
            rows32 = np.ascontiguousarray(inputs, dtype="<f4")
            if rows32.ndim != 2 or len(rows32) != len(records):
                raise ValueError(
                    f"inputs: expected {len(records)} rows x features, got shape {rows32.shape}"
                )
        self._write(self._blocks_of(records, rows32))

    def _blocks_of(
        self, records: Sequence[PredictionRecord], rows32: np.ndarray | None
    ) -> list[_Block]:
        """One block per run of records that share model, version, the number of
        classes and the width of the inputs they carry themselves."""

        def key(r: PredictionRecord) -> tuple[object, ...]:
            width = None if r.inputs is None else len(r.inputs)
            return (r.model, r.version, len(r.probabilities), width)

        ring = rows32 is not None and self.options.input_window > 0
        blocks: list[_Block] = []
        start = 0
        while start < len(records):
            first = key(records[start])
            end = start + 1
            while end < len(records) and key(records[end]) == first:
                end += 1
            run = records[start:end]
            n, k = len(run), len(run[0].probabilities)
            x = None
            if run[0].inputs is not None:  # inputs of the record itself: always logged
                x = np.array([r.inputs for r in run], dtype="<f4").reshape(n, len(run[0].inputs))
            elif self.options.store_inputs and rows32 is not None:
                x = rows32[start:end]
            blocks.append(
                _Block(
                    model=run[0].model,
                    version=run[0].version,
                    ids=[r.id for r in run],
                    ts=np.array([r.t for r in run], dtype="<f8"),
                    labels=np.array([int(r.label) for r in run], dtype="<i8"),
                    confidences=np.array([r.confidence for r in run], dtype="<f8"),
                    scores=np.array([r.anomaly_score for r in run], dtype="<f8"),
                    anomalous=np.array([bool(r.anomalous) for r in run], dtype="u1"),
                    probabilities=np.array([r.probabilities for r in run], "<f4").reshape(n, k),
                    x=x,
                    ring=[rows32[start:end]] if ring and rows32 is not None else [],
                    labelled=[
                        (pos, int(r.true_label), None if r.feedback_t is None else r.feedback_t)
                        for pos, r in enumerate(run)
                        if r.true_label is not None
                    ],
                )
            )
            start = end
        return blocks

    def _write(self, blocks: list[_Block]) -> None:
        """Store ``blocks`` in one transaction: the shared part of the record methods."""
        if not blocks:
            return
        ids = [id_ for b in blocks for id_ in b.ids]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
            raise ValueError(f"records: ids repeated within one call: {repeated[:5]}")
        try:
            with self._use("record predictions", write=True) as conn:
                self._insert(conn, blocks)
        except StateError as exc:
            taken = self._existing(ids) if _is_integrity(exc) else []
            if taken:
                raise DuplicateIdError(f"ids already recorded: {taken[:5]}", taken) from exc
            raise
        self._unpruned += len(ids)
        if self.options.prune_every and self._unpruned >= self.options.prune_every:
            self._unpruned = 0
            try:
                self.prune(max(float(b.ts.max()) for b in blocks))
            except StateError as exc:  # the predictions are committed: report, don't fail
                self.last_prune_error = exc

    def _insert(self, conn: sqlite3.Connection, blocks: list[_Block]) -> None:
        row = conn.execute("SELECT block + n FROM blocks ORDER BY block DESC LIMIT 1").fetchone()
        ring_top = conn.execute("SELECT MAX(block) FROM ring").fetchone()[0]
        number = max(row[0] if row else 0, -1 if ring_top is None else ring_top + 1)
        totals: dict[tuple[str, str], list[int]] = {}
        for b in blocks:
            total = totals.setdefault((b.model, b.version), [0, 0])
            total[0] += len(b.ids)
            total[1] += len(b.labelled)
        vids: dict[tuple[str, str], int] = {}
        for (model, version), (predictions, labelled) in totals.items():
            vids[(model, version)] = conn.execute(
                "INSERT INTO versions (model, version, predictions, labelled) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (model, version) DO UPDATE SET "
                "predictions = predictions + excluded.predictions, "
                "labelled = labelled + excluded.labelled RETURNING vid",
                (model, version, predictions, labelled),
            ).fetchone()[0]
        block_rows: list[tuple[object, ...]] = []
        id_lists: list[tuple[int, int, str]] = []
        id_rows: list[tuple[str, int, int, int]] = []
        labels: list[tuple[int, float | None, bytes, bytes, str]] = []
        rings: dict[int, list[tuple[int, _Block]]] = {}
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
            if _json_safe(listed):
                id_lists.append((vid, number, listed))
            else:
                id_rows += [(id_, vid, number, pos) for pos, id_ in enumerate(b.ids)]
            labels += [
                (true, feedback_t, b.labels[pos : pos + 1].tobytes(), b.ts[pos : pos + 1].tobytes(),
                 b.ids[pos])
                for pos, true, feedback_t in b.labelled
            ]  # fmt: skip
            if b.ring:
                rings.setdefault(vid, []).append((number, b))
            number += len(b.ids)
        conn.executemany(_INSERT_IDS, id_lists)
        conn.executemany(_INSERT_ID, id_rows)
        conn.executemany(_INSERT_BLOCK, block_rows)
        conn.executemany(_LABEL, labels)
        for vid, entries in rings.items():
            self._push_inputs(conn, vid, entries)

    def _push_inputs(
        self, conn: sqlite3.Connection, vid: int, entries: list[tuple[int, _Block]]
    ) -> None:
        """Add the inputs of the newest ``input_window`` rows of ``entries`` (block
        number, block) to the version's ring, then drop its rows beyond that bound."""
        keep = self.options.input_window
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
        checked = []
        for position, (id_, label) in enumerate(items):
            try:
                checked.append((str(id_), operator.index(label)))
            except TypeError:
                raise ValueError(f"items[{position}]: label {label!r} is not an int") from None
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
        wanted = list(dict.fromkeys(ids))
        found: dict[str, PredictionRecord] = {}
        with self._use("look up predictions") as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT i.id, v.model, v.version, i.block, i.pos, i.true_label, "
                    "i.feedback_t FROM ids AS i JOIN versions AS v ON v.vid = i.vid "
                    f"WHERE i.id IN ({marks})",
                    chunk,
                ).fetchall()
                blocks: dict[int, tuple] = {}
                for first in range(0, len(rows), _CHUNK):  # each block is read once
                    numbers = list({r[3] for r in rows[first : first + _CHUNK]} - set(blocks))
                    marks = ", ".join("?" * len(numbers))
                    for block in conn.execute(
                        "SELECT block, k, d, ts, labels, confidences, scores, anomalous, "
                        f"probabilities, x FROM blocks WHERE block IN ({marks})",
                        numbers,
                    ):
                        blocks[block[0]] = block
                for r in rows:
                    found[r[0]] = _record(r, blocks[r[3]])
        return found

    # -- windows ------------------------------------------------------------------------

    def input_window(self, model: str, version: str, n: int) -> np.ndarray:
        n = _count(n, "n")
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
        n = _count(n, "n")
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
            return PredictionWindow(
                labels=np.empty(0, dtype=np.int64),
                confidences=np.empty(0),
                probabilities=np.empty((0, 0)),
                anomaly_scores=np.empty(0),
                anomalous=np.empty(0, dtype=bool),
                t=np.empty(0),
            )
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
        m = _count(m, "m")
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

    def get_live(self, model: str) -> str | None:
        return self.live_marker(model).version

    def live_marker(self, model: str) -> LiveMarker:
        with self._use("read the live pointer") as conn:
            row = conn.execute(
                "SELECT version, serial FROM live WHERE model = ?", (model,)
            ).fetchone()
        return LiveMarker(row[0], row[1]) if row else LiveMarker(None, 0)

    def set_live(self, model: str, version: str, reason: str, t: float) -> None:
        with self._use("set the live version", write=True) as conn:
            self._switch(conn, model, version, reason, t)

    def _switch(
        self, conn: sqlite3.Connection, model: str, version: str, reason: str, t: float
    ) -> None:
        row = conn.execute("SELECT version, serial FROM live WHERE model = ?", (model,)).fetchone()
        previous, serial = row if row else (None, 0)
        if previous == version:
            return
        conn.execute(
            "INSERT INTO switches (model, t, version, previous, reason) VALUES (?, ?, ?, ?, ?)",
            (model, float(t), version, previous, reason),
        )
        conn.execute(
            "INSERT INTO live VALUES (?, ?, ?) ON CONFLICT (model) DO UPDATE "
            "SET version = excluded.version, serial = excluded.serial",
            (model, version, serial + 1),
        )

    def history(self, model: str) -> list[Switch]:
        with self._use("read the live history") as conn:
            return _history(conn, model)

    def previous_live(self, model: str) -> str:
        return _target(model, self.history(model))

    def rollback(self, model: str, t: float) -> str:
        with self._use("roll back", write=True) as conn:
            target = _target(model, _history(conn, model))
            self._switch(conn, model, target, ROLLBACK, t)
        return target

    # -- retention ----------------------------------------------------------------------

    def prune(self, now: float) -> int:
        # Rows are pruned in arrival (seq) order, which follows t up to the workers' clock
        # skew; no index on t to keep up on the hot path. What goes is found by reading
        # first, so that a prune with nothing to do takes no write lock.
        cutoff = float(now) - self.options.retention_seconds
        with self._use("prune") as conn:
            keep_from = _age_boundary(conn, "blocks", cutoff)
            top = conn.execute(
                "SELECT block + n FROM blocks ORDER BY block DESC LIMIT 1"
            ).fetchone()
            bottom = conn.execute("SELECT block + lo FROM blocks ORDER BY block LIMIT 1").fetchone()
            ring_from = _age_boundary(conn, "ring", cutoff)
            ring_bottom = conn.execute("SELECT MIN(block) FROM ring").fetchone()[0]
        removed = 0
        if keep_from is not None and top is not None and bottom is not None:
            limit = max(keep_from, top[0] - self.options.max_rows)  # delete seq < limit
            budget = _CHUNK * 20
            while bottom[0] < limit:  # short transactions: writers wait for one chunk at most
                with self._use("prune", write=True) as conn:
                    step = _prune_log(conn, limit, budget)
                removed += step
                if step < budget:
                    break
        if ring_from is not None and ring_bottom is not None and ring_bottom < ring_from:
            with self._use("prune", write=True) as conn:
                ring_from = _age_boundary(conn, "ring", cutoff)  # as of now, in the lock
                if ring_from is not None and _prune_ring(conn, ring_from):
                    conn.execute(
                        "UPDATE versions SET ring_rows = (SELECT COALESCE(SUM(rows), 0) "
                        "FROM ring WHERE ring.vid = versions.vid) WHERE ring_rows > 0"
                    )
        return removed


def _age_boundary(conn: sqlite3.Connection, table: str, cutoff: float) -> int | None:
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


def _prune_log(conn: sqlite3.Connection, limit: int, budget: int) -> int:
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
        if _json_safe(listed):
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


def _prune_ring(conn: sqlite3.Connection, keep_from: int) -> bool:
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


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """The database's schema version; ``None`` for a database without Argus tables."""
    known = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not known:
        return None
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _vid(conn: sqlite3.Connection, model: str, version: str) -> int | None:
    row = conn.execute(
        "SELECT vid FROM versions WHERE model = ? AND version = ?", (model, version)
    ).fetchone()
    return None if row is None else int(row[0])


def _json_safe(listed: str) -> bool:
    """True when SQLite's ``json_each`` reads the JSON list of ids back exactly (it
    cannot carry NUL characters; such lists take the slower per-row path)."""
    return "\\u0000" not in listed


def _is_integrity(exc: StateError) -> bool:
    return isinstance(exc.__cause__, sqlite3.IntegrityError)


def _count(n: int, name: str) -> int:
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


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
        "SELECT t, version, previous, reason FROM switches WHERE model = ? ORDER BY seq",
        (model,),
    ).fetchall()
    return [Switch(*row) for row in rows]


def _target(model: str, history: list[Switch]) -> str:
    target = rollback_target(history)
    if target is None:
        raise NoRollbackTargetError(f"model {model!r} has no earlier live version to roll back to")
    return target
