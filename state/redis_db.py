"""Connections to the Redis behind ``state/redis_store.py``: one pool per process.

The state URL is ``redis://[user:password@]host:port/db[?prefix=argus:]`` (``rediss://``
for TLS); ``prefix=`` is Argus's own argument and is taken out before redis-py sees the
URL. Messages name the URL with its password replaced by ``***``.

Processes: a connection pool belongs to the process that made it. A forked child finds a
different pid, parks the parent's pool (kept referenced, never used or closed, since
closing would shut the parent's sockets) and makes its own. Threads share the pool.
Redis Cluster is not supported (the scripts touch keys they derive); use one primary.

Failures (connection refused, timeout, read-only replica, maxmemory, a refused command)
raise ``StateError`` naming the URL without its password; the next call reconnects.
``busy_timeout`` is the connect and read timeout (at least 0.5 s). A call that times out
may still have been applied: Redis runs the script even when its answer comes too late.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from errors import StateError
from state import redis_lua as lua
from state.types import StateOptions

DEFAULT_PREFIX = "argus:"
_MIN_TIMEOUT = 0.5  # seconds: the socket timeout never goes below this
_PARKED: list[redis.ConnectionPool] = []  # inherited across fork: never used, never closed


class RedisConnection:
    """One process's pool, client and registered scripts."""

    def __init__(self, url: str, options: StateOptions) -> None:
        timeout = max(options.busy_timeout, _MIN_TIMEOUT)
        self.pool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            client_name=f"argus-{os.getpid()}",
            socket_read_size=65536,  # window reads bring back megabytes
        )
        # Replies are bytes (no decode_responses); redis-py types them as bytes | str.
        self.client: Any = redis.Redis(connection_pool=self.pool)
        script = self.client.register_script
        self.record = script(lua.RECORD)
        self.feedback = script(lua.FEEDBACK)
        self.window = script(lua.WINDOW)
        self.last_zset = script(lua.LAST_ZSET)
        self.prune = script(lua.PRUNE)
        self.prune_rings = script(lua.PRUNE_RINGS)
        self.switch = script(lua.SWITCH)
        self.lease = script(lua.LEASE)


class RedisDB:
    """The Redis at ``url`` as this process uses it: ``use`` hands out the connection."""

    def __init__(self, url: str, options: StateOptions, prefix: str | None = None) -> None:
        self.options = options
        self.display_url = redact(url)
        url, found = split_prefix(url)
        if found is not None and prefix is not None and found != prefix:
            raise StateError(f"state url {self.display_url}: prefix given twice ({prefix!r})")
        self.prefix = next((p for p in (found, prefix) if p is not None), DEFAULT_PREFIX)
        self._url = url
        self._closed = False
        self._reset(os.getpid())

    def _reset(self, pid: int) -> None:
        self._pid = pid
        try:
            self._conn = RedisConnection(self._url, self.options)
        except (ValueError, TypeError) as exc:
            raise StateError(f"state url {self.display_url}: {exc}") from None

    def connection(self) -> RedisConnection:
        if self._closed:
            raise StateError(f"state store {self.display_url} is closed")
        pid = os.getpid()
        if pid != self._pid:  # forked: park the parent's pool, make our own
            _PARKED.append(self._conn.pool)
            self._reset(pid)
        return self._conn

    @contextmanager
    def use(self, what: str) -> Iterator[RedisConnection]:
        """The connection; a Redis error inside becomes a ``StateError`` saying ``what``."""
        conn = self.connection()
        try:
            yield conn
        except redis.RedisError as exc:
            raise StateError(self._describe(what, exc)) from exc

    def _describe(self, what: str, exc: redis.RedisError) -> str:
        hint = ""
        if isinstance(exc, redis.exceptions.ReadOnlyError):
            hint = " (a read-only replica: point the URL at the primary)"
        elif isinstance(exc, redis.TimeoutError):
            hint = f" (no answer within {max(self.options.busy_timeout, _MIN_TIMEOUT)} s)"
        elif isinstance(exc, redis.AuthenticationError):
            hint = " (check the user and password in the URL)"
        elif isinstance(exc, redis.ConnectionError):
            hint = " (is redis-server running and reachable?)"
        elif str(exc).startswith("OOM"):
            hint = " (Redis reached maxmemory: raise it, or lower retention)"
        return f"cannot {what} in the Redis state at {self.display_url}: {exc}{hint}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            _PARKED.append(self._conn.pool)
        else:
            self._conn.pool.disconnect()


def redact(url: str) -> str:
    """``url`` without its password (in the userinfo or a ``password=`` query)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*:"
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return re.sub(r"//[^@/]*@", "//***@", url.partition("?")[0])


def split_prefix(url: str) -> tuple[str, str | None]:
    """``url`` without its ``prefix=`` query argument, and that argument (if any)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = [v for k, v in query if k == "prefix"]
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), (found[-1] if found else None)
