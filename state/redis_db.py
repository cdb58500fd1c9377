"""Connections to the Redis behind ``state/redis_store.py``: one pool per process.

The state URL is ``redis://[user:password@]host:port/db[?prefix=argus:]`` (``rediss://``
for TLS); ``prefix=`` is Argus's own argument and is taken out before redis-py sees the
URL. Messages name the URL with its password replaced by ``***``.

``?replicas=N`` (Argus's own, taken out like ``prefix=``): every write of rows, labels or
switches waits (Redis's ``WAIT``, on the same connection) until N replicas hold it -- or
every connected replica, when fewer than N are connected (read from ``INFO replication``
at most once a second) -- up to ``busy_timeout``, and fails if fewer did. So a write Argus
reports, or a row it answered, survives the primary's death while a replica is there to
take over; a write that was not confirmed is spilled and replayed (exactly once: ids are
the key). Without it, replication is asynchronous and a failover can lose the writes of
its last moments. A primary left without replicas takes writes unconfirmed, as Redis
itself does unless ``min-replicas-to-write`` is set.

``redis+sentinel://[user:password@]host:port[,host:port...]/service/db`` asks those Redis
Sentinels for the primary of ``service`` (redis-py's ``Sentinel.master_for``; the user and
password are the primary's). A connection that fails, or finds its server demoted to a
replica, asks the sentinels again on the next call, so Argus follows a failover without a
restart; the calls of the failover's seconds fail and their answered rows are spilled
(``state/shared.py``).

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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from errors import StateError
from state import redis_lua as lua
from state.types import StateOptions

DEFAULT_PREFIX = "argus:"
_MIN_TIMEOUT = 0.5  # seconds: the socket timeout never goes below this
_PARKED: list[redis.ConnectionPool] = []  # inherited across fork: never used, never closed


class RedisConnection:
    """One process's pool, client and registered scripts."""

    def __init__(self, url: str, options: StateOptions, replicas: int = 0) -> None:
        timeout = max(options.busy_timeout, _MIN_TIMEOUT)
        self.replicas = replicas
        self.wait_ms = max(1, int(timeout * 1000))
        self._connected: tuple[float, int] = (-1.0, 0)  # (read at, replicas connected)
        settings: dict[str, Any] = dict(
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            client_name=f"argus-{os.getpid()}",
            socket_read_size=65536,  # window reads bring back megabytes
        )
        # Replies are bytes (no decode_responses); redis-py types them as bytes | str.
        self.client: Any
        if url.startswith(SENTINEL_SCHEME):
            hosts, service, db, username, password = sentinel_address(url)
            asked = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            self.sentinel = Sentinel(hosts, sentinel_kwargs=asked)
            self.client = self.sentinel.master_for(
                service, db=db, username=username, password=password, **settings
            )
            self.pool = self.client.connection_pool
        else:
            self.pool = redis.ConnectionPool.from_url(url, **settings)
            self.client = redis.Redis(connection_pool=self.pool)
        script = self.client.register_script
        self.record = script(lua.RECORD)
        self.feedback = script(lua.FEEDBACK)
        self.window = script(lua.WINDOW)
        self.last_zset = script(lua.LAST_ZSET)
        self.prune = script(lua.PRUNE)
        self.prune_rings = script(lua.PRUNE_RINGS)
        self.switch = script(lua.SWITCH)
        self.lease = script(lua.LEASE)

    def write(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """Run a writing ``script``; with ``replicas``, then ``WAIT`` for them on the same
        connection (one round trip), raising ``redis.ResponseError`` unless enough of
        them acknowledged the write."""
        wanted = min(self.replicas, self.connected_replicas()) if self.replicas else 0
        if not wanted:
            return script(keys=keys, args=args, client=self.client)
        pipe = self.client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", wanted, self.wait_ms)
        result, acked = pipe.execute()
        if int(acked) < wanted:
            self._connected = (-1.0, 0)  # read the replicas again next time
            raise redis.ResponseError(
                f"the write reached {acked} of {wanted} replicas within {self.wait_ms} ms"
            )
        return result

    def connected_replicas(self) -> int:
        """Replicas connected to the primary, from ``INFO replication`` (cached 1 s)."""
        read_at, count = self._connected
        now = time.monotonic()
        if now - read_at >= 1.0:
            info = self.client.info("replication")
            count = int(info.get("connected_slaves", 0))
            self._connected = (now, count)
        return count


class RedisDB:
    """The Redis at ``url`` as this process uses it: ``use`` hands out the connection."""

    def __init__(self, url: str, options: StateOptions, prefix: str | None = None) -> None:
        self.options = options
        self.display_url = redact(url)
        url, found = split_prefix(url)
        if found is not None and prefix is not None and found != prefix:
            raise StateError(f"state url {self.display_url}: prefix given twice ({prefix!r})")
        self.prefix = next((p for p in (found, prefix) if p is not None), DEFAULT_PREFIX)
        url, replicas = split_query(url, "replicas")
        if replicas is not None and not replicas.isdigit():
            raise StateError(f"state url {self.display_url}: replicas= must be a count")
        self.replicas = int(replicas or 0)
        self._url = url
        self._closed = False
        self._reset(os.getpid())

    def _reset(self, pid: int) -> None:
        self._pid = pid
        try:
            self._conn = RedisConnection(self._url, self.options, self.replicas)
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


SENTINEL_SCHEME = "redis+sentinel://"


def sentinel_address(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """The sentinels, service name, db, user and password of a ``redis+sentinel://`` URL.

    >>> sentinel_address("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2")
    ([('h1', 26379), ('h2', 26380)], 'mymaster', 2, None, 'pw')
    """
    rest = url[len(SENTINEL_SCHEME) :].partition("?")[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts_part = netloc.rpartition("@")
    username = password = None
    if at:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    hosts = []
    for item in hosts_part.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"sentinel {item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("the path must be /service-name or /service-name/db")
    return hosts, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, username, password


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
    return split_query(url, "prefix")


def split_query(url: str, name: str) -> tuple[str, str | None]:
    """``url`` without its ``name=`` query argument, and that argument (if any)."""
    base, mark, query_text = url.partition("?")
    if not mark:
        return url, None
    query = parse_qsl(query_text, keep_blank_values=True)
    found = [v for k, v in query if k == name]
    rest = urlencode([(k, v) for k, v in query if k != name])
    return base + (f"?{rest}" if rest else ""), (found[-1] if found else None)
