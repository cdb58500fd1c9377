"""Throughput of one Argus replica with the embedded SQLite state against Redis.

Same model, same load client as ``bench/serving.py`` (closed loop, keep-alive connections
spread over the workers, ``/metrics`` scraped every 2 s), one server at a time, rounds
interleaved (sqlite, redis, sqlite, redis). With SQLite a request appends to its
worker's journal and the rows are ingested in batches; with Redis every request writes
through to a local ``redis-server`` (started here on a free loopback port, no
persistence) before it answers. Prints req/s, p50/p99 and the ratio Redis / SQLite.

``--alone`` adds both backends with requests run one by one (``ARGUS_COALESCE_WAIT_MS=0``:
one log write per request, as before requests were grouped), in the same rounds, so the
grouping's effect on each backend is measured side by side.

Run from the repo root: ``python bench/state_backends.py [--duration 15]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.servers import BIN, MODEL, Server, clean_env, free_port, newest_version, train  # noqa: E402
from bench.serving import RunResult, make_bodies, run_load  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def argus_server(kind: str, root: Path, store: Path, workers: int, redis_url: str) -> Server:
    home = root / f"{kind}-{time.monotonic_ns()}"
    shutil.copytree(store / "models" / MODEL, home / "bentoml" / "models" / MODEL)
    backend, _, alone = kind.partition("-")
    extra = {"ARGUS_STATE_URL": f"{redis_url}?prefix={home.name}:"} if backend == "redis" else {}
    if alone:
        extra["ARGUS_COALESCE_WAIT_MS"] = "0"
    env = clean_env(
        ARGUS_HOME=str(home), BENTOML_HOME=str(home / "bentoml"), ARGUS_MODEL=MODEL, **extra
    )
    port = str(free_port())
    command = [str(BIN / "argus"), "serve", "--port", port, "--workers", str(workers)]
    server = Server("argus", command, env, home, workers)
    return server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--model-home", type=Path)
    p.add_argument("--alone", action="store_true", help="also run each request alone")
    args = p.parse_args()
    kinds = ("sqlite", "redis") + (("sqlite-alone", "redis-alone") if args.alone else ())
    batches = [int(b) for b in args.batches.split(",")]
    root = Path(tempfile.mkdtemp(prefix="argus-state-bench-"))
    runs: list[tuple[str, RunResult]] = []
    failures = 0
    try:
        if args.model_home:
            store = args.model_home.resolve()
            newest_version(store)
        else:
            print("training argus-digits into a temporary store ...", flush=True)
            store, _ = train(root / "train")
        bodies = {rows: make_bodies(rows) for rows in batches}
        with RedisServer() as redis:
            for rnd in range(1, args.rounds + 1):
                for kind in kinds:
                    server = argus_server(kind, root, store, args.workers, redis.url)
                    server.start()
                    try:
                        for rows in batches:
                            result = RunResult("argus", f"{rows}-row", rows, rnd)
                            asyncio.run(
                                run_load(
                                    server, result, bodies[rows], concurrency=args.concurrency,
                                    warmup=args.warmup, duration=args.duration,
                                    scrape_interval=2.0,
                                )
                            )  # fmt: skip
                            failures += result.failures + result.scrape_failures
                            runs.append((kind, result))
                            print(
                                f"round {rnd} {kind:<12} {result.config:>7} "
                                f"{result.req_per_s:8.1f} req/s  p50 {result.p50_ms:6.2f} ms  "
                                f"p99 {result.p99_ms:6.2f} ms  errors {result.failures}",
                                flush=True,
                            )
                    finally:
                        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{'config':>7}  {'state':<13}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}   (median of rounds)"
    )
    for rows in batches:
        medians = {}
        for kind in kinds:
            mine = [r for k, r in runs if k == kind and r.rows == rows]
            medians[kind] = statistics.median(r.req_per_s for r in mine)
            print(
                f"{rows:>4}-row  {kind:<13}{medians[kind]:9.1f}"
                f"{statistics.median(r.p50_ms for r in mine):9.2f}"
                f"{statistics.median(r.p99_ms for r in mine):9.2f}"
            )
        print(f"{rows:>4}-row  Redis / SQLite req/s: {medians['redis'] / medians['sqlite']:.3f}")
        if args.alone:
            ratio = medians["redis-alone"] / medians["sqlite-alone"]
            print(f"{rows:>4}-row  Redis / SQLite req/s, requests alone: {ratio:.3f}")
    if failures:
        print(f"{failures} failed requests or scrapes", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
