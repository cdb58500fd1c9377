"""Start and stop a real ``argus serve`` on 127.0.0.1 in a temporary home.

Integration tests use ``ArgusServer`` as a context manager; it always ends the whole
process group it started, even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ARGUS = str(Path(sys.executable).with_name("argus"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_store(source_bentoml_home: Path, name: str, home: Path) -> Path:
    """Copy every stored version of ``name`` into ``home``'s own BentoML store."""
    target = home / "bentoml"
    shutil.copytree(source_bentoml_home / "models" / name, target / "models" / name)
    return target


class ArgusServer:
    def __init__(
        self,
        home: Path,
        model: str,
        *,
        workers: int = 2,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.home = home
        self.model = model
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGUS_", "BENTOML_"))}
        env.update(
            {
                "ARGUS_HOME": str(self.home),
                "BENTOML_HOME": str(self.home / "bentoml"),
                "ARGUS_MODEL": self.model,
                "BENTOML_DO_NOT_TRACK": "true",
                "ARGUS_POLL_SECONDS": "0.25",
                "ARGUS_METRICS_CACHE_SECONDS": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0, ready: bool = True) -> ArgusServer:
        """Start and wait until every worker is up and ``/readyz`` says 200 (or, with
        ``ready=False``, until the workers answer ``/livez``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [ARGUS, "serve", "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"argus serve exited early:\n{self.log()}")
            try:
                probe = "/readyz" if ready else "/livez"
                if (
                    httpx.get(f"{self.url}{probe}", timeout=2).status_code == 200
                    and len(self.worker_pids()) >= self.workers
                ):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"argus serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """Processes of the server's group that run a BentoML worker."""
        if self.proc is None:
            return []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            try:
                if "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:
                continue
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, term_wait=20, kill_wait=10)
        self.proc = None

    def __enter__(self) -> ArgusServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def stop_group(proc: subprocess.Popen[bytes], term_wait: float, kill_wait: float) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it spawned:
    SIGTERM to its group, up to ``term_wait`` s to exit, then SIGKILL to what is left."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
