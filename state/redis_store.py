"""The networked ``StateStore``: one Redis shared by every worker of every replica.

Selected by ``open_state("redis://[user:password@]host:port/db[?prefix=argus:]", home)``
(``rediss://`` for TLS). Every key starts with ``prefix`` (default ``argus:``), so several
deployments can share one Redis; ``:`` and ``%`` in model and version names are escaped::

    {P}seq                 counter: arrival order of every logged row
    {P}log                 list of ids, oldest first: what ``prune`` walks
    {P}p:{id}              hash, one logged row: m, v, s (seq), w (packed t, label,
                           confidence, anomaly score, flag), q (float32 probabilities),
                           x (float32 inputs, optional), y, f, lm (once labelled)
    {P}v:{model}:{version}:p   list of the version's ids, oldest first
    {P}v:{model}:{version}:l   sorted set of labelled rows by feedback time; each member
                               packs seq (the tie-break), t, label, true label, feedback t
    {P}v:{model}:{version}:x   list: the input ring, float64 t + float32 row per entry
    {P}v:{model}:{version}:c   hash: lifetime counts p (predictions) and l (labelled)
    {P}rings               set of ring keys, for pruning by age
    {P}live:{model}        hash: version, serial
    {P}hist:{model}        list of switches (JSON), oldest first

Atomicity: each write is one Lua script, which Redis runs alone. ``record_batches`` (all its
batches as one list of records) checks every id and then writes
rows, indexes, counts and the ring in one round trip (nothing is written when an id exists);
``record_feedback`` sets the label only on rows without one, so of two processes labelling
one id exactly one wins; ``set_live`` and ``rollback`` compare the history length before
switching (optimistic: a rollback that lost a race re-reads the history and retries). A
request that loses its connection is retried once; a random token stored with the rows,
labels or switch it wrote makes that retry report the first attempt's outcome (not a
duplicate, not a second rollback).

Retention: ``prune`` walks ``{P}log`` from the oldest row in chunks of ``_CHUNK`` rows per
script (so Redis never blocks for long), dropping rows beyond the newest ``max_rows`` and
rows older than ``retention_seconds`` up to the first one that is not, in arrival order
like the SQLite backend; the input rings drop their leading rows older than that too.

Memory: about 350 bytes per logged row (10 classes, inputs not logged) and 270 more once
labelled, so the default ``max_rows`` of a million needs well under 1 GB; each input ring
holds ``input_window`` rows of 4 bytes per feature. Values stay under 64 bytes where they
can, so Redis keeps each row in its compact listpack encoding.

Durability: a call returns once Redis has applied the script in memory, so a killed Argus
process loses nothing it reported. What survives a Redis restart or a power loss depends
on Redis's persistence: with ``appendonly yes`` and ``appendfsync everysec`` at most about
one second of writes; with RDB snapshots only, everything since the last snapshot; with
neither, everything. Configure Redis accordingly.

Connections, forks and error messages: ``state/redis_db.py``.
"""

from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from errors import DuplicateIdError, StateError
from state.backend import (
    Backend,
    check_unique,
    checked_feedback,
    empty_prediction_window,
    rollback_target_of,
    window_length,
)
from state.records import Outcome, PredictionBatch, PredictionRecord
from state.redis_db import RedisDB
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

_CHUNK = 1000  # log rows removed per prune script
_SWITCH_TRIES = 50

_W = struct.Struct("<dqddB")  # t, label, confidence, anomaly_score, anomalous
_T = struct.Struct("<d")
_Q = struct.Struct("<q")
_LABELLED = np.dtype(
    [("seq", "S16"), ("t", "<f8"), ("label", "<i8"), ("true", "<i8"), ("feedback_t", "<f8")]
)


class RedisState(Backend):
    """``StateStore`` over the Redis at ``url`` (see the module docstring)."""

    def __init__(
        self, url: str, options: StateOptions | None = None, *, prefix: str | None = None
    ) -> None:
        super().__init__(options)
        self._db = RedisDB(url, self.options, prefix)
        self.display_url = self._db.display_url
        self.prefix = self._db.prefix

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RedisState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _version_key(self, model: str, version: str) -> str:
        return f"{self.prefix}v:{_escape(model)}:{_escape(version)}:"

    # -- predictions and feedback -------------------------------------------------------

    def record_batches(self, batches: Sequence[PredictionBatch]) -> None:
        """Every batch's rows in one script (all or nothing)."""
        records: list[PredictionRecord] = []
        rows: list[np.ndarray | None] = []
        for position, batch in enumerate(batches):
            n, _, _ = batch.check(f"batches[{position}]")
            if batch.inputs is None:
                rows += [None] * n
            else:
                rows += list(np.ascontiguousarray(batch.inputs, dtype=np.float32))
            records += batch.records()
        has_inputs = any(r is not None for r in rows)
        self._record(records, rows if has_inputs else None)

    def _record(
        self,
        records: Sequence[PredictionRecord],
        rows32: np.ndarray | Sequence[np.ndarray | None] | None,
    ) -> None:
        if not records:
            return
        check_unique([r.id for r in records])
        keys, args = self._record_arguments(records, rows32)
        with self._db.use("record predictions") as conn:
            result = conn.write(conn.record, keys, args)
        if result[0] == 1:
            taken = sorted(i.decode() for i in result[1:])
            raise DuplicateIdError(f"ids already recorded: {taken[:5]}", taken)
        self._written(len(records), max(r.t for r in records))

    def _record_arguments(
        self,
        records: Sequence[PredictionRecord],
        rows32: np.ndarray | Sequence[np.ndarray | None] | None,
    ) -> tuple[list[Any], list[Any]]:
        """Keys and arguments of the record script; ``rows32[i]`` (float32, or ``None``
        when the row brought no inputs) is row i's input row."""
        log_inputs = self.options.store_inputs and rows32 is not None
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            groups[(r.model, r.version)].append(i)
        number = {key: g for g, key in enumerate(groups, 1)}
        p = self.prefix
        keys: list[Any] = [p + "seq", p + "log", p + "rings"]
        keys += [f"{p}p:{r.id}" for r in records]
        args: list[Any] = [len(records), len(groups), self.options.input_window, os.urandom(8)]
        for i, r in enumerate(records):
            t, label = float(r.t), int(r.label)
            w = _W.pack(t, label, float(r.confidence), float(r.anomaly_score), bool(r.anomalous))
            q = np.asarray(r.probabilities, dtype=np.float32).tobytes()
            flags, x = "", b""
            if log_inputs and rows32 is not None and (row := rows32[i]) is not None:
                flags, x = "x", row.tobytes()
            args += [r.id, number[(r.model, r.version)], w, q, flags, x]
        keep = self.options.input_window
        for (model, version), index in groups.items():
            base = self._version_key(model, version)
            keys += [base + "p", base + "c", base + "x"]
            ring = []
            if rows32 is not None and keep > 0:
                with_rows = [(i, row) for i in index if (row := rows32[i]) is not None]
                ring = [
                    _T.pack(float(records[i].t)) + row.tobytes() for i, row in with_rows[-keep:]
                ]
            args += [model, version, len(ring), *ring]
        return keys, args

    def record_feedback(self, items: Sequence[tuple[str, int]], t: float) -> FeedbackResult:
        checked = checked_feedback(items)
        first = dict(reversed(checked))  # the first label of each id
        distinct = list(dict.fromkeys(id_ for id_, _ in checked))
        outcome: dict[str, list[bytes]] = {}
        if distinct:
            args: list[Any] = [self.prefix, repr(float(t)), os.urandom(8), _T.pack(float(t))]
            for id_ in distinct:
                args += [first[id_], _Q.pack(first[id_])]
            keys = [f"{self.prefix}p:{id_}" for id_ in distinct]
            with self._db.use("record feedback") as conn:
                replies = conn.write(conn.feedback, keys, args)
            outcome = dict(zip(distinct, replies, strict=True))
        accepted: list[str] = []
        unknown: list[str] = []
        duplicate: list[str] = []
        joined: list[FeedbackRecord] = []
        seen: set[str] = set()
        for id_, label in checked:
            if id_ in seen:
                duplicate.append(id_)
                continue
            seen.add(id_)
            reply = outcome[id_]
            if reply[0] == b"a":
                t_pred, predicted = struct.unpack("<dq", reply[3])
                accepted.append(id_)
                model, version = reply[1].decode(), reply[2].decode()
                joined.append(
                    FeedbackRecord(id_, model, version, predicted, label, t_pred, float(t))
                )
            elif reply[0] == b"d":
                duplicate.append(id_)
            else:
                unknown.append(id_)
        return FeedbackResult(accepted, unknown, duplicate, joined)

    def lookup(self, ids: Sequence[str]) -> dict[str, PredictionRecord]:
        found = self._fields(ids, "m", "v", "w", "q", "x", "y", "f")
        return {id_: _record(id_, row) for id_, row in found}

    def outcomes(self, ids: Sequence[str]) -> dict[str, Outcome]:
        return {
            id_: Outcome(v.decode(), _W.unpack_from(w)[1], None if y is None else int(y))
            for id_, (v, w, y) in self._fields(ids, "v", "w", "y")
        }

    def _fields(self, ids: Sequence[str], *fields: str) -> list[tuple[str, list[Any]]]:
        """``fields`` of each logged id among ``ids`` (the first field is always set)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        with self._db.use("look up predictions") as conn:
            pipe = conn.client.pipeline(transaction=False)
            for id_ in wanted:
                pipe.hmget(f"{self.prefix}p:{id_}", *fields)
            rows = pipe.execute()
        return [(id_, row) for id_, row in zip(wanted, rows, strict=True) if row[0] is not None]

    # -- windows ------------------------------------------------------------------------

    def _last(self, what: str, script: str, key: str, n: int, item: str) -> tuple[int, bytes]:
        """The last ``n`` entries under ``key`` as (width, concatenated bytes)."""
        if n == 0:
            return 0, b""
        with self._db.use(what) as conn:
            args: list[Any] = [n, self.prefix]
            count, width, blob = getattr(conn, script)(keys=[key], args=args, client=conn.client)
        if width < 0:
            raise StateError(f"{item}: stored rows have different lengths")
        return (int(width), blob) if count else (0, b"")

    def input_window(self, model: str, version: str, n: int) -> np.ndarray:
        n = window_length(n, "n")
        entries: list[bytes] = []
        if n:
            with self._db.use("read the input window") as conn:
                entries = conn.client.lrange(self._version_key(model, version) + "x", -n, -1)
        if not entries:
            return np.empty((0, 0))
        width = len(entries[0])
        if any(len(e) != width for e in entries):
            raise StateError(f"inputs of {model}:{version}: stored rows have different lengths")
        d = (width - _T.size) // 4
        rows = np.frombuffer(b"".join(entries), np.dtype([("t", "<f8"), ("x", "<f4", (d,))]))
        return rows["x"].astype(np.float64).reshape(len(rows), d)

    def prediction_window(self, model: str, version: str, n: int) -> PredictionWindow:
        key = self._version_key(model, version) + "p"
        what = f"probabilities of {model}:{version}"
        width, blob = self._last(
            "read the prediction window", "window", key, window_length(n, "n"), what
        )
        if not blob:
            return empty_prediction_window()
        k = (width - _W.size) // 4
        rows = np.frombuffer(blob, _window_dtype(k))
        return PredictionWindow(
            labels=rows["label"].astype(np.int64),
            confidences=rows["confidence"].astype(np.float64),
            probabilities=rows["probabilities"].astype(np.float64).reshape(len(rows), k),
            anomaly_scores=rows["score"].astype(np.float64),
            anomalous=rows["anomalous"].astype(bool),
            t=rows["t"].astype(np.float64),
        )

    def labelled_window(self, model: str, version: str, m: int) -> LabelledWindow:
        key = self._version_key(model, version) + "l"
        what = f"labels of {model}:{version}"
        width, blob = self._last(
            "read the labelled window", "last_zset", key, window_length(m, "m"), what
        )
        if blob and width != _LABELLED.itemsize:
            raise StateError(f"{what}: stored entries are malformed")
        rows = np.frombuffer(blob, _LABELLED)
        return LabelledWindow(
            predicted=rows["label"].astype(np.int64),
            true=rows["true"].astype(np.int64),
            t=rows["t"].astype(np.float64),
            feedback_t=rows["feedback_t"].astype(np.float64),
        )

    def counts(self, model: str, version: str) -> Counts:
        with self._db.use("read counts") as conn:
            p, lab = conn.client.hmget(self._version_key(model, version) + "c", "p", "l")
        return Counts(int(p or 0), int(lab or 0))

    # -- live pointer -------------------------------------------------------------------

    def live_marker(self, model: str) -> LiveMarker:
        with self._db.use("read the live pointer") as conn:
            version, serial = conn.client.hmget(
                f"{self.prefix}live:{_escape(model)}", "version", "serial"
            )
        return LiveMarker(None if version is None else version.decode(), int(serial or 0))

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
        if default is not None and default != version:  # only while the history is empty
            self._switch(model, default, DEFAULT, t, expected="0")
        done = self._switch(
            model, version, reason, t, "", actor=actor, detail=detail, expected_live=expected_live
        )
        return done >= 0

    def restore_live(self, model: str, version: str, t: float, *, actor: str | None = None) -> bool:
        return self._switch(model, version, RESTORED, t, "", actor=actor, if_absent=True) > 0

    def _switch(
        self,
        model: str,
        version: str,
        reason: str,
        t: float,
        expected: str,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
        expected_live: str | None = None,
        if_absent: bool = False,
    ) -> int:
        keys = [f"{self.prefix}live:{_escape(model)}", f"{self.prefix}hist:{_escape(model)}"]
        with self._db.use("set the live version") as conn:
            args: list[Any] = [version, reason, repr(float(t)), expected, os.urandom(8).hex()]
            args += [actor or "", "" if detail is None else json.dumps(detail, allow_nan=False)]
            args += [expected_live or "", "1" if if_absent else ""]
            return int(conn.write(conn.switch, keys, args))

    def put_doc(self, name: str, doc: dict[str, Any]) -> None:
        with self._db.use("store a document") as conn:
            conn.client.set(f"{self.prefix}doc:{_escape(name)}", json.dumps(doc, allow_nan=False))

    def get_doc(self, name: str) -> dict[str, Any] | None:
        with self._db.use("read a document") as conn:
            found = conn.client.get(f"{self.prefix}doc:{_escape(name)}")
        return None if found is None else dict(json.loads(found))

    def get_candidate(self, model: str) -> Candidate | None:
        with self._db.use("read the candidate") as conn:
            found = conn.client.hgetall(f"{self.prefix}cand:{_escape(model)}")
        if not found:
            return None
        d = {k.decode(): v.decode() for k, v in found.items()}
        return Candidate(d["role"], d["version"], float(d["share"]), float(d["t"]))

    def set_candidate(self, model: str, candidate: Candidate | None) -> None:
        key = f"{self.prefix}cand:{_escape(model)}"
        with self._db.use("set the candidate") as conn:
            if candidate is None:
                conn.client.delete(key)
                return
            c = candidate
            fields = {"role": c.role, "version": c.version, "share": repr(float(c.share))}
            pipe = conn.client.pipeline(transaction=True)  # MULTI: replaced as a whole
            pipe.delete(key)
            pipe.hset(key, mapping={**fields, "t": repr(float(c.t))})
            pipe.execute()

    def recent_ids(self, model: str, version: str, n: int) -> list[str]:
        n = window_length(n, "n")
        if not n:
            return []
        with self._db.use("read recent ids") as conn:
            ids = conn.client.lrange(self._version_key(model, version) + "p", -n, -1)
        return [i.decode() for i in ids]

    def labelled_ids(self, model: str, version: str, m: int) -> list[str]:
        m = window_length(m, "m")
        if not m:
            return []
        with self._db.use("read labelled ids") as conn:
            ids = conn.client.zrevrange(self._version_key(model, version) + "li", 0, m - 1)
        return [i.decode() for i in reversed(ids)]

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Redis expires the lease itself (``PX``); ``now`` is not needed."""
        key = f"{self.prefix}lease:{_escape(name)}"
        with self._db.use("take a lease") as conn:
            return bool(
                conn.lease(keys=[key], args=[holder, max(1, int(ttl * 1000))], client=conn.client)
            )

    def record_figures(self, point: FiguresPoint, keep_seconds: float, keep_points: int) -> None:
        key = f"{self.prefix}fig:{_escape(point.model)}"
        member = json.dumps(
            {"v": point.version, "f": point.figures, "n": os.urandom(4).hex()}, allow_nan=False
        )
        with self._db.use("record the figures' history") as conn:
            pipe = conn.client.pipeline(transaction=True)
            pipe.zadd(key, {member: float(point.t)})
            pipe.zremrangebyscore(key, "-inf", f"({float(point.t) - keep_seconds!r}")
            pipe.zremrangebyrank(key, 0, -int(keep_points) - 1)
            pipe.execute()

    def figures_since(self, model: str, since: float) -> list[FiguresPoint]:
        key = f"{self.prefix}fig:{_escape(model)}"
        with self._db.use("read the figures' history") as conn:
            found = conn.client.zrangebyscore(key, repr(float(since)), "+inf", withscores=True)
        points = []
        for member, t in found:
            d = json.loads(member)
            points.append(FiguresPoint(model, d["v"], float(t), d["f"]))
        return points

    def history(self, model: str) -> list[Switch]:
        with self._db.use("read the live history") as conn:
            entries = conn.client.lrange(f"{self.prefix}hist:{_escape(model)}", 0, -1)
        return [_switch_entry(e) for e in entries]

    def rollback(
        self,
        model: str,
        t: float,
        *,
        reason: str = ROLLBACK,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        for _ in range(_SWITCH_TRIES):  # optimistic: retry if another switch came first
            history = self.history(model)
            target = rollback_target_of(model, history)
            expected = str(len(history))
            if self._switch(model, target, reason, t, expected, actor=actor, detail=detail) >= 0:
                return target
        raise StateError(f"cannot roll back {model!r}: the live pointer keeps changing")

    # -- retention ----------------------------------------------------------------------

    def prune(self, now: float) -> int:
        cutoff = repr(float(now) - self.options.retention_seconds)
        removed = 0
        with self._db.use("prune") as conn:
            args: list[Any] = [cutoff, self.options.max_rows, _CHUNK, self.prefix]
            while True:  # one chunk per script: other clients run between chunks
                step = int(conn.prune(keys=[self.prefix + "log"], args=args, client=conn.client))
                removed += step
                if step < _CHUNK:
                    break
            conn.prune_rings(keys=[self.prefix + "rings"], args=[cutoff], client=conn.client)
        return removed


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A")


def _window_dtype(k: int) -> np.dtype:
    return np.dtype(
        [("t", "<f8"), ("label", "<i8"), ("confidence", "<f8"), ("score", "<f8"),
         ("anomalous", "u1"), ("probabilities", "<f4", (k,))]
    )  # fmt: skip


def _record(id_: str, row: list[Any]) -> PredictionRecord:
    model, version, w, q, x, y, f = row
    t, label, confidence, score, anomalous = _W.unpack_from(w)
    return PredictionRecord(
        id=id_,
        model=model.decode(),
        version=version.decode(),
        t=t,
        label=label,
        confidence=confidence,
        probabilities=tuple(np.frombuffer(q, np.float32).tolist()),
        anomaly_score=score,
        anomalous=bool(anomalous),
        inputs=None if x is None else tuple(np.frombuffer(x, np.float32).tolist()),
        true_label=None if y is None else int(y),
        feedback_t=None if f is None else float(f),
    )


def _switch_entry(entry: bytes) -> Switch:
    d = json.loads(entry)
    detail = None if d.get("detail") is None else json.loads(d["detail"])
    return Switch(float(d["t"]), d["version"], d["previous"], d["reason"], d.get("actor"), detail)
