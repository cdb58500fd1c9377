"""The server side of the benchmarks: start, watch and stop servers; train the model.

``Server`` runs one server (``argus serve`` or the bare service of ``bench/bare_service.py``)
as a process group in a new session on 127.0.0.1 and always ends it (``argus@TREE``: the
same ``argus serve`` on the code of another source tree, see ``make_server``); it finds the
worker processes, their CPU time and RSS, and which worker holds a client's connection,
which ``open_balanced`` uses to spread connections evenly over the workers; and it reads
``/metrics`` and starts a shadow (``metric_samples``, ``live_version``, ``set_shadow``).
``BENCH_MODELS`` names the models a benchmark can serve: the default 64-feature
``argus-digits`` and the 784-feature ``argus-digits784`` (an MNIST-shaped MLP trained on the
digits resized to 28x28, ``training/mnist_shaped.toml``); the functions that touch the
store or the served model take its name (``model=``, default ``argus-digits``).
Used by ``bench/serving.py``, ``bench/load.py``, ``bench/state_backends.py`` and
``bench/ui_cost.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BenchModel:
    """A model the benchmarks can train and serve.

    ``name``: its name in the store (and ``ARGUS_MODEL``); ``train_args``: what
    ``argus train`` needs besides ``--name`` to make it; ``features``: its input width.
    """

    name: str
    train_args: tuple[str, ...]
    features: int


BENCH_MODELS = {
    "digits": BenchModel(MODEL, (), 64),
    "digits784": BenchModel(
        "argus-digits784", ("--config", str(REPO / "training" / "mnist_shaped.toml")), 784
    ),
}
"""``--model`` choices: the default 8x8 digits MLP (64-100-10) and the MNIST-shaped one
(784-512-256-10, on the digits resized to 28x28; about 15 s to train)."""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGUS_", "BENTOML_"))}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env.update(extra)
    return env


class Server:
    """One server process group on 127.0.0.1, started in a new session, always ended."""

    probe_path = "/livez"
    """A cheap GET that answers 200 once the server is up (``open_balanced`` sends it)."""

    def __init__(
        self,
        kind: str,
        command: list[str],
        env: dict[str, str],
        home: Path,
        workers: int,
        cwd: Path = REPO,
        port: int | None = None,
    ) -> None:
        self.kind = kind
        self.command = command
        self.env = env
        self.cwd = cwd
        self.home = home
        self.workers = workers
        # ``port``: for a command that takes it otherwise than as ``--port N``
        self.port = int(command[command.index("--port") + 1]) if port is None else port
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
            if self.ready():
                return self
            time.sleep(0.3)
        raise RuntimeError(f"{self.kind} did not become ready in {timeout:.0f} s:\n{self.log()}")

    def ready(self) -> bool:
        """Whether the server answers ``/readyz`` and every worker is initialized."""
        try:
            ready = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        # /readyz answers as soon as one worker is up: wait for every worker's
        # "Service <name> initialized" line too, or early connections all land on one
        return ready and self.initialized() >= self.workers

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
        """The acceptor pid holding the server end of the connection from ``client_port``."""
        for p in self.acceptor_procs():
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

    def acceptor_procs(self) -> list[psutil.Process]:
        """The processes that accept the server's connections: here, its workers."""
        return self.worker_procs()

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


def train(
    home: Path, seed: int | None = None, args: Sequence[str] = (), model: str = MODEL
) -> tuple[Path, str]:
    """Train the default model into ``home``'s store; return (BENTOML_HOME, version).

    Training again into the same ``home`` (with another ``seed``) adds a second version.
    ``args``: more ``argus train`` arguments (say ``--source mnist:DIR``, or a
    ``BenchModel``'s ``train_args``); ``model``: the name to register it under."""
    bentoml_home = home / "bentoml"
    seed_args = [] if seed is None else ["--seed", str(seed)]
    name_args = [] if model == MODEL else ["--name", model]
    out = subprocess.run(
        [str(BIN / "argus"), "train", "--no-progress", *seed_args, *name_args, *args],
        env=clean_env(ARGUS_HOME=str(home), BENTOML_HOME=str(bentoml_home)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    match = re.search(rf"registered {re.escape(model)}:(\S+)", out.stdout + out.stderr)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"argus train failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return bentoml_home, match.group(1)


def stored_versions(bentoml_home: Path, model: str = MODEL) -> list[str]:
    """The versions of the model in a store, oldest first."""
    versions = [p for p in (bentoml_home / "models" / model).iterdir() if p.is_dir()]
    return [p.name for p in sorted(versions, key=lambda p: (p / "model.yaml").stat().st_mtime)]


def newest_version(bentoml_home: Path, model: str = MODEL) -> str:
    versions = stored_versions(bentoml_home, model)
    if not versions:
        raise RuntimeError(f"no version of {model} under {bentoml_home}")
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
    model: str = MODEL,
) -> Server:
    """An ``argus serve`` over a copy of ``source_store``, or the bare service over ``onnx``
    (``bare_response``: ``raw`` or ``dict``, see ``bench/bare_service.py``). With an
    ``admin_token``, Argus's admin endpoints (``/models/shadow``, ...) take it. ``env``:
    more environment for the server, over the rest (say ``ARGUS_HISTORY_SECONDS``).
    ``model``: the model of ``source_store`` Argus serves.

    ``argus@TREE`` runs the same ``argus serve`` with ``PYTHONPATH=TREE`` from TREE, so that
    tree's packages (say a worktree of an older commit) shadow the editable install's."""
    kind, _, tree = kind.partition("@")
    cwd = Path(tree).resolve() if tree else REPO
    home = root / f"{kind}-{time.monotonic_ns()}"
    port = str(free_port())
    if kind == "argus":
        shutil.copytree(source_store / "models" / model, home / "bentoml" / "models" / model)
        server_env = clean_env(
            ARGUS_HOME=str(home), BENTOML_HOME=str(home / "bentoml"), ARGUS_MODEL=model
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


def live_version(server: Server, model: str = MODEL) -> str:
    """The version of the model an ``argus serve`` answers with (``argus_model_info``)."""
    for _, labels, _ in metric_samples(server, "argus_model_info"):
        if labels.get("model") == model and labels.get("live") == "true":
            return labels["version"]
    raise RuntimeError(f"{server.kind}: no live version of {model} on /metrics")


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
    pids = [p.pid for p in server.acceptor_procs()]
    quota = -(-n // max(1, len(pids)))
    held = dict.fromkeys(pids, 0)
    clients: list[httpx.AsyncClient] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    for _ in range(n):
        for attempt in range(tries):
            client = httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits)
            r = await client.get(server.probe_path)
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


# -- what every side-by-side bench script shares --------------------------------------------


def add_load_args(
    p: argparse.ArgumentParser, *, rounds: int, rounds_help: str, duration: float = 8.0
) -> None:
    """The load options of every side-by-side bench; ``check_load_args`` checks them."""
    p.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    p.add_argument("--duration", type=float, default=duration, help="measured seconds per config")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--workers", type=int, default=2, help="worker processes of each server")
    p.add_argument("--batches", default="1,64", help="rows per request, comma separated")
    p.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")


def check_load_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad load options (``p.error``); set ``args.batch_sizes`` from ``--batches``."""
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        p.error("--duration > 0, --warmup >= 0, --concurrency >= 1 and --rounds >= 1")
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error("--batches must be comma-separated integers")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batches must hold positive integers")


def machine() -> dict[str, object]:
    """The machine a run's figures come from, for its JSON."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


def finish(root: Path, keep: bool, problems: Sequence[str]) -> int:
    """Remove the run's temporary ``root`` (or say where it is kept), then report the
    ``problems``; the script's exit code."""
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if problems:
        print(f"\nFAILED ({len(problems)} problem(s)):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0
