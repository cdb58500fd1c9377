"""Where one Argus worker's CPU goes under load: py-spy samples, grouped by component.

Starts ``argus serve`` (2 workers) twice in one run -- with requests run one by one
(``ARGUS_COALESCE_WAIT_MS=0``, ``alone``) and grouped (the default, ``grouped``) -- drives
each with the closed loop of ``bench/serving.py`` (``--concurrency`` connections,
``--rows`` rows per request), and meanwhile samples one worker with ``py-spy record``
(all its threads, idle time left out). Each sample's stack is put in the first component
whose pattern one of its frames matches, innermost frame first, so a component's share is
the CPU spent in it and below it:

    .venv/bin/python bench/profile_worker.py                 # 64-row requests, 10 s each
    .venv/bin/python bench/profile_worker.py --rows 1 --duration 15

Needs py-spy (``pip install py-spy``; it reads the worker's memory, so it runs as root or
with ptrace allowed). Prints one table: each component's share of the samples and its
CPU ms per request, for both runs side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.servers import MODEL, make_server, metric_samples  # noqa: E402
from bench.serving import RunResult, encode, prepare_model, request_rows, run_load  # noqa: E402

# (component, substrings of a frame "function (file:line)"), checked innermost frame first
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("onnxruntime session.run", ("run (onnxruntime/",)),
    ("anomaly scoring", ("monitoring/anomaly.py",)),
    ("journal append / state write", ("state/journal.py", "state/shared.py", "state/records.py",
                                      "state/redis")),
    ("journal ingestion into SQLite", ("state/sqlite",)),
    ("counters and histograms", ("prometheus_client/", "service/metrics.py")),
    ("window figures (scrapes)", ("service/exposition.py", "monitoring/", "state/windows.py")),
    ("grouping", ("service/coalesce.py",)),
    ("Argus handler (validation, answer)", ("service/handlers.py", "service/validation.py",
                                            "service/candidates.py", "service/runtime.py")),
    ("JSON and pydantic", ("pydantic", "json")),
    ("BentoML / Starlette / uvicorn (the server)", ("bentoml", "_bentoml", "starlette",
                                                   "uvicorn", "h11", "httptools", "anyio")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
]  # fmt: skip
OTHER = "other"
GROUP_METRICS = ("argus_request_groups_total", "argus_grouped_requests_total")
groups: dict[str, float] = {}  # run -> mean requests per group


def component(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, patterns in COMPONENTS:
            if any(p in frame for p in patterns):
                return name
    return OTHER


def profile(kind: str, args: argparse.Namespace, root: Path, store: Path, version: str,
            onnx: Path) -> tuple[Counter[str], float, float]:  # fmt: skip
    """Samples per component, samples per second, and requests answered per second."""
    env = {"ARGUS_COALESCE_WAIT_MS": "0"} if kind == "alone" else {}
    server = make_server("argus", root, store, onnx, args.workers, env=env)
    out = root / f"{kind}.txt"
    try:
        server.start()
        worker = server.worker_procs()[0].pid
        bodies = [encode("predict", X) for X in request_rows("digits", store, version, args.rows)]
        result = RunResult(kind, f"{args.rows}-row", args.rows, 1, "predict", "closed")
        spy = subprocess.Popen(
            [args.py_spy, "record", "--pid", str(worker), "--format", "raw", "--output",
             str(out), "--duration", str(int(args.duration)), "--rate", "200", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)
        asyncio.run(
            run_load(server, result, bodies, concurrency=args.concurrency, warmup=0.0,
                     duration=args.duration, scrape_interval=2.0)
        )  # fmt: skip
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        seen = {n: v for n, _, v in metric_samples(server, *GROUP_METRICS)}
        groups[kind] = seen.get(GROUP_METRICS[1], 0.0) / max(seen.get(GROUP_METRICS[0], 0.0), 1.0)
    finally:
        server.stop()
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[component(stack)] += int(n)
    per_worker_rps = result.req_per_s / args.workers
    return counts, sum(counts.values()) / args.duration, per_worker_rps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=64, help="rows per request")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent
                                                                      / "py-spy"))  # fmt: skip
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="argus-profile-"))
    try:
        store, version, onnx = prepare_model("digits", root)
        runs = {
            kind: profile(kind, args, root, store, version, onnx) for kind in ("alone", "grouped")
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\none worker of {args.workers} under {args.rows}-row requests, {args.concurrency} "
        f"connections, {args.duration:.0f} s each ({MODEL}); py-spy at 200 Hz, no idle\n"
    )
    print("| component | alone: share | alone: CPU ms/request | grouped: share | "
          "grouped: CPU ms/request |")  # fmt: skip
    print("|---|---|---|---|---|")
    names = [n for n, _ in COMPONENTS] + [OTHER]
    for name in names:
        cells = []
        for kind in ("alone", "grouped"):
            counts, rate, rps = runs[kind]
            total = sum(counts.values()) or 1
            busy_s = counts[name] / 200.0 / args.duration  # CPU seconds per second
            cells += [f"{counts[name] / total:.1%}", f"{1000 * busy_s / max(rps, 1e-9):.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for kind in ("alone", "grouped"):
        counts, rate, rps = runs[kind]
        busy = sum(counts.values()) / 200.0 / args.duration
        print(f"{kind}: {rps:.0f} req/s on this worker, {busy:.2f} CPU s/s sampled, "
              f"{1000 * busy / max(rps, 1e-9):.3f} CPU ms per request, "
              f"{groups.get(kind, 0):.2f} requests per group")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
