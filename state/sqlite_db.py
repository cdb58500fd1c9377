"""One SQLite file in WAL mode, shared by every local process: connections, write
transactions, the schema, and SQLite's errors turned into ``StateError``.

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
        the live pointer, its history (with each switch's actor and, for the guard's,
        a JSON detail), the schema version.
    docs (name PRIMARY KEY, doc)
        small JSON documents one process writes for all (the guard's last evaluation).
    candidates (model PRIMARY KEY, role, version, share, t)
        each model's shadow or canary.
    leases (name PRIMARY KEY, holder, expires)
        which process does a job that one process does at a time (the history writer).
    figures (seq INTEGER PRIMARY KEY, model, version, t, doc)
        the figures' history: one JSON point per version and cadence. Index
        ``figures_model_t (model, t)``.

A database of a newer schema version is refused with a ``StateError``; an older one is
upgraded in place when its difference is only added tables (from version 2), else refused
(move the file away and a new one is made). ``state/sqlite_blocks.py`` writes and deletes
these rows; ``state/sqlite_store.py`` answers the ``StateStore`` methods from them.

Connections: one per thread per process, opened lazily (``check_same_thread=False`` only
so that ``close`` may close them all). ``SQLiteFile`` remembers the pid that opened them; a
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

Failures (read-only file, lock held past ``busy_timeout``, missing directory, corrupt
file) raise ``StateError`` naming the file and the cause. After a read-only, I/O or
open error the thread's connection is dropped, so the next call reconnects and recovers as
soon as the file is writable again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from errors import StateError

SCHEMA_VERSION = 4
_CANDIDATES = """
CREATE TABLE candidates (
    model TEXT PRIMARY KEY, role TEXT NOT NULL, version TEXT NOT NULL, share REAL NOT NULL,
    t REAL NOT NULL)"""
_FIGURES = """
ALTER TABLE switches ADD COLUMN actor TEXT;
ALTER TABLE switches ADD COLUMN detail TEXT;
CREATE TABLE docs (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE figures (
    seq INTEGER PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, t REAL NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX figures_model_t ON figures (model, t)"""
_UPGRADES = {2: _CANDIDATES, 3: _FIGURES}  # from version: the tables the next one adds
_SCHEMA = (
    """
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
    + _CANDIDATES
    + ";"
    + _FIGURES
)  # version 2's tables, then what 3 and 4 added
_RECONNECT = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_PARKED: list[sqlite3.Connection] = []  # inherited across fork: never used, never closed
_OPENING: dict[str, threading.Lock] = {}  # per file: one thread of the process opens it
_OPENING_GUARD = threading.Lock()


class SQLiteFile:
    """Connections to the SQLite file ``path``: one per thread per process (see the
    module docstring). ``use`` hands out the calling thread's connection."""

    def __init__(self, path: Path, busy_timeout: float, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._closed = False
        self._reset(os.getpid())

    def _reset(self, pid: int) -> None:
        self._pid = pid
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns
        self._write_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []

    def connection(self) -> sqlite3.Connection:
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
                    timeout=self.busy_timeout,
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
        deadline = time.monotonic() + self.busy_timeout
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
        conn.execute("PRAGMA cache_size=-512")  # 512 KiB per connection, one per thread
        found = schema_version(conn)
        if found is None and not self.read_only:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    found = schema_version(conn)  # another process may have made it
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
        while found in _UPGRADES and not self.read_only:  # additive: nothing is rewritten
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    now = schema_version(conn)
                    if now == found:
                        for statement in _UPGRADES[found].split(";"):
                            conn.execute(statement)
                        conn.execute("INSERT INTO schema_version VALUES (?)", (found + 1,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            found = schema_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {found}, newer than this "
                f"Argus understands ({SCHEMA_VERSION}): upgrade Argus"
            )
        if found in _UPGRADES:  # only a read-only opener gets here
            raise StateError(
                f"state database {self.path} has schema version {found}: open it once "
                f"read-write (any argus command) to upgrade it to {SCHEMA_VERSION}"
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
            hint = f" (another writer held it for more than {self.busy_timeout} s)"
        return f"cannot {what} in the state database {self.path}: {exc}{hint}"

    @contextmanager
    def use(self, what: str, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; with ``write``, inside one committed write transaction."""
        conn = self.connection()
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


def schema_version(conn: sqlite3.Connection) -> int | None:
    """The database's schema version; ``None`` for a database without Argus tables."""
    known = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not known:
        return None
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def is_integrity(exc: StateError) -> bool:
    """True when ``exc`` came from a constraint (an id already logged)."""
    return isinstance(exc.__cause__, sqlite3.IntegrityError)
