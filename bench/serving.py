"""Serving benchmark: Argus (monitoring on) against a bare BentoML service, side by side.

Both servers serve the same ``model.onnx`` with the same number of workers and the same
onnxruntime threads per worker. Argus runs as users run it (``argus serve``): every
``/predict`` validates, scores anomalies and writes the durable prediction log in SQLite.
The bare service (``bench/bare_service.py``) only runs onnxruntime.

For each request shape (1-row and 64-row ``/predict`` by default) a closed-loop asyncio
httpx client keeps ``--concurrency`` requests in flight for ``--warmup`` + ``--duration``
seconds; only requests that finish after the warm-up count. Meanwhile a scraper GETs
``/metrics`` every ``--scrape-interval`` seconds from both servers, as Prometheus would;
on Argus each scrape computes the window figures (drift, anomaly ratio, ...) from the
shared state, so that cost lands inside the measured window.

Servers run one at a time, interleaved (bare, argus, bare, argus, ...), each from a fresh
home, to spread ordering and warm-cache effects; the table shows every round and the
median. The client runs on the same cores as the servers; both sides pay for it equally.

    .venv/bin/python bench/serving.py                   # 2 rounds, 15 s per configuration
    .venv/bin/python bench/serving.py --duration 5 --rounds 1 --json out.json

Exits non-zero if a server fails to start, a response is not 2xx, or the two servers
disagree on the labels of the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

try:  # imported as bench.serving (bench/load.py under the tests) or run as a script
    from bench.servers import MODEL, Server, make_server, newest_version, open_balanced, train
except ImportError:  # pragma: no cover - script
    from servers import MODEL, Server, make_server, newest_version, open_balanced, train

SERVERS = ("bare", "argus")


# -- load ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    server: str
    config: str
    rows: int
    round: int
    requests: int = 0
    seconds: float = 0.0
    req_per_s: float = 0.0
    rows_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    server_cpu_ms_per_req: float = 0.0
    background_cpu_ms_per_req: float = 0.0  # the part of it outside the workers' main threads
    client_cpu_share: float = 0.0
    scrapes: int = 0
    scrape_failures: int = 0
    scrape_p50_ms: float = 0.0
    scrape_max_ms: float = 0.0
    rss_per_worker_mb: list[float] = field(default_factory=list)
    connections_per_worker: list[int] = field(default_factory=list)

    @property
    def rss_mb(self) -> float:
        return statistics.fmean(self.rss_per_worker_mb) if self.rss_per_worker_mb else 0.0


def make_bodies(rows: int, n: int = 64, seed: int = 0) -> list[bytes]:
    """``n`` request bodies of ``rows`` real digit rows each (sklearn's bundled digits)."""
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(float)
    rng = np.random.default_rng(seed)
    return [
        json.dumps({"instances": X[rng.choice(len(X), size=rows)].tolist()}).encode()
        for _ in range(n)
    ]


async def run_load(
    server: Server,
    result: RunResult,
    bodies: list[bytes],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    scrape_interval: float,
) -> RunResult:
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    scrape_latencies: list[float] = []
    failures: list[str] = []
    scrape_failures: list[str] = []
    expect = "argus_window_rows" if server.kind == "argus" else "bentoml_service_request"
    clients, result.connections_per_worker = await open_balanced(server, concurrency)
    loop_start = time.perf_counter()
    window_start = loop_start + warmup
    window_end = window_start + duration

    async def sender(client: httpx.AsyncClient, k: int) -> None:
        i = k
        while time.perf_counter() < window_end:
            body = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", content=body, headers=headers)
                ok = r.status_code // 100 == 2
                if not ok:
                    failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                failures.append(f"{type(exc).__name__}: {exc}")
            t1 = time.perf_counter()
            if ok and window_start <= t1 <= window_end:
                latencies.append(t1 - t0)

    async def scraper() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            while True:
                t0 = time.perf_counter()
                try:
                    r = await client.get("/metrics")
                    if r.status_code != 200 or expect not in r.text:
                        scrape_failures.append(f"/metrics: HTTP {r.status_code} or no {expect}")
                    elif window_start <= t0 < window_end:
                        scrape_latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    scrape_failures.append(f"/metrics: {type(exc).__name__}: {exc}")
                await asyncio.sleep(max(0.0, scrape_interval - (time.perf_counter() - t0)))

    async def sample_cpu() -> tuple[float, float, float, float, float]:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        s0, b0, c0 = server.cpu_seconds(), server.background_cpu_seconds(), time.process_time()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        s1, b1 = server.cpu_seconds(), server.background_cpu_seconds()
        return s1 - s0, b1 - b0, c0, time.process_time()

    try:
        scrape_task = asyncio.create_task(scraper()) if scrape_interval > 0 else None
        cpu_task = asyncio.create_task(sample_cpu())
        await asyncio.gather(*(sender(c, k) for k, c in enumerate(clients)))
        server_cpu, background_cpu, c0, c1 = await cpu_task
        if scrape_task is not None:
            scrape_task.cancel()
            await asyncio.gather(scrape_task, return_exceptions=True)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    lat_ms = np.asarray(latencies) * 1000.0
    result.seconds = duration
    result.requests = len(latencies)
    result.req_per_s = len(latencies) / duration
    result.rows_per_s = result.req_per_s * result.rows
    if len(lat_ms):
        result.p50_ms, result.p90_ms, result.p99_ms = (
            float(v) for v in np.percentile(lat_ms, [50, 90, 99])
        )
        result.max_ms = float(lat_ms.max())
    result.failures = len(failures)
    result.failure_examples = sorted(set(failures))[:5]
    result.server_cpu_ms_per_req = max(0.0, server_cpu) * 1000.0 / max(1, len(latencies))
    result.background_cpu_ms_per_req = max(0.0, background_cpu) * 1000.0 / max(1, len(latencies))
    result.client_cpu_share = (c1 - c0) / duration / (os.cpu_count() or 1)
    result.scrapes = len(scrape_latencies)
    result.scrape_failures = len(scrape_failures)
    result.failure_examples += sorted(set(scrape_failures))[:3]
    if scrape_latencies:
        result.scrape_p50_ms = statistics.median(scrape_latencies) * 1000.0
        result.scrape_max_ms = max(scrape_latencies) * 1000.0
    result.rss_per_worker_mb = server.worker_rss_mb()
    return result


def check_labels(server: Server, body: bytes) -> list[int]:
    """One request outside the measurement: its shape, and the labels it returns."""
    r = httpx.post(
        f"{server.url}/predict",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    r.raise_for_status()
    preds = r.json()["predictions"]
    n = len(json.loads(body)["instances"])
    if len(preds) != n or any(len(p["probabilities"]) != 10 for p in preds):
        raise RuntimeError(f"{server.kind}: malformed /predict response: {r.text[:300]}")
    return [int(p["label"]) for p in preds]


# -- report -------------------------------------------------------------------------------


def median_row(runs: list[RunResult]) -> RunResult:
    first = runs[0]
    med = RunResult(first.server, first.config, first.rows, round=0)
    for name in (
        "req_per_s",
        "rows_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "server_cpu_ms_per_req",
        "background_cpu_ms_per_req",
        "client_cpu_share",
        "scrape_p50_ms",
        "scrape_max_ms",
    ):
        setattr(med, name, statistics.median(getattr(r, name) for r in runs))
    med.requests = sum(r.requests for r in runs)
    med.failures = sum(r.failures for r in runs)
    med.scrapes = sum(r.scrapes for r in runs)
    med.scrape_failures = sum(r.scrape_failures for r in runs)
    med.rss_per_worker_mb = [statistics.median(r.rss_mb for r in runs)]
    return med


def format_row(r: RunResult, label: str) -> str:
    return (
        f"{r.config:>7}  {r.server:<6} {label:>6}  {r.req_per_s:8.1f}  {r.rows_per_s:9.0f}  "
        f"{r.p50_ms:7.2f}  {r.p99_ms:7.2f}  {r.rss_mb:8.1f}  {r.server_cpu_ms_per_req:8.2f}  "
        f"{r.background_cpu_ms_per_req:7.2f}  {r.scrapes:7d}  {r.failures + r.scrape_failures:6d}"
    )


def report(runs: list[RunResult], args: argparse.Namespace, target: float) -> dict[str, Any]:
    header = (
        f"{'config':>7}  {'server':<6} {'round':>6}  {'req/s':>8}  {'rows/s':>9}  "
        f"{'p50 ms':>7}  {'p99 ms':>7}  {'RSS/wkr':>8}  {'srvCPU':>8}  {'bgCPU':>7}  "
        f"{'scrapes':>7}  {'errors':>6}"
    )
    print()
    print(header)
    print(f"{'':>38}{'':>29}{'MB':>8}  {'ms/req':>8}  {'ms/req':>7}")
    print("-" * len(header))
    medians: dict[tuple[str, str], RunResult] = {}
    configs = list(dict.fromkeys(r.config for r in runs))
    present = [s for s in SERVERS if any(r.server == s for r in runs)]
    for config in configs:
        for server in present:
            mine = [r for r in runs if r.config == config and r.server == server]
            for r in mine:
                print(format_row(r, str(r.round)))
            medians[config, server] = median_row(mine)
            print(format_row(medians[config, server], "median"))
        print("-" * len(header))
    ratios: dict[str, Any] = {}
    if len(present) == len(SERVERS):
        print(f"\nArgus / bare (target: req/s ratio >= {target:.2f}):")
    for config in configs if len(present) == len(SERVERS) else []:
        bare, argus = medians[config, "bare"], medians[config, "argus"]
        ratio = argus.req_per_s / bare.req_per_s if bare.req_per_s else 0.0
        pairs = zip(
            [r for r in runs if r.config == config and r.server == "argus"],
            [r for r in runs if r.config == config and r.server == "bare"],
            strict=True,
        )
        per_round = [a.req_per_s / b.req_per_s if b.req_per_s else 0.0 for a, b in pairs]
        cpu_ratio = (
            bare.server_cpu_ms_per_req / argus.server_cpu_ms_per_req
            if argus.server_cpu_ms_per_req
            else 0.0
        )
        verdict = "meets target" if ratio >= target else "BELOW TARGET"
        rounds = ", ".join(f"{x:.3f}" for x in per_round)
        print(
            f"  {config:>7}: req/s {ratio:.3f} (ratio of medians; per round {rounds})  "
            f"{verdict}\n"
            f"           CPU cost bare/Argus per request {cpu_ratio:.3f} "
            f"({bare.server_cpu_ms_per_req:.2f} vs {argus.server_cpu_ms_per_req:.2f} ms)"
        )
        ratios[config] = {
            "req_per_s_ratio": ratio,
            "per_round": per_round,
            "cpu_cost_ratio": cpu_ratio,
            "p99_ratio": argus.p99_ms / bare.p99_ms if bare.p99_ms else 0.0,
            "meets_target": ratio >= target,
        }

    def scrape_figures(server: str) -> str:
        mine = [r for r in runs if r.server == server and r.scrapes]
        if not mine:
            return f"{server}: none measured"
        p50 = statistics.median(r.scrape_p50_ms for r in mine)
        return f"{server} median {p50:.0f} ms, max {max(r.scrape_max_ms for r in mine):.0f} ms"

    if args.scrape_interval > 0:
        scrape_note = f"""GET /metrics was scraped every {
            args.scrape_interval:g} s during the load (like a fast
    Prometheus), on both servers; on Argus each scrape computes the window figures (drift,
    prediction drift, anomaly ratio, ...) from the shared state, so that cost is inside
    the measured window. Scrape latency under load: {
            "; ".join(scrape_figures(k) for k in present)
        }."""
    else:  # --scrape-interval 0
        scrape_note = "GET /metrics was not scraped: no window figures were computed."
    client_share = statistics.median(r.client_cpu_share for r in runs)
    print(
        f"""
Notes:
  * Argus runs with monitoring on: every /predict validates, scores anomalies and writes
    the durable prediction log (journal + SQLite); the bare service only runs onnxruntime
    and answers with a {
            "dict BentoML serialises"
            if args.bare_response == "dict"
            else "response serialised like Argus's (so the ratio is the monitoring's cost)"
        }.
  * Both servers: {args.workers} workers, onnxruntime intra-op threads = cores // workers,
    same model.onnx, fresh home per server; servers run one at a time, interleaved
    ({", ".join(args.server_kinds)}) x {args.rounds} round(s).
  * {scrape_note}
  * Client: closed loop, {args.concurrency} keep-alive connections spread evenly over the
    workers (checked with psutil), {args.warmup:g} s warm-up excluded, {args.duration:g} s measured
    per configuration. It runs on the same {os.cpu_count()} cores as the server and used a median
    {client_share:.0%} of them; both servers pay that cost. Other load on the machine adds
    noise to req/s and latency: compare rounds, and the CPU cost per request.
  * srvCPU ms/req: CPU seconds of the server's whole process tree over the measured
    window per completed request; less sensitive to other load than req/s. bgCPU: the
    part of it spent outside the workers' main (event-loop) threads; on Argus, ingesting
    the journals into SQLite, computing scrapes and polling the live pointer. RSS/wkr:
    mean RSS of the worker processes at the end of the run (median rows: median of rounds).
"""
    )
    return {
        "medians": {f"{c}/{s}": asdict(m) for (c, s), m in medians.items()},
        "ratios": ratios,
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per config")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--rounds", type=int, default=4, help="bare/argus alternations")
    p.add_argument("--workers", type=int, default=2, help="worker processes of each server")
    p.add_argument("--batches", default="1,64", help="rows per request, comma separated")
    p.add_argument("--scrape-interval", type=float, default=2.0, help="0 disables scraping")
    p.add_argument("--servers", default="bare,argus", help="which servers, in run order")
    p.add_argument("--target", type=float, default=0.90, help="Argus/bare req/s ratio goal")
    p.add_argument("--model-home", type=Path, help="a BENTOML_HOME holding argus-digits")
    p.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument(
        "--bare-response",
        choices=("raw", "dict"),
        default="raw",
        help="raw: the bare service serialises like Argus (isolates the monitoring cost); "
        "dict: it returns a dict for BentoML to serialise (a conventional BentoML service)",
    )
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        p.error("--duration > 0, --warmup >= 0, --concurrency >= 1 and --rounds >= 1")
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error("--batches must be comma-separated integers")
    args.server_kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if not args.server_kinds or set(args.server_kinds) - set(SERVERS):
        p.error(f"--servers takes a comma-separated subset of {', '.join(SERVERS)}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batches must hold positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="argus-bench-"))
    runs: list[RunResult] = []
    problems: list[str] = []
    current: Server | None = None
    try:
        if args.model_home:
            store, version = args.model_home.resolve(), newest_version(args.model_home)
        else:
            print("training argus-digits into a temporary store ...", flush=True)
            store, version = train(root / "train")
        onnx = store / "models" / MODEL / version / "model.onnx"
        print(f"model {MODEL}:{version} ({onnx})", flush=True)
        bodies = {rows: make_bodies(rows) for rows in args.batch_sizes}
        check_body = bodies[max(args.batch_sizes)][0]
        labels: dict[str, list[int]] = {}
        for rnd in range(1, args.rounds + 1):
            for kind in args.server_kinds:
                current = make_server(kind, root, store, onnx, args.workers, args.bare_response)
                started = time.monotonic()
                current.start()
                print(
                    f"round {rnd}: {kind} ready in {time.monotonic() - started:.1f} s "
                    f"(port {current.port}, {len(current.worker_procs())} workers)",
                    flush=True,
                )
                labels.setdefault(kind, check_labels(current, check_body))
                for rows in args.batch_sizes:
                    result = RunResult(kind, f"{rows}-row", rows, rnd)
                    asyncio.run(
                        run_load(
                            current,
                            result,
                            bodies[rows],
                            concurrency=args.concurrency,
                            warmup=args.warmup,
                            duration=args.duration,
                            scrape_interval=args.scrape_interval,
                        )
                    )
                    runs.append(result)
                    print(
                        f"  {result.config:>7} {kind:<6} {result.req_per_s:8.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.failures + result.scrape_failures}  "
                        f"connections/worker {result.connections_per_worker}",
                        flush=True,
                    )
                    for example in result.failure_examples:
                        problems.append(f"{kind} {result.config} round {rnd}: {example}")
                    if result.failures or result.scrape_failures:
                        code = current.proc.poll() if current.proc else None
                        state = "running" if code is None else f"exited with {code}"
                        problems.append(
                            f"{kind} server {state}; its log ends:\n{current.log()[-3000:]}"
                        )
                current.stop()
                current = None
        if len(labels) == len(SERVERS) and labels["bare"] != labels["argus"]:
            problems.append("bare and argus return different labels for the same rows")
        summary = report(runs, args, args.target)
        if args.json:
            payload = {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "model": f"{MODEL}:{version}",
                "runs": [{**asdict(r), "rss_mb": r.rss_mb} for r in runs],
                **summary,
                "problems": problems,
            }
            args.json.write_text(json.dumps(payload, indent=2))
            print(f"wrote {args.json}")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        if current is not None:
            current.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if problems:
        print(f"\nFAILED ({len(problems)} problem(s)):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
