"""Start and stop a real ``redis-server`` on 127.0.0.1 for tests.

``RedisServer`` is a context manager: a throwaway server on a free loopback port with its
own temporary directory, no persistence, stopped (and its directory removed) on exit.
``require_redis`` decides what a test does when no server can be had: skip, or fail when
``ARGUS_REQUIRE_REDIS=1`` (CI sets it, so the Redis tests can never silently vanish).
The ``redis_server`` fixture (tests/conftest.py) shares one server per test session.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

REQUIRE_ENV = "ARGUS_REQUIRE_REDIS"


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis() -> str:
    """The ``redis-server`` path; skip (or fail under ``ARGUS_REQUIRE_REDIS=1``) without it
    or without the ``redis`` Python package."""
    binary = redis_binary()
    missing = []
    if binary is None:
        missing.append("the redis-server binary is not on PATH (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        missing.append("the redis Python package is not installed (pip install redis)")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(f"Redis backend not tested: {reason}; set {REQUIRE_ENV}=1 to fail instead")
    assert binary is not None
    return binary


def end(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``proc`` (if running), killing it after 5 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process; ``url`` is ``redis://127.0.0.1:PORT/0``.

    ``stop()`` then ``start()`` restarts it on the same port (with an empty dataset).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        persistent: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or redis_binary() or "redis-server"
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="argus-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.persistent = persistent  # AOF, fsync every second: a restart keeps the data
        self.args = args  # more arguments, e.g. ("--replicaof", "127.0.0.1", "6379")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        for attempt in range(3):  # the free port may be taken before redis binds it
            with open(self.dir / "redis.log", "ab") as log:  # the child keeps its own copy
                aof = "yes" if self.persistent else "no"
                self.proc = subprocess.Popen(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", str(self.dir), "--save", "", "--appendonly", aof,
                     "--appendfsync", "everysec", "--daemonize", "no", *self.args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.02)
            self.stop(remove=False)
            if attempt < 2:
                self.port = _free_port()
        tail = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (``start()`` brings it back on the port)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def stop(self, *, remove: bool = False) -> None:
        end(self.proc)
        self.proc = None
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(remove=True)


def session_server(request: pytest.FixtureRequest) -> RedisServer:
    """The body of the session fixture ``redis_server``: start one, stop it at the end."""
    server = RedisServer(require_redis()).start()
    request.addfinalizer(lambda: server.stop(remove=True))
    return server


def sentinel_binary() -> str | None:
    """Debian's ``redis-sentinel`` (the same program as ``redis-server --sentinel``)."""
    return shutil.which("redis-sentinel")


class SentinelServer:
    """A ``redis-sentinel`` child watching the primary at ``primary_port`` as ``service``
    (quorum 2, down after ``down_after_ms``); stopped and removed like ``RedisServer``."""

    def __init__(self, primary_port: int, service: str, down_after_ms: int = 1000) -> None:
        self.binary = sentinel_binary() or "redis-sentinel"
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="argus-sentinel-"))
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(  # the sentinel rewrites this file as it learns
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> SentinelServer:
        with open(self.dir / "sentinel.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _ping(self.port):
                return self
            time.sleep(0.02)
        tail = (self.dir / "sentinel.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"redis-sentinel did not answer PING on port {self.port}:\n{tail}")

    def stop(self) -> None:
        end(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
