"""The server side of the benchmarks: start, watch and stop servers; train the model.

``Server`` runs one server (``argus serve`` or the bare service of ``bench/bare_service.py``)
as a process group in a new session on 127.0.0.1 and always ends it (``argus@TREE``: the
same ``argus serve`` on the code of another source tree, see ``make_server``); it finds the
worker processes, their CPU time and RSS, and which worker holds a client's connection,
which ``open_balanced`` uses to spread connections evenly over the workers; and it reads
``/metrics`` and starts a shadow (``metric_samples``, ``live_version``, ``set_shadow``).
Used by ``bench/serving.py``, ``bench/load.py``, ``bench/state_backends.py`` and
``bench/ui_cost.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from bench/: the tests' harness is shared
    sys.path.insert(0, str(REPO))

from tests.harness import free_port, stop_group  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "argus-digits"
WORKER_MARK = "_bentoml_impl.worker.service"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGUS_", "BENTOML_"))}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env.update(extra)
    return env


class Server:
    """One server process group on 127.0.0.1, started in a new session, always ended."""

    def __init__(
        self,
        kind: str,
        command: list[str],
        env: dict[str, str],
        home: Path,
        workers: int,
        cwd: Path = REPO,
    ) -> None:
        self.kind = kind
        self.command = command
        self.env = env
        self.cwd = cwd
        self.home = home
        self.workers = workers
        self.port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            # /readyz answers as soon as one worker is up: wait for every worker's
            # "Service <name> initialized" line too, or early connections all land on one
            if ready and self.initialized() >= self.workers:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"{self.kind} did not become ready in {timeout:.0f} s:\n{self.log()}")

    def initialized(self) -> int:
        """How many workers logged that their service instance is initialized."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return len(
            set(
                re.findall(
                    rf"\[entry_service:{self.kind}:(\d+)\] Service {self.kind} initialized", text
                )
            )
        )

    def owner_of(self, client_port: int) -> int | None:
        """The worker pid holding the server end of the connection from ``client_port``."""
        for p in self.worker_procs():
            try:
                for c in p.net_connections(kind="tcp"):
                    if c.laddr and c.raddr and c.laddr.port == self.port:
                        if c.raddr.port == client_port:
                            return p.pid
            except psutil.Error:
                continue
        return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def procs(self) -> list[psutil.Process]:
        """The server's whole process tree (the ``bentoml serve`` process first)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker_procs(self) -> list[psutil.Process]:
        workers = []
        for p in self.procs()[1:]:
            try:
                if WORKER_MARK in " ".join(p.cmdline()):
                    workers.append(p)
            except psutil.Error:
                continue
        return workers

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def background_cpu_seconds(self) -> float:
        """CPU time of the workers' threads other than their main (event-loop) thread: on
        Argus, the journal ingestion and the thread pool that serves scrapes and polls."""
        total = 0.0
        for p in self.worker_procs():
            try:
                total += sum(t.user_time + t.system_time for t in p.threads() if t.id != p.pid)
            except psutil.Error:
                continue
        return total

    def worker_rss_mb(self) -> list[float]:
        rss = []
        for p in self.worker_procs():
            try:
                rss.append(p.memory_info().rss / 2**20)
            except psutil.Error:
                continue
        return rss

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, term_wait=20.0, kill_wait=10.0)
        self.proc = None


def train(home: Path, seed: int | None = None, args: Sequence[str] = ()) -> tuple[Path, str]:
    """Train the default model into ``home``'s store; return (BENTOML_HOME, version).

    Training again into the same ``home`` (with another ``seed``) adds a second version.
    ``args``: more ``argus train`` arguments (say ``--source mnist:DIR``)."""
    bentoml_home = home / "bentoml"
    seed_args = [] if seed is None else ["--seed", str(seed)]
    out = subprocess.run(
        [str(BIN / "argus"), "train", "--no-progress", *seed_args, *args],
        env=clean_env(ARGUS_HOME=str(home), BENTOML_HOME=str(bentoml_home)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    match = re.search(rf"registered {MODEL}:(\S+)", out.stdout + out.stderr)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"argus train failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return bentoml_home, match.group(1)


def stored_versions(bentoml_home: Path) -> list[str]:
    """The versions of the model in a store, oldest first."""
    versions = [p for p in (bentoml_home / "models" / MODEL).iterdir() if p.is_dir()]
    return [p.name for p in sorted(versions, key=lambda p: (p / "model.yaml").stat().st_mtime)]


def newest_version(bentoml_home: Path) -> str:
    versions = stored_versions(bentoml_home)
    if not versions:
        raise RuntimeError(f"no version of {MODEL} under {bentoml_home}")
    return versions[-1]


def make_server(
    kind: str,
    root: Path,
    source_store: Path,
    onnx: Path,
    workers: int,
    bare_response: str = "raw",
    admin_token: str | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """An ``argus serve`` over a copy of ``source_store``, or the bare service over ``onnx``
    (``bare_response``: ``raw`` or ``dict``, see ``bench/bare_service.py``). With an
    ``admin_token``, Argus's admin endpoints (``/models/shadow``, ...) take it. ``env``:
    more environment for the server, over the rest (say ``ARGUS_HISTORY_SECONDS``).

    ``argus@TREE`` runs the same ``argus serve`` with ``PYTHONPATH=TREE`` from TREE, so that
    tree's packages (say a worktree of an older commit) shadow the editable install's."""
    kind, _, tree = kind.partition("@")
    cwd = Path(tree).resolve() if tree else REPO
    home = root / f"{kind}-{time.monotonic_ns()}"
    port = str(free_port())
    if kind == "argus":
        shutil.copytree(source_store / "models" / MODEL, home / "bentoml" / "models" / MODEL)
        server_env = clean_env(
            ARGUS_HOME=str(home), BENTOML_HOME=str(home / "bentoml"), ARGUS_MODEL=MODEL
        )
        if admin_token:
            server_env["ARGUS_ADMIN_TOKEN"] = admin_token
        if tree:
            server_env["PYTHONPATH"] = str(cwd)
            check_tree(cwd, server_env)
        command = [str(BIN / "argus"), "serve", "--port", port, "--workers", str(workers)]
    else:
        server_env = clean_env(
            BENTOML_HOME=str(home / "bentoml"),
            BARE_MODEL_PATH=str(onnx),
            BARE_WORKERS=str(workers),
            BARE_RESPONSE=bare_response,
        )
        command = [sys.executable, "-m", "bentoml", "serve", "bench.bare_service:Bare"]
        command += ["--host", "127.0.0.1", "--port", port]
    server_env.update(env or {})
    return Server(kind, command, server_env, home, workers, cwd)


def check_tree(tree: Path, env: dict[str, str]) -> None:
    """Refuse to run ``tree`` unless its packages are the ones Python imports there."""
    code = (
        "import argus, monitoring, service\n"
        "for p in (argus, monitoring, service): print(p.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True
    )
    files = [Path(f) for f in out.stdout.split()]
    if out.returncode or not files or not all(f.is_relative_to(tree) for f in files):
        raise RuntimeError(f"{tree} does not shadow the installed code:\n{out.stdout}{out.stderr}")


def metric_samples(server: Server, *names: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of one ``/metrics`` scrape called one of ``names`` (say
    ``argus_candidate_dropped_total``): (name, labels, value), none for a series the
    server has not created."""
    r = httpx.get(f"{server.url}/metrics", timeout=60)
    r.raise_for_status()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name in names
    ]


def live_version(server: Server) -> str:
    """The version of the model an ``argus serve`` answers with (``argus_model_info``)."""
    for _, labels, _ in metric_samples(server, "argus_model_info"):
        if labels.get("model") == MODEL and labels.get("live") == "true":
            return labels["version"]
    raise RuntimeError(f"{server.kind}: no live version of {MODEL} on /metrics")


def set_shadow(
    server: Server, version: str | None, fraction: float, token: str, settle: float = 2.0
) -> None:
    """Run ``version`` as the shadow of the live version on ``fraction`` of the answered
    rows (``None``: stop it), then wait ``settle`` seconds: the worker that takes the call
    loads it at once, the others at their next poll of the shared state (every 0.5 s by
    default, ``ARGUS_POLL_SECONDS``)."""
    r = httpx.post(
        f"{server.url}/models/shadow",
        json={"version": version, "fraction": fraction},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    if r.status_code != 200:
        raise RuntimeError(f"{server.kind}: POST /models/shadow: HTTP {r.status_code}: {r.text}")
    time.sleep(settle)
    running = {
        labels["version"]
        for _, labels, _ in metric_samples(server, "argus_candidate_info")
        if labels.get("role") == "shadow"
    }
    if (version is not None) != (version in running):
        raise RuntimeError(f"{server.kind}: the shadow is {sorted(running)}, not {version}")


async def open_balanced(
    server: Server, n: int, tries: int = 60
) -> tuple[list[httpx.AsyncClient], list[int]]:
    """``n`` one-connection clients spread evenly over the server's workers.

    The workers share one listening socket and the first to wake accepts every pending
    connection, so a burst of connects can pin most of them to one worker. Each client
    opens its connection alone, asks psutil which worker holds the other end, and
    reconnects while that worker already has its share. Returns the clients and the
    connections per worker.
    """
    pids = [p.pid for p in server.worker_procs()]
    quota = -(-n // max(1, len(pids)))
    held = dict.fromkeys(pids, 0)
    clients: list[httpx.AsyncClient] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    for _ in range(n):
        for attempt in range(tries):
            client = httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits)
            r = await client.get("/livez")
            stream = r.extensions.get("network_stream")
            owner = None
            if r.status_code == 200 and stream is not None:
                owner = server.owner_of(stream.get_extra_info("client_addr")[1])
            if owner in held and (held[owner] < quota or attempt == tries - 1):
                held[owner] += 1
                clients.append(client)
                break
            await client.aclose()
            await asyncio.sleep(0.005 * (attempt % 5))
        else:
            raise RuntimeError(f"{server.kind}: could not place a connection on a worker")
    return clients, list(held.values())
