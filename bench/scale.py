"""How the monitoring's cost grows with model size: 64 against 784 features.

For each model of ``--models`` (by default the 64-feature ``argus-digits``, 64-100-10, and
the 784-feature ``argus-digits784``, an MNIST-shaped 784-512-256-10 trained on the digits
resized to 28x28; see ``bench/servers.py``'s ``BENCH_MODELS``), trained into a temporary
store, Argus and the bare service of ``bench/serving.py`` serve the same ``model.onnx``,
one at a time, interleaved (bare, argus) over ``--rounds`` rounds, each from a fresh home,
under ``serving.py``'s closed loop at each batch size of ``--batches``. The rows sent are
real digits (the 784-feature model's come from its held-out test split), and every round
both servers must give the same labels to the same rows. Then, per model, batch size and
round:

* req/s and server CPU ms per request of each server (``serving.py``'s measurement);
* the monitoring's CPU per row: (Argus CPU per request - bare CPU per request) / rows, in
  microseconds;
* the monitoring's share of a request: that difference / Argus CPU per request;
* the window figures' time at a scrape: once the load has ended, ``--scrapes`` GETs of
  ``/metrics`` on Argus, each after the figure cache (``ARGUS_METRICS_CACHE_SECONDS``,
  1 s) has expired, so each computes every window figure (drift on every feature,
  prediction drift, anomaly ratio, ...) over the input window the load filled; their
  median latency, and the server CPU they took. Every worker has read the reference
  profile before (one untimed scrape each, when the server is ready).

By default nothing scrapes ``/metrics`` during the load (``--scrape-interval 0``), so the
per-row figures hold the per-request monitoring (validation, anomaly scores, ids, the
prediction log) and the figures' cost is the last column alone; the history writer
(every 10 s, as users run it) still computes the figures in the background. Prints one
markdown table, each cell the median over rounds and [each round].

    .venv/bin/python bench/scale.py                          # 3 rounds, 6 s per config
    .venv/bin/python bench/scale.py --rounds 1 --duration 3 --json scale.json

Exits non-zero if a server fails to start, a response is not 2xx, or the servers disagree
on the labels of the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from bench/
    sys.path.insert(0, str(REPO))

from bench.servers import (  # noqa: E402
    BENCH_MODELS,
    Server,
    add_load_args,
    check_load_args,
    finish,
    machine,
    make_server,
    open_balanced,
)
from bench.serving import (  # noqa: E402
    RunResult,
    check_labels,
    encode,
    over,
    prepare_model,
    request_rows,
    run_load,
)
from service.settings import Settings  # noqa: E402

SERVERS = ("bare", "argus")
SCRAPE_SETTLE = 1.5
"""Seconds between the end of a load and the first timed scrape: the workers finish
ingesting their journals into the shared state."""
SCRAPE_SPACING = 1.2
"""Seconds between timed scrapes: longer than the figure cache (1 s by default)."""


@dataclass
class Scrapes:
    """Timed ``GET /metrics`` after a load: latency and the server's CPU, in ms each."""

    latency_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    kb: float = 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latency_ms) if self.latency_ms else 0.0

    @property
    def cpu_p50_ms(self) -> float:
        return statistics.median(self.cpu_ms) if self.cpu_ms else 0.0


async def warm_scrapes(server: Server) -> None:
    """One ``GET /metrics`` on each worker, so that every worker has read the version's
    reference profile from the store before a scrape is timed (a cold worker's first
    scrape does, and a 784-feature profile is about 5 MB of JSON)."""
    clients, _ = await open_balanced(server, server.workers)
    try:
        for client in clients:
            (await client.get("/metrics")).raise_for_status()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def time_scrapes(server: Server, n: int) -> Scrapes:
    """``n`` ``GET /metrics`` on an idle ``server``, ``SCRAPE_SPACING`` s apart, after
    ``SCRAPE_SETTLE`` s; each one's latency and the CPU the whole server took meanwhile."""
    seen = Scrapes()
    time.sleep(SCRAPE_SETTLE)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for k in range(n):
            if k:
                time.sleep(SCRAPE_SPACING)
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            r = client.get("/metrics")
            seen.latency_ms.append((time.perf_counter() - t0) * 1000.0)
            seen.cpu_ms.append((server.cpu_seconds() - cpu0) * 1000.0)
            r.raise_for_status()
            seen.kb = len(r.content) / 1024
    return seen


def run_model(
    key: str, root: Path, args: argparse.Namespace, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every round of ``key``'s model: both servers, every batch size; appends one entry
    per (server, batch size, round) to ``runs``; returns what the model is."""
    name = BENCH_MODELS[key].name
    store, version, onnx = prepare_model(key, root / key)
    card = json.loads((store / "models" / name / version / "card.json").read_text())
    bodies = {
        rows: [encode("predict", X) for X in request_rows(key, store, version, rows)]
        for rows in args.batch_sizes
    }
    check_rows = request_rows(key, store, version, max(args.batch_sizes))[0]
    first: list[int] | None = None  # labels of check_rows from the first server run
    for rnd in range(1, args.rounds + 1):
        for kind in SERVERS:
            server = make_server(kind, root, store, onnx, args.workers, model=name)
            try:
                started = time.monotonic()
                server.start()
                print(
                    f"{name} round {rnd}: {kind} ready in {time.monotonic() - started:.1f} s",
                    flush=True,
                )
                got = check_labels(server, "predict", check_rows, name)
                first = got if first is None else first
                if got != first:
                    raise RuntimeError(f"{name} round {rnd}: {kind} changed the labels of the rows")
                asyncio.run(warm_scrapes(server))
                for rows in args.batch_sizes:
                    result = RunResult(kind, f"{rows}-row", rows, rnd)
                    asyncio.run(
                        run_load(
                            server,
                            result,
                            bodies[rows],
                            concurrency=args.concurrency,
                            warmup=args.warmup,
                            duration=args.duration,
                            scrape_interval=args.scrape_interval,
                        )
                    )
                    if result.failures or result.scrape_failures:
                        raise RuntimeError(
                            f"{name} {kind} {rows}-row round {rnd}: "
                            f"{'; '.join(result.failure_examples)}\n{server.log()[-3000:]}"
                        )
                    scrapes = time_scrapes(server, args.scrapes)
                    runs.append({"model": key, **asdict(result), "idle_scrapes": asdict(scrapes)})
                    print(
                        f"  {rows:>3}-row {kind:<5} {result.req_per_s:8.1f} req/s  "
                        f"CPU {result.server_cpu_ms_per_req:6.2f} ms/req  "
                        f"scrape {scrapes.p50_ms:7.1f} ms ({scrapes.cpu_p50_ms:.0f} ms CPU, "
                        f"{scrapes.kb:.0f} kB)",
                        flush=True,
                    )
            finally:
                server.stop()
    return {
        "key": key,
        "model": f"{name}:{version}",
        "features": card["n_features"],
        "hidden": card["config"]["hidden"],
        "test_accuracy": card["metrics"]["accuracy"],
        "training_time_s": card["training"]["training_time_s"],
        "profile_reference_rows": card["profile"]["n_reference"],
    }


def cell(values: list[float], fmt: str) -> str:
    """The median, then each round in brackets."""
    rounds = " ".join(f"{v:{fmt}}" for v in values)
    return f"{statistics.median(values):{fmt}} [{rounds}]"


COLUMNS = (  # header, key of a round's figures, format
    ("Argus req/s", "argus_req_per_s", ".0f"),
    ("bare req/s", "bare_req_per_s", ".0f"),
    ("Argus / bare", "req_per_s_ratio", ".2f"),
    ("Argus CPU ms/req", "argus_cpu_ms", ".2f"),
    ("bare CPU ms/req", "bare_cpu_ms", ".2f"),
    ("monitoring CPU µs/row", "monitoring_us_per_row", ".0f"),
    ("monitoring share", "monitoring_share", ".2f"),
    ("scrape ms (CPU ms)", "scrape_ms", ".0f"),
)


def figures(runs: list[dict[str, Any]], key: str, rows: int) -> dict[str, list[float]]:
    """Per round of ``key``'s model at ``rows`` rows: every column's figure."""
    mine = {(r["server"], r["round"]): r for r in runs if (r["model"], r["rows"]) == (key, rows)}
    out: dict[str, list[float]] = {k: [] for _, k, _ in COLUMNS}
    out["scrape_cpu_ms"] = []
    for rnd in sorted({k for _, k in mine}):
        if ("bare", rnd) not in mine or ("argus", rnd) not in mine:
            continue
        bare, argus = mine["bare", rnd], mine["argus", rnd]
        a_cpu, b_cpu = argus["server_cpu_ms_per_req"], bare["server_cpu_ms_per_req"]
        scrapes = argus["idle_scrapes"]
        for k, v in (
            ("argus_req_per_s", argus["req_per_s"]),
            ("bare_req_per_s", bare["req_per_s"]),
            ("req_per_s_ratio", over(argus["req_per_s"], bare["req_per_s"])),
            ("argus_cpu_ms", a_cpu),
            ("bare_cpu_ms", b_cpu),
            ("monitoring_us_per_row", (a_cpu - b_cpu) * 1000.0 / rows),
            ("monitoring_share", over(a_cpu - b_cpu, a_cpu)),
            ("scrape_ms", statistics.median(scrapes["latency_ms"])),
            ("scrape_cpu_ms", statistics.median(scrapes["cpu_ms"])),
        ):
            out[k].append(v)
    return out


def report(
    runs: list[dict[str, Any]], models: list[dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Print the markdown table and its notes; return its rows (medians and rounds)."""
    head = ["model", "features", "rows", *(c[0] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table: list[dict[str, Any]] = []
    for model in models:
        for rows in args.batch_sizes:
            got = figures(runs, model["key"], rows)
            if not got["argus_cpu_ms"]:
                continue
            cells = [cell(got[k], fmt) for _, k, fmt in COLUMNS[:-1]]
            scrape_cpu = statistics.median(got["scrape_cpu_ms"])
            scrape = f"{cell(got['scrape_ms'], '.0f')} ({scrape_cpu:.0f})"
            lines.append(
                f"| {model['model'].split(':')[0]} | {model['features']} | {rows} | "
                + " | ".join([*cells, scrape])
                + " |"
            )
            table.append(
                {
                    "model": model["model"],
                    "features": model["features"],
                    "rows": rows,
                    **{k: statistics.median(v) for k, v in got.items()},
                    **{f"{k}_rounds": v for k, v in got.items()},
                }
            )
    print(
        f"\nHow the monitoring's cost grows with model size ({args.rounds} round(s), "
        f"{args.duration:g} s per configuration; median [round 1, 2, ...]):\n"
    )
    print("\n".join(lines))
    scraping = (
        "nothing scraped /metrics during the load"
        if args.scrape_interval <= 0
        else f"/metrics was also scraped every {args.scrape_interval:g} s during the load"
    )
    bare_scrapes = [
        v for r in runs if r["server"] == "bare" for v in r["idle_scrapes"]["latency_ms"]
    ]
    bare_scrape = statistics.median(bare_scrapes) if bare_scrapes else 0.0
    trained = "; ".join(
        f"{m['model']}: {m['features']}-{'-'.join(map(str, m['hidden']))}-10, test accuracy "
        f"{m['test_accuracy']:.4f}, {m['training_time_s']:.1f} s of training"
        for m in models
    )
    print(
        f"""
Models: {trained}.
Both servers: {args.workers} workers, onnxruntime intra-op threads = cores // workers, the
same model.onnx; closed loop of {args.concurrency} connections, {args.warmup:g} s warm-up;
{scraping}. monitoring CPU µs/row = (Argus - bare CPU ms/req) / rows;
monitoring share = that difference / Argus CPU ms/req. scrape ms: median latency of
{args.scrapes} GET /metrics on Argus after each load, the figure cache expired each time
(in brackets: the server CPU ms they took), over the default input window of
{Settings.input_window} rows; the bare service's GET /metrics took {bare_scrape:.0f} ms."""
    )
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(p, rounds=3, rounds_help="bare/argus alternations per model", duration=6.0)
    p.add_argument(
        "--models",
        default=",".join(BENCH_MODELS),
        help=f"models, comma separated, of {', '.join(BENCH_MODELS)}",
    )
    p.add_argument("--scrapes", type=int, default=3, help="timed GET /metrics after each load")
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=0.0,
        help="also scrape /metrics every this many seconds during the load (0: never)",
    )
    args = p.parse_args(argv)
    check_load_args(p, args)
    if args.scrapes < 1:
        p.error("--scrapes must be >= 1")
    args.model_keys = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_keys or not set(args.model_keys) <= set(BENCH_MODELS):
        p.error(f"--models takes {', '.join(BENCH_MODELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="argus-scale-"))
    runs: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        for key in args.model_keys:
            models.append(run_model(key, root, args, runs))
        table = report(runs, models, args)
        if args.json:
            payload = {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": machine(),
                "models": models,
                "table": table,
                "runs": runs,
            }
            args.json.write_text(json.dumps(payload, indent=2))
            print(f"wrote {args.json}")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return finish(root, args.keep, problems)


if __name__ == "__main__":
    sys.exit(main())
