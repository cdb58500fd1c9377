"""Argus beside other ways of serving the same ``model.onnx``, in one interleaved run.

Seven servers answer the same digit rows (1-row and 64-row requests by default) with the
same model, the digits MLP ``argus train`` makes (64 features, 10 classes), on the same
cores, with ``--workers`` worker processes (2) wherever a server has workers and
onnxruntime at ``cores // workers`` intra-op threads in each; access logs off everywhere:

1. ``fastapi`` -- a hand-written FastAPI service under ``uvicorn --workers``
   (``bench/peer_fastapi.py``): pydantic request and answer, onnxruntime in the route;
2. ``litserve`` -- a LitServe ``LitAPI`` (``bench/peer_litserve.py``),
   ``workers_per_device`` inference workers on CPU, as many HTTP processes (LitServe's
   default) and its ZeroMQ queue (``--litserve-queue``);
3. ``mlserver`` -- MLServer with a custom ``MLModel`` runtime (``bench/peer_mlserver.py``),
   ``parallel_workers``, called over the V2 (Open Inference Protocol) REST endpoint with a
   JSON FP32 tensor; its HTTP server is one process that hands requests to the workers;
4. ``bentoml-dict`` -- the conventional BentoML service: ``bench/bare_service.py`` whose
   API returns a dict for BentoML to serialise (``BARE_RESPONSE=dict``);
5. ``bentoml-raw`` -- the same service serialising its answer in one call as Argus does
   (``BARE_RESPONSE=raw``, ``bench/serving.py``'s baseline);
6. ``argus`` -- ``argus serve`` with all its monitoring, as ``bench/serving.py`` runs it;
7. ``bentoml-floor`` -- the same BentoML service answering a constant without running
   the model (``BARE_RESPONSE=constant``): what every request costs in BentoML itself.

All but MLServer take ``{"instances": [[...], ...]}`` on ``POST /predict``; MLServer takes
a V2 inference request on ``POST /v2/models/digits/infer``. All but the floor answer a
label, confidence and the 10 probabilities per row. Every round, before its load, each
server answers every distinct request the load will send (64 per batch size), and its
labels must equal those onnxruntime gives in this process on the same rows (the floor
only has to answer 2xx). The client accepts gzip, as httpx does by default: MLServer and
LitServe then compress their larger answers (``--no-gzip`` asks for them plain).

Setup: this script, Argus and the BentoML services run in the project's venv (``.venv``,
bentoml==1.4.40, where ``argus train`` has torch); the peers in a venv of their own
(``--peer-python``, default ``.venv-bench/bin/python``), made by ``make bench-peers`` with
``pip install -e '.[bench]'`` (the project plus fastapi, uvicorn[standard], litserve,
mlserver; no torch), so their pins (MLServer's fastapi<0.116, hence starlette<0.47, and
protobuf<7) never downgrade ``.venv``. Each server is its own process group, so the two
venvs never meet. A peer whose venv or packages are missing, or that
does not start, is reported as "not run: <reason>" and the rest runs on.

For each server and batch size the closed-loop client of ``bench/serving.py`` keeps
``--concurrency`` keep-alive connections busy for ``--warmup`` + ``--duration`` seconds,
the connections spread evenly over the processes that accept them (checked with psutil:
uvicorn's and BentoML's workers, LitServe's HTTP processes, MLServer's one). Servers run
one at a time from fresh homes, their order rotating each round, each started once the
cores have been idle for a second (``--quiet-wait``); no ``/metrics`` scrape. Figures per
server and batch size, median and [per round]: req/s, p50/p99 latency, CPU ms per request
(every process of the server, over the measured window), RSS per worker (the processes
that hold the model; Argus and BentoML: their workers), RSS of all its processes, and the
share of the cores other processes on the machine took meanwhile. Printed as a markdown
table; ``--json`` writes every run.

    make bench-peers                                     # makes .venv-bench, then runs this
    .venv/bin/python bench/peers.py --rounds 3 --duration 8
    .venv/bin/python bench/peers.py --servers argus,fastapi,mlserver --rounds 1 --json out.json

Exits non-zero if a server's labels disagree with onnxruntime's, a request under load is
not answered 2xx, or Argus or a BentoML service does not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from the repo root
    sys.path.insert(0, str(REPO))

from bench.servers import (  # noqa: E402
    MODEL,
    Server,
    add_load_args,
    check_load_args,
    clean_env,
    finish,
    free_port,
    machine,
    make_server,
    newest_version,
    train,
)
from bench.serving import JSON_HEADERS, RunResult, cells, run_load, sample_rows  # noqa: E402

Body = tuple[bytes, dict[str, str]]
IDENTITY = {"accept-encoding": "identity"}


# -- what each server is asked, and how its answer gives labels ------------------------------


def predict_body(X: np.ndarray) -> Body:
    return json.dumps({"instances": X.tolist()}).encode(), JSON_HEADERS


def predict_labels(r: httpx.Response, n: int) -> list[int]:
    predictions = r.json()["predictions"]
    if len(predictions) != n or any(len(p["probabilities"]) != 10 for p in predictions):
        raise ValueError("wrong number of predictions or of probabilities")
    return [int(p["label"]) for p in predictions]


def v2_body(X: np.ndarray) -> Body:
    tensor = {"name": "input", "shape": list(X.shape), "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": X.ravel().tolist()}]}).encode(), JSON_HEADERS


def v2_labels(r: httpx.Response, n: int) -> list[int]:
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    label, probabilities = outputs["label"]["data"], outputs["probabilities"]
    if len(label) != n or probabilities["shape"] != [n, 10]:
        raise ValueError("wrong label or probabilities tensor")
    return [int(v) for v in label]


@dataclass(frozen=True)
class Contender:
    """One server of the comparison: how to ask it and what its answers hold."""

    name: str
    what: str  # one line of the notes
    path: str = "/predict"
    encode: Callable[[np.ndarray], Body] = predict_body
    labels: Callable[[httpx.Response, int], list[int]] | None = predict_labels  # None: floor
    imports: str = ""  # a peer: what its venv must import


MLSERVER_MODEL = "digits"
V2_PATH = f"/v2/models/{MLSERVER_MODEL}/infer"
CONTENDERS = {
    c.name: c
    for c in (
        Contender("fastapi", "FastAPI by hand, uvicorn --workers N", imports="fastapi, uvicorn"),
        Contender("litserve", "LitServe: N inference + N HTTP processes", imports="litserve"),
        Contender(
            "mlserver",
            "MLServer runtime, parallel_workers=N, V2 REST",
            V2_PATH,
            v2_body,
            v2_labels,
            "mlserver",
        ),
        Contender("bentoml-dict", "conventional BentoML service, returns a dict"),
        Contender("bentoml-raw", "bare BentoML service, serialises as Argus does"),
        Contender("argus", "argus serve, full monitoring"),
        Contender("bentoml-floor", "the BentoML service answering a constant", labels=None),
    )
}
BARE_RESPONSES = {"bentoml-dict": "dict", "bentoml-raw": "raw", "bentoml-floor": "constant"}
PROJECT = ("argus", *BARE_RESPONSES)
"""Servers of the project's own venv: that one of them cannot run is a failure."""


# -- the peers' processes ---------------------------------------------------------------------


class PeerServer(Server):
    """A peer as a ``Server``: its model processes announce themselves in ``pid_dir``
    (``bench/peer_model.py``), which gives its workers and when all are up; ``acceptors``
    says which processes accept its connections: ``workers`` (uvicorn's), ``root`` (one
    HTTP process, MLServer) or ``listeners`` (the processes besides the root that hold
    the listening socket and started after the workers: LitServe's HTTP processes)."""

    def __init__(
        self,
        kind: str,
        command: list[str],
        env: dict[str, str],
        home: Path,
        workers: int,
        *,
        port: int,
        probe: str,
        acceptors: str,
    ) -> None:
        super().__init__(kind, command, env, home, workers, REPO, port)
        self.probe_path = probe
        self.acceptors = acceptors
        self.pid_dir = Path(env["PEER_PID_DIR"])

    def ready(self) -> bool:
        try:
            up = httpx.get(f"{self.url}{self.probe_path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        return up and len(self.worker_procs()) >= self.workers

    def worker_procs(self) -> list[psutil.Process]:
        announced = {int(p.name) for p in self.pid_dir.glob("[0-9]*")}
        return [p for p in self.procs() if p.pid in announced]

    def acceptor_procs(self) -> list[psutil.Process]:
        if self.acceptors == "workers":
            return self.worker_procs()
        procs = self.procs()
        if self.acceptors == "root":
            return procs[:1]
        started = max((p.create_time() for p in self.worker_procs()), default=0.0)
        return [p for p in procs[1:] if self.listens(p) and p.create_time() >= started]

    def listens(self, p: psutil.Process) -> bool:
        try:
            return any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                for c in p.net_connections(kind="tcp")
            )
        except psutil.Error:
            return False


def peer_server(name: str, root: Path, onnx: Path, args: argparse.Namespace) -> PeerServer:
    home = root / f"{name}-{time.monotonic_ns()}"
    port, workers = free_port(), str(args.workers)
    python = str(args.peer_python)
    env = clean_env(
        PEER_MODEL_PATH=str(onnx),
        PEER_WORKERS=workers,
        PEER_PID_DIR=str(home / "pids"),
        PYTHONPATH=str(REPO),
    )
    if name == "fastapi":
        command = [python, "-m", "uvicorn", "bench.peer_fastapi:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", workers]
        command += ["--no-access-log", "--log-level", "warning"]
        probe, acceptors = "/health", "workers"
    elif name == "litserve":
        command = [python, "-m", "bench.peer_litserve", "--port", str(port)]
        command += ["--workers", workers, "--queue", args.litserve_queue]
        probe, acceptors = "/health", "listeners"
    elif name == "mlserver":
        repository = write_mlserver_repository(home / "models", onnx, args.workers, port)
        command = [str(args.peer_python.parent / "mlserver"), "start", str(repository)]
        probe, acceptors = f"/v2/models/{MLSERVER_MODEL}/ready", "root"
    else:
        raise ValueError(f"no peer called {name}")
    return PeerServer(
        name, command, env, home, args.workers, port=port, probe=probe, acceptors=acceptors
    )


def write_mlserver_repository(folder: Path, onnx: Path, workers: int, port: int) -> Path:
    """A model repository serving ``onnx`` with ``bench/peer_mlserver.py``'s runtime:
    MLServer's defaults but for the workers, loopback ports and no access log."""
    (folder / MLSERVER_MODEL).mkdir(parents=True)
    settings = {
        "debug": False,  # MLServer's access log
        "parallel_workers": workers,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
    }
    model = {
        "name": MLSERVER_MODEL,
        "implementation": "bench.peer_mlserver.OnnxDigits",
        "parameters": {"uri": str(onnx)},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def cannot_run(name: str, peer_python: Path) -> str | None:
    """Why peer ``name`` cannot run from ``peer_python``, or None if it can."""
    if not peer_python.exists():
        return f"no {peer_python} (`make bench-peers` makes it)"
    modules = f"onnxruntime, numpy, {CONTENDERS[name].imports}"
    out = subprocess.run(
        [str(peer_python), "-c", f"import {modules}"], capture_output=True, text=True
    )
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        return f"{lines[-1]} in {peer_python.parents[1].name}"
    return None


def last_error(text: str) -> str:
    """The last line of ``text`` that looks like an error (a server's log, say)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


def start(name: str, root: Path, store: Path, onnx: Path, args: argparse.Namespace) -> Server:
    if name in BARE_RESPONSES:
        server = make_server("bare", root, store, onnx, args.workers, BARE_RESPONSES[name])
    elif name == "argus":
        kind = f"argus@{args.argus_tree}" if args.argus_tree else "argus"
        server = make_server(kind, root, store, onnx, args.workers)
    else:
        server = peer_server(name, root, onnx, args)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


# -- measuring -------------------------------------------------------------------------------


@dataclass
class PeerRun(RunResult):
    total_rss_mb: float = 0.0  # every process of the server, at the end of the run
    other_cpu_share: float = 0.0  # of the cores, by processes neither server nor client

    @property
    def other_cpu_percent(self) -> float:
        return 100.0 * self.other_cpu_share


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, since boot)."""
    t = psutil.cpu_times()._asdict()  # Linux counts guest time in user time too
    idle = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(v for k, v in t.items() if k not in idle)


def wait_quiet(limit: float, threshold: float = 0.10) -> float:
    """Wait, up to ``limit`` seconds, for a second in which the machine's cores are busy
    less than ``threshold`` of the time (nothing of ours runs meanwhile); the last share."""
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        share = (busy_seconds() - b0) / (time.perf_counter() - t0) / (os.cpu_count() or 1)
        if share < threshold or time.monotonic() >= deadline:
            return share


def measure(server: Server, result: PeerRun, load: Coroutine[Any, Any, RunResult]) -> None:
    """Run ``load``, then note the server's RSS and how much of the cores other processes
    (neither the server nor this client) used meanwhile, warm-up included."""
    t0, b0, s0, c0 = time.perf_counter(), busy_seconds(), server.cpu_seconds(), time.process_time()
    asyncio.run(load)
    t1, b1, s1, c1 = time.perf_counter(), busy_seconds(), server.cpu_seconds(), time.process_time()
    others = (b1 - b0) - (s1 - s0) - (c1 - c0)
    result.other_cpu_share = max(0.0, others) / (t1 - t0) / (os.cpu_count() or 1)
    result.total_rss_mb = total_rss_mb(server)


def total_rss_mb(server: Server) -> float:
    total = 0
    for p in server.procs():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def reference_labels(onnx: Path, X: np.ndarray) -> list[int]:
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: X.astype(np.float32)}
    return session.run(None, feed)[0].argmax(axis=1).tolist()


def check_answers(
    server: Server,
    contender: Contender,
    requests: Sequence[tuple[Body, list[int]]],
    encodings: set[str] | None = None,
) -> str | None:
    """Send each request once; None if every answer is 2xx with the expected labels.
    ``encodings`` gathers the answers' content encodings (``gzip``, say)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for (body, headers), expected in requests:
            r = client.post(contender.path, content=body, headers=headers)
            if encodings is not None:
                encodings.add(r.headers.get("content-encoding", "identity"))
            if r.status_code // 100 != 2:
                return f"HTTP {r.status_code}: {r.text[:200]}"
            if contender.labels is None:
                continue
            try:
                got = contender.labels(r, len(expected))
            except (KeyError, TypeError, ValueError) as exc:
                return f"malformed answer ({exc}): {r.content[:200]!r}"
            if got != expected:
                wrong = sum(a != b for a, b in zip(got, expected, strict=True))
                return f"{wrong} of {len(expected)} labels differ from onnxruntime's"
    return None


# -- report ------------------------------------------------------------------------------------

FIGURES = (  # header, attribute, format
    ("req/s", "req_per_s", ".0f"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p99 ms", "p99_ms", ".1f"),
    ("CPU ms/req", "server_cpu_ms_per_req", ".2f"),
    ("RSS/worker MB", "rss_mb", ".0f"),
    ("RSS all MB", "total_rss_mb", ".0f"),
    ("others %", "other_cpu_percent", ".0f"),
)


def report(
    runs: list[PeerRun], not_run: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Print the markdown table (median [per round]) and return the medians."""
    medians: dict[str, dict[str, float]] = {}
    head = ["server", "rows", *(f[0] for f in FIGURES), "req/s / argus", "CPU / argus"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rows in args.batch_sizes:
        mine = {
            name: sorted((r for r in runs if (r.server, r.rows) == (name, rows)), key=by_round)
            for name in args.server_names
        }
        for name, rs in mine.items():
            if rs:
                medians[f"{rows}-row/{name}"] = {
                    attr: statistics.median(getattr(r, attr) for r in rs) for _, attr, _ in FIGURES
                }
        argus = medians.get(f"{rows}-row/argus")
        for name, rs in mine.items():
            if not rs:
                reason = f"not run: {not_run.get(name, 'no run')}"
                lines.append(f"| {name} | {rows} | {reason} |" + " |" * (len(head) - 3))
                continue
            med = medians[f"{rows}-row/{name}"]
            row = [name, str(rows)]
            row += [cells([med[a], *(getattr(r, a) for r in rs)], f) for _, a, f in FIGURES]
            for attr in ("req_per_s", "server_cpu_ms_per_req"):
                row.append(f"{med[attr] / argus[attr]:.2f}" if argus and argus[attr] else "")
            lines.append("| " + " | ".join(row) + " |")
    print("\n" + "\n".join(lines))
    client = statistics.median(r.client_cpu_share for r in runs) if runs else 0.0
    print(
        f"""
Each cell: the median [round 1, 2, ...]. {args.workers} workers per server,
onnxruntime intra-op threads = cores // workers, {args.concurrency} keep-alive connections,
{args.warmup:g} s warm-up + {args.duration:g} s measured per server and batch size; servers
one at a time, their order rotating each round. CPU ms/req: every process of the server
over the measured window, per answered request. RSS/worker: mean RSS of the processes
holding the model at the end of the run; RSS all: the sum over every process of the server
(shared pages counted in each). others %: the share of the {os.cpu_count()} cores that
processes neither the server's nor the client's used during the load (another job on the
machine). The client shares the cores and used a median {client:.0%} of them. Servers:"""
    )
    for name in args.server_names:
        print(f"  {name:<13} {CONTENDERS[name].what}")
    for name, reason in not_run.items():
        if any(r.server == name for r in runs):
            print(f"  {name} ran only in the rounds above, then {reason}")
    return medians


def by_round(r: RunResult) -> int:
    return r.round


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(p, rounds=3, rounds_help="rounds of every server")
    p.add_argument(
        "--servers", default=",".join(CONTENDERS), help="which, comma separated, in this order"
    )
    p.add_argument(
        "--peer-python",
        type=Path,
        default=REPO / ".venv-bench" / "bin" / "python",
        help="the python of the peers' venv",
    )
    p.add_argument(
        "--litserve-queue",
        choices=("zmq", "mp"),
        default="zmq",
        help="LitServe's queue: zmq (fast_queue=True) or its default multiprocessing one",
    )
    p.add_argument(
        "--no-gzip",
        action="store_true",
        help="ask for uncompressed answers (MLServer and LitServe gzip large ones by default)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each server, wait up to this many seconds for the cores to be idle",
    )
    p.add_argument(
        "--argus-tree",
        type=Path,
        help="run argus serve on the code of this source tree (say an export of a commit)",
    )
    p.add_argument("--model-home", type=Path, help="a BENTOML_HOME holding argus-digits")
    args = p.parse_args(argv)
    check_load_args(p, args)
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not set(args.server_names) <= set(CONTENDERS) or len(set(args.server_names)) < len(
        args.server_names
    ):
        p.error(f"--servers takes distinct ones of {', '.join(CONTENDERS)}")
    args.peer_python = args.peer_python.absolute()  # not resolved: a venv's python is a link
    if args.argus_tree and not args.argus_tree.is_dir():
        p.error("--argus-tree must be a source tree")
    return args


def load_server(
    server: Server,
    contender: Contender,
    requests: dict[int, list[Body]],
    expected: dict[int, list[list[int]]],
    rnd: int,
    args: argparse.Namespace,
) -> tuple[list[PeerRun], list[str]]:
    """Check every answer ``server`` gives, then load it at each batch size: the runs
    and what went wrong."""
    problems = []
    checks = [
        (body, labels)
        for rows in requests
        for body, labels in zip(requests[rows], expected[rows], strict=True)
    ]
    encodings: set[str] = set()
    wrong = check_answers(server, contender, checks, encodings)
    if wrong:
        problems.append(f"{contender.name} round {rnd}: {wrong}")
    if encodings - {"identity"}:
        print(f"  {contender.name} answers with content encodings {sorted(encodings)}")
    runs = []
    for rows in args.batch_sizes:
        result = PeerRun(contender.name, f"{rows}-row", rows, rnd)
        load = run_load(
            server,
            result,
            requests[rows],
            path=contender.path,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            scrape_interval=0,
        )
        measure(server, result, load)
        runs.append(result)
        print(
            f"  {result.config:>7} {contender.name:<13} {result.req_per_s:7.1f} req/s  "
            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.1f} ms  "
            f"CPU {result.server_cpu_ms_per_req:5.2f} ms/req  "
            f"RSS {result.rss_mb:4.0f}/{result.total_rss_mb:4.0f} MB  "
            f"others {result.other_cpu_share:4.0%}  errors {result.failures}  "
            f"connections {result.connections_per_worker}",
            flush=True,
        )
        where = f"{contender.name} {result.config} round {rnd}"
        problems += [f"{where}: {e}" for e in result.failure_examples]
    return runs, problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="argus-peers-"))
    runs: list[PeerRun] = []
    not_run: dict[str, str] = {}
    problems: list[str] = []
    current: Server | None = None
    try:
        if args.model_home:
            store, version = args.model_home.resolve(), newest_version(args.model_home)
        else:
            print(f"training {MODEL} into a temporary store ...", flush=True)
            store, version = train(root / "train")
        onnx = store / "models" / MODEL / version / "model.onnx"
        print(f"model {MODEL}:{version} ({onnx})", flush=True)
        samples = {rows: sample_rows(rows) for rows in args.batch_sizes}
        expected = {rows: [reference_labels(onnx, X) for X in samples[rows]] for rows in samples}
        for name in args.server_names:
            reason = None if name in PROJECT else cannot_run(name, args.peer_python)
            if reason:
                not_run[name] = reason
                print(f"{name}: not run: {reason}", flush=True)
        names = [n for n in args.server_names if n not in not_run]
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % max(1, len(names))
            for name in names[shift:] + names[:shift]:
                if name in not_run:
                    continue
                contender = CONTENDERS[name]
                busy = wait_quiet(args.quiet_wait)
                if busy >= 0.10:
                    print(f"round {rnd}: the machine is {busy:.0%} busy; {name} goes anyway")
                started = time.monotonic()
                try:
                    current = start(name, root, store, onnx, args)
                except Exception as exc:  # a peer that does not start here: say why, go on
                    not_run[name] = f"did not start: {last_error(str(exc))}"
                    print(f"round {rnd}: {name} {not_run[name]}", flush=True)
                    continue
                print(
                    f"round {rnd}: {name} ready in {time.monotonic() - started:.1f} s (port "
                    f"{current.port}, {len(current.worker_procs())} workers, "
                    f"{len(current.acceptor_procs())} accepting, {len(current.procs())} "
                    "processes)",
                    flush=True,
                )
                requests = {rows: [contender.encode(X) for X in samples[rows]] for rows in samples}
                if args.no_gzip:  # httpx, like most clients, accepts gzip unless told not to
                    requests = {
                        rows: [(body, {**headers, **IDENTITY}) for body, headers in bodies]
                        for rows, bodies in requests.items()
                    }
                got, wrong = load_server(current, contender, requests, expected, rnd, args)
                runs += got
                problems += wrong
                current.stop()
                current = None
        problems += [f"{n} did not run: {not_run[n]}" for n in PROJECT if n in not_run]
        medians = report(runs, not_run, args)
        if args.json:
            payload = {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": machine(),
                "model": f"{MODEL}:{version}",
                "servers": {
                    n: {"what": CONTENDERS[n].what, "not_run": not_run.get(n)}
                    for n in args.server_names
                },
                "medians": medians,
                "runs": [{**asdict(r), "rss_mb": r.rss_mb} for r in runs],  # shares: of the cores
                "problems": problems,
            }
            args.json.write_text(json.dumps(payload, indent=2))
            print(f"wrote {args.json}")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        if current is not None:
            current.stop()
    return finish(root, args.keep, problems)


if __name__ == "__main__":
    sys.exit(main())
