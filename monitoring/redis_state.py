"""The networked ``StateStore``: one Redis shared by every worker of every replica.

Selected by ``open_state("redis://[user:password@]host:port/db[?prefix=argus:]", home)``
(``rediss://`` for TLS). Every key starts with ``prefix`` (default ``argus:``), so several
deployments can share one Redis; ``:`` and ``%`` in model and version names are escaped::

    {P}seq                 counter: arrival order of every logged row
    {P}log                 list of ids, oldest first: what ``prune`` walks
    {P}p:{id}              hash, one logged row: m, v, s (seq), w (packed t, label,
                           confidence, anomaly score, flag, float32 probabilities),
                           x (float32 inputs, optional), y, f, lm (once labelled)
    {P}v:{model}:{version}:p   list of the version's ids, oldest first
    {P}v:{model}:{version}:l   sorted set of labelled rows by feedback time; each member
                               packs seq (the tie-break), t, label and true label
    {P}v:{model}:{version}:x   list: the input ring, float64 t + float32 row per entry
    {P}v:{model}:{version}:c   hash: lifetime counts p (predictions) and l (labelled)
    {P}rings               set of ring keys, for pruning by age
    {P}live:{model}        hash: version, serial
    {P}hist:{model}        list of switches (JSON), oldest first

Atomicity: each write is one Lua script, which Redis runs alone. ``record_predictions``
checks every id and then writes rows, indexes, counts and the ring in one round trip
(nothing is written when an id exists); ``record_feedback`` sets the label only on rows
without one, so of two processes labelling one id exactly one wins; ``set_live`` and
``rollback`` compare the history length before switching (optimistic: a rollback that
lost a race re-reads the history and retries). A request that loses its connection is
retried once; a random token stored with the batch makes that retry report the first
attempt's outcome instead of a duplicate.

Retention: ``prune`` walks ``{P}log`` from the oldest row in chunks of ``_CHUNK`` rows per
script (so Redis never blocks for long), dropping rows beyond the newest ``max_rows`` and
rows older than ``retention_seconds`` up to the first one that is not, in arrival order
like the SQLite backend; the input rings drop their leading rows older than that too.

Durability: a call returns once Redis has applied the script in memory, so a killed Argus
process loses nothing it reported. What survives a Redis restart or a power loss depends
on Redis's persistence: with ``appendonly yes`` and ``appendfsync everysec`` at most about
one second of writes; with RDB snapshots only, everything since the last snapshot; with
neither, everything. Configure Redis accordingly.

Processes: a connection pool belongs to the process that made it. A forked child finds a
different pid, parks the parent's pool (kept referenced, never used or closed, since
closing would shut the parent's sockets) and makes its own. Threads share the pool.
Redis Cluster is not supported (the scripts touch keys they derive); use one primary.

Failures (connection refused, timeout, read-only replica, maxmemory, a refused command)
raise ``StateError`` naming the URL without its password; the next call reconnects.
"""

from __future__ import annotations

import json
import operator
import os
import re
import struct
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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

DEFAULT_PREFIX = "argus:"
_CHUNK = 1000  # log rows removed per prune script
_MIN_TIMEOUT = 0.5  # seconds: the socket timeout never goes below this
_SWITCH_TRIES = 50
_PARKED: list[redis.ConnectionPool] = []  # inherited across fork: never used, never closed

_W = struct.Struct("<dqddB")  # t, label, confidence, anomaly_score, anomalous
_T = struct.Struct("<d")
_TAIL = struct.Struct("<dqq")  # t, label, true label: a labelled member after its seq
_Q = struct.Struct("<q")
_LABELLED = np.dtype([("seq", "S16"), ("t", "<f8"), ("label", "<i8"), ("true", "<i8")])

