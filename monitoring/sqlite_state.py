"""The embedded ``StateStore``: one SQLite file in WAL mode, shared by every local process.

Connections: one per thread per process, opened lazily (``check_same_thread=False`` only
so that ``close`` may close them all). The store remembers the pid that opened them; a
forked child finds a different pid, parks the inherited connections (kept referenced,
never used: SQLite forbids carrying a connection across fork) and opens its own. Writers
of one process take a process-local lock before SQLite's write lock, so threads queue on
a mutex rather than in SQLite's sleeping busy handler; other processes wait for up to
``busy_timeout`` seconds. Group commit (threads sharing one transaction) was measured and
left out: with the GIL, callers seldom overlap, groups averaged 1.1 requests.

Durability: each write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction, in WAL mode with
``synchronous=NORMAL``: a committed transaction is in the WAL file (the OS's page cache)
before the call returns, so it survives the process being killed; a power loss or kernel
crash may lose the last transactions (no fsync per commit).

Input window: table ``inputs`` keeps, per (model, version), only the newest
``input_window`` rows (float32 blobs); each write trims the older ones in the same
transaction (``rings`` counts the rows held), so at most that many raw rows per version
exist. ``secure_delete=FAST`` zeroes deleted rows in place where that costs no extra I/O.

Retention: ``prune`` deletes in arrival order (``seq``), which follows ``t`` up to the
workers' clock skew, so no index on ``t`` slows the hot path; row-count pruning keeps the
newest ``max_rows`` rows. Deletes run in short transactions of 10 000 rows.

Failures (read-only file, lock held past ``busy_timeout``, missing directory, corrupt
file) raise ``StateError`` naming the file and the cause. After a read-only, I/O or
open error the thread's connection is dropped, so the next call reopens and recovers as
soon as the file is writable again.
"""

from __future__ import annotations

import operator
import os
import sqlite3
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

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
    PredictionRecord,
    PredictionWindow,
    StateOptions,
    Switch,
    new_ids,
    rollback_target,
)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, model TEXT NOT NULL,
    version TEXT NOT NULL, t REAL NOT NULL, label INTEGER NOT NULL, confidence REAL NOT NULL,
    probabilities BLOB NOT NULL, anomaly_score REAL NOT NULL, anomalous INTEGER NOT NULL,
    inputs BLOB, true_label INTEGER, feedback_t REAL);
CREATE INDEX IF NOT EXISTS predictions_version ON predictions (model, version);
CREATE INDEX IF NOT EXISTS predictions_labelled ON predictions (model, version, feedback_t)
    WHERE true_label IS NOT NULL;
CREATE TABLE IF NOT EXISTS inputs (
    seq INTEGER PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, t REAL NOT NULL,
    row BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS inputs_version ON inputs (model, version);
CREATE TABLE IF NOT EXISTS rings (
    model TEXT NOT NULL, version TEXT NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS counts (
    model TEXT NOT NULL, version TEXT NOT NULL, predictions INTEGER NOT NULL,
    labelled INTEGER NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS live (
    model TEXT PRIMARY KEY, version TEXT NOT NULL, serial INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS switches (
    seq INTEGER PRIMARY KEY, model TEXT NOT NULL, t REAL NOT NULL, version TEXT NOT NULL,
    previous TEXT, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS switches_model ON switches (model);
"""
_RECORD_COLUMNS = (
    "id, model, version, t, label, confidence, probabilities, anomaly_score, anomalous, "
    "inputs, true_label, feedback_t"
)
_RECONNECT = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}
_CHUNK = 500  # ids per IN (...) query; rows per prune transaction is _CHUNK * 20
_PARKED: list[sqlite3.Connection] = []  # inherited across fork: never used, never closed


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
            uri = self.path.resolve().as_uri() + ("?mode=ro" if self.read_only else "")
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=self.options.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc
        try:
            if not self.read_only:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=FAST")
            self._ensure_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(self._describe("open", exc)) from exc
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0] if row else None
        except sqlite3.OperationalError:
            found = None
        if found is not None and found > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {found}, newer than this "
                f"Argus understands ({SCHEMA_VERSION}): upgrade Argus"
            )
        if found == SCHEMA_VERSION or self.read_only:
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _describe(self, what: str, exc: sqlite3.Error) -> str:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        hint = ""
        if code == sqlite3.SQLITE_READONLY:
            hint = " (the file, its -wal/-shm companions or its directory is read-only)"
        elif code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
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

    def record_predictions(
        self, records: Sequence[PredictionRecord], inputs: np.ndarray | None = None
    ) -> None:
        if not records:
            return
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
            raise ValueError(f"records: ids repeated within one call: {repeated[:5]}")
        rows32: np.ndarray | None = None
        if inputs is not None:
            rows32 = np.ascontiguousarray(inputs, dtype=np.float32)
            if rows32.ndim != 2 or len(rows32) != len(records):
                raise ValueError(
                    f"inputs: expected {len(records)} rows x features, got shape {rows32.shape}"
                )
        log_inputs = self.options.store_inputs and rows32 is not None
        values: list[tuple[object, ...]] = []
        for i, r in enumerate(records):
            if r.inputs is not None:
                blob: bytes | None = np.asarray(r.inputs, dtype=np.float32).tobytes()
            else:
                blob = rows32[i].tobytes() if log_inputs and rows32 is not None else None
            probs = np.asarray(r.probabilities, dtype=np.float32).tobytes()
            values.append(
                (r.id, r.model, r.version, float(r.t), int(r.label), float(r.confidence),
                 probs, float(r.anomaly_score), bool(r.anomalous), blob,
                 r.true_label, r.feedback_t)
            )  # fmt: skip
        try:
            with self._use("record predictions", write=True) as conn:
                self._insert(conn, records, values, rows32)
        except StateError as exc:
            taken = sorted(self.lookup(ids)) if _is_integrity(exc) else []
            if taken:
                raise DuplicateIdError(f"ids already recorded: {taken[:5]}", taken) from exc
            raise
        self._unpruned += len(records)
        if self.options.prune_every and self._unpruned >= self.options.prune_every:
            self._unpruned = 0
            try:
                self.prune(max(r.t for r in records))
            except StateError as exc:  # the predictions are committed: report, don't fail
                self.last_prune_error = exc

    def _insert(
        self,
        conn: sqlite3.Connection,
        records: Sequence[PredictionRecord],
        values: list[tuple[object, ...]],
        rows32: np.ndarray | None,
    ) -> None:
        conn.executemany(
            f"INSERT INTO predictions ({_RECORD_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            groups[(r.model, r.version)].append(i)
        for (model, version), index in groups.items():
            labelled = sum(records[i].true_label is not None for i in index)
            conn.execute(
                "INSERT INTO counts VALUES (?, ?, ?, ?) ON CONFLICT (model, version) "
                "DO UPDATE SET predictions = predictions + excluded.predictions, "
                "labelled = labelled + excluded.labelled",
                (model, version, len(index), labelled),
            )
            if rows32 is not None and self.options.input_window > 0:
                self._push_inputs(conn, model, version, records, rows32, index)

    def _push_inputs(
        self,
        conn: sqlite3.Connection,
        model: str,
        version: str,
        records: Sequence[PredictionRecord],
        rows32: np.ndarray,
        index: list[int],
    ) -> None:
        keep = self.options.input_window
        new = index[-keep:]
        conn.executemany(
            "INSERT INTO inputs (model, version, t, row) VALUES (?, ?, ?, ?)",
            [(model, version, float(records[i].t), rows32[i].tobytes()) for i in new],
        )
        (held,) = conn.execute(
            "INSERT INTO rings VALUES (?, ?, ?) ON CONFLICT (model, version) "
            "DO UPDATE SET rows = rows + excluded.rows RETURNING rows",
            (model, version, len(new)),
        ).fetchone()
        if held > keep:  # overwrite in order: drop the oldest rows of this version
            conn.execute(
                "DELETE FROM inputs WHERE seq IN (SELECT seq FROM inputs "
                "WHERE model = ? AND version = ? ORDER BY seq LIMIT ?)",
                (model, version, held - keep),
            )
            conn.execute(
                "UPDATE rings SET rows = ? WHERE model = ? AND version = ?", (keep, model, version)
            )

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
            for id_, label in checked:
                if id_ in seen:
                    duplicate.append(id_)
                    continue
                seen.add(id_)
                row = conn.execute(
                    "UPDATE predictions SET true_label = ?, feedback_t = ? "
                    "WHERE id = ? AND true_label IS NULL RETURNING model, version, label, t",
                    (label, float(t), id_),
                ).fetchall()
                if row:
                    model, version, predicted, t_pred = row[0]
                    accepted.append(id_)
                    joined.append(
                        FeedbackRecord(id_, model, version, predicted, label, t_pred, float(t))
                    )
                elif conn.execute("SELECT 1 FROM predictions WHERE id = ?", (id_,)).fetchone():
                    duplicate.append(id_)
                else:
                    unknown.append(id_)
            for (model, version), n in Counter((r.model, r.version) for r in joined).items():
                conn.execute(
                    "UPDATE counts SET labelled = labelled + ? WHERE model = ? AND version = ?",
                    (n, model, version),
                )
        return FeedbackResult(accepted, unknown, duplicate, joined)

    def lookup(self, ids: Sequence[str]) -> dict[str, PredictionRecord]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, PredictionRecord] = {}
        with self._use("look up predictions") as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM predictions WHERE id IN ({marks})", chunk
                ):
                    found[row[0]] = _record(row)
        return found

    # -- windows ------------------------------------------------------------------------

    def input_window(self, model: str, version: str, n: int) -> np.ndarray:
        with self._use("read the input window") as conn:
            rows = conn.execute(
                "SELECT row FROM inputs WHERE model = ? AND version = ? ORDER BY seq DESC LIMIT ?",
                (model, version, _count(n, "n")),
            ).fetchall()
        if not rows:
            return np.empty((0, 0))
        return _stack([r[0] for r in reversed(rows)], f"inputs of {model}:{version}")

    def prediction_window(self, model: str, version: str, n: int) -> PredictionWindow:
        with self._use("read the prediction window") as conn:
            rows = conn.execute(
                "SELECT label, confidence, probabilities, anomaly_score, anomalous, t "
                "FROM predictions WHERE model = ? AND version = ? ORDER BY seq DESC LIMIT ?",
                (model, version, _count(n, "n")),
            ).fetchall()
        rows.reverse()
        return PredictionWindow(
            labels=np.array([r[0] for r in rows], dtype=np.int64),
            confidences=np.array([r[1] for r in rows], dtype=np.float64),
            probabilities=_stack([r[2] for r in rows], f"probabilities of {model}:{version}"),
            anomaly_scores=np.array([r[3] for r in rows], dtype=np.float64),
            anomalous=np.array([r[4] for r in rows], dtype=bool),
            t=np.array([r[5] for r in rows], dtype=np.float64),
        )

    def labelled_window(self, model: str, version: str, m: int) -> LabelledWindow:
        with self._use("read the labelled window") as conn:
            rows = conn.execute(
                "SELECT label, true_label, t, feedback_t FROM predictions "
                "WHERE model = ? AND version = ? AND true_label IS NOT NULL "
                "ORDER BY feedback_t DESC, seq DESC LIMIT ?",
                (model, version, _count(m, "m")),
            ).fetchall()
        rows.reverse()
        return LabelledWindow(
            predicted=np.array([r[0] for r in rows], dtype=np.int64),
            true=np.array([r[1] for r in rows], dtype=np.int64),
            t=np.array([r[2] for r in rows], dtype=np.float64),
            feedback_t=np.array([r[3] for r in rows], dtype=np.float64),
        )

    def counts(self, model: str, version: str) -> Counts:
        with self._use("read counts") as conn:
            row = conn.execute(
                "SELECT predictions, labelled FROM counts WHERE model = ? AND version = ?",
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
        # skew; no index on t to keep up on the hot path.
        cutoff = float(now) - self.options.retention_seconds
        with self._use("prune") as conn:
            keep_from = _age_boundary(conn, "predictions", cutoff)
            top, bottom = conn.execute("SELECT MAX(seq), MIN(seq) FROM predictions").fetchone()
        removed = 0
        if keep_from is not None:
            limit = max(keep_from, top - self.options.max_rows + 1)  # delete seq < limit
            while bottom < limit:  # short transactions: writers wait for one chunk at most
                bottom = min(limit, bottom + _CHUNK * 20)
                with self._use("prune", write=True) as conn:
                    cursor = conn.execute("DELETE FROM predictions WHERE seq < ?", (bottom,))
                    removed += cursor.rowcount
        with self._use("prune", write=True) as conn:
            ring_from = _age_boundary(conn, "inputs", cutoff)
            if (
                ring_from
                and conn.execute("DELETE FROM inputs WHERE seq < ?", (ring_from,)).rowcount
            ):
                conn.execute(
                    "UPDATE rings SET rows = (SELECT COUNT(*) FROM inputs AS i "
                    "WHERE i.model = rings.model AND i.version = rings.version)"
                )
                conn.execute("DELETE FROM rings WHERE rows = 0")
        return removed


def _age_boundary(conn: sqlite3.Connection, table: str, cutoff: float) -> int | None:
    """The first seq to keep: the first row, in arrival order, stamped at or after cutoff
    (found by scanning only the rows that go); ``None`` for an empty table."""
    row = conn.execute(
        f"SELECT seq FROM {table} WHERE t >= ? ORDER BY seq LIMIT 1", (cutoff,)
    ).fetchone()
    if row:
        return int(row[0])
    top = conn.execute(f"SELECT MAX(seq) FROM {table}").fetchone()[0]
    return None if top is None else int(top) + 1


def _is_integrity(exc: StateError) -> bool:
    return isinstance(exc.__cause__, sqlite3.IntegrityError)


def _count(n: int, name: str) -> int:
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


def _stack(blobs: list[bytes], what: str) -> np.ndarray:
    if not blobs:
        return np.empty((0, 0))
    width = len(blobs[0])
    if any(len(b) != width for b in blobs):
        raise StateError(f"{what}: stored rows have different lengths")
    flat = np.frombuffer(b"".join(blobs), dtype=np.float32)
    return flat.reshape(len(blobs), width // 4).astype(np.float64)


def _record(row: tuple) -> PredictionRecord:
    (id_, model, version, t, label, confidence, probs, score, anomalous, inputs, true,
     feedback_t) = row  # fmt: skip
    return PredictionRecord(
        id=id_,
        model=model,
        version=version,
        t=t,
        label=label,
        confidence=confidence,
        probabilities=tuple(np.frombuffer(probs, dtype=np.float32).tolist()),
        anomaly_score=score,
        anomalous=bool(anomalous),
        inputs=None if inputs is None else tuple(np.frombuffer(inputs, np.float32).tolist()),
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
