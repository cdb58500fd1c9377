"""Sustained load: a real ``argus serve`` under mixed predict and feedback traffic.

A closed-loop asyncio httpx client keeps ``--connections`` keep-alive connections (spread
evenly over the workers) busy for ``--warmup`` + ``--duration`` seconds, bounded as well by
``--max-requests``, on 127.0.0.1 only. Most requests are ``/predict`` with 1-8 real digit
rows (sklearn's bundled digits); ``--feedback-share`` of them are ``/feedback`` with the
true labels of rows answered earlier (on any worker), each id labelled once. ``/metrics``
is scraped every ``--scrape-interval`` seconds, as Prometheus would. Each worker's RSS is
sampled every second with psutil.

Criteria (the exit status is non-zero if one fails):

* zero non-2xx answers (and zero transport errors) for these valid requests;
* every label sent is accepted (the join finds every answered prediction, whichever
  worker made it) and none is reported unknown;
* the prediction log holds exactly the answered rows, and exactly the accepted labels
  (counted through the shared state, which ingests the workers' journals first);
* the RSS of each worker grows by less than ``--max-rss-growth`` (10%) from the first to
  the last 10 s of the measured period (the warm-up is not measured);
* every worker lives through the run (same pids at the end).

    .venv/bin/python bench/load.py                   # 60 s, 64 connections, 2 workers
    .venv/bin/python bench/load.py --duration 10 --connections 16 --json out.json

``drive`` is the client alone; ``tests/hardening/test_load.py`` runs it, bounded by count,
against a test server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

try:  # imported as bench.load (tests) or run as a script from bench/
    from bench.servers import MODEL, Server, make_server, newest_version, open_balanced, train
except ImportError:  # pragma: no cover - script
    from servers import MODEL, Server, make_server, newest_version, open_balanced, train


@dataclass
class LoadResult:
    """What one run sent and got back."""

    seconds: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # by kind
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # non-2xx and transport errors
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    answered_rows: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, version)
    labels_sent: int = 0
    labels_accepted: int = 0
    labels_unknown: int = 0
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # pid -> (t, bytes)

    @property
    def non_2xx(self) -> int:
        return len(self.errors)

    def percentile_ms(self, kind: str | None, q: float) -> float:
        values = (
            [v for vs in self.latencies.values() for v in vs]
            if kind is None
            else self.latencies.get(kind, [])
        )
        return float(np.percentile(values, q) * 1000.0) if values else float("nan")

    def rss_profile(self, pid: int, step: float = 10.0) -> list[float]:
        """Mean RSS (MiB) of one worker in each ``step`` seconds of the run."""
        bins: dict[int, list[int]] = {}
        for t, b in self.rss.get(pid, []):
            bins.setdefault(int(t // step), []).append(b)
        return [float(np.mean(bins[k])) / 2**20 for k in sorted(bins)]

    def rss_windows(self, start: float, end: float, window: float = 10.0) -> dict[int, Any]:
        """Per worker: mean RSS (MiB) over the first and the last ``window`` seconds."""
        out = {}
        for pid, samples in self.rss.items():
            first = [b for t, b in samples if start <= t < start + window]
            last = [b for t, b in samples if end - window <= t <= end]
            if first and last:
                f, la = float(np.mean(first)) / 2**20, float(np.mean(last)) / 2**20
                out[pid] = (f, la, (la - f) / f)
        return out


async def drive(
    clients: list[httpx.AsyncClient],
    *,
    duration: float,
    max_requests: int,
    feedback_share: float = 0.1,
    feedback_headers: dict[str, str] | None = None,
    scrape_interval: float = 0.0,
    worker_pids: Callable[[], list[int]] | None = None,
    seed: int = 0,
) -> LoadResult:
    """Closed-loop mixed traffic, one coroutine per client, until ``duration`` seconds
    passed or ``max_requests`` requests were issued; samples RSS every second when
    ``worker_pids`` is given."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data.tolist(), digits.target.tolist()
    result = LoadResult()
    pending: list[tuple[str, int]] = []  # (id, true label) of answered, unlabelled rows
    issued = 0
    start = time.monotonic()
    deadline = start + duration
    json_headers = {"content-type": "application/json"}

    def record(kind: str, t0: float, r: httpx.Response | None, exc: Exception | None) -> bool:
        result.requests[kind] += 1
        if r is None:
            result.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return False
        result.statuses[r.status_code] += 1
        if r.status_code // 100 != 2:
            result.errors.append(f"{kind}: HTTP {r.status_code}: {r.text[:200]}")
            return False
        result.latencies.setdefault(kind, []).append(time.monotonic() - t0)
        return True

    async def sender(client: httpx.AsyncClient, k: int) -> None:
        nonlocal issued
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline and issued < max_requests:
            issued += 1
            t0 = time.monotonic()
            r: httpx.Response | None = None
            exc: Exception | None = None
            if pending and rng.random() < feedback_share:
                items = [
                    pending.pop(rng.randrange(len(pending))) for _ in range(min(8, len(pending)))
                ]
                body = {"feedback": [{"id": i, "label": label} for i, label in items]}
                try:
                    r = await client.post(
                        "/feedback", json=body, headers={**json_headers, **(feedback_headers or {})}
                    )
                except httpx.HTTPError as e:
                    exc = e
                if record("feedback", t0, r, exc) and r is not None:
                    doc = r.json()
                    result.labels_sent += len(items)
                    result.labels_accepted += int(doc["accepted"])
                    result.labels_unknown += len(doc["unknown_ids"])
                continue
            n = rng.randint(1, 8)
            idx = [rng.randrange(len(X)) for _ in range(n)]
            try:
                r = await client.post(
                    "/predict", json={"instances": [X[i] for i in idx]}, headers=json_headers
                )
            except httpx.HTTPError as e:
                exc = e
            if record("predict", t0, r, exc) and r is not None:
                doc = r.json()
                result.answered_rows[(doc["model"], doc.get("version", ""))] += len(
                    doc["predictions"]
                )
                pending.extend(
                    (p["id"], y[i])
                    for p, i in zip(doc["predictions"], idx, strict=True)
                    if "id" in p
                )

    async def scraper() -> None:
        async with httpx.AsyncClient(base_url=clients[0].base_url, timeout=60) as client:
            while time.monotonic() < deadline and issued < max_requests:
                t0 = time.monotonic()
                try:  # a fresh connection per scrape: an idle keep-alive one could be
                    # closed by the server (uvicorn's 5 s keep-alive timeout) as we reuse it
                    r: httpx.Response | None = await client.get(
                        "/metrics", headers={"connection": "close"}
                    )
                    exc = None
                except httpx.HTTPError as e:
                    r, exc = None, e
                record("metrics", t0, r, exc)
                await asyncio.sleep(max(0.0, scrape_interval - (time.monotonic() - t0)))

    async def sample_rss() -> None:
        while time.monotonic() < deadline and issued < max_requests:
            now = time.monotonic() - start
            for pid in worker_pids() if worker_pids else []:
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                result.rss.setdefault(pid, []).append((now, rss))
            await asyncio.sleep(1.0)

    side: list[asyncio.Task[None]] = []
    if worker_pids is not None:
        side.append(asyncio.create_task(sample_rss()))
    if scrape_interval > 0:
        side.append(asyncio.create_task(scraper()))
    await asyncio.gather(*(sender(c, k) for k, c in enumerate(clients)))
    result.seconds = time.monotonic() - start
    for task in side:
        task.cancel()
    await asyncio.gather(*side, return_exceptions=True)
    return result


def logged(home: Path, model: str, version: str) -> tuple[int, int]:
    """(predictions, labelled) of the version in the shared state, journals ingested."""
    from state.opener import open_state

    state = open_state(None, home)
    try:
        counts = state.counts(model, version)
        return counts.predictions, counts.labelled
    finally:
        state.close()


# -- the benchmark ----------------------------------------------------------------------


def run(args: argparse.Namespace, server: Server) -> tuple[LoadResult, LoadResult, dict[str, Any]]:
    """Warm-up, then the measured period, on the same balanced connections."""
    pids = sorted(p.pid for p in server.worker_procs())

    async def go() -> tuple[LoadResult, LoadResult, list[int]]:
        clients, per_worker = await open_balanced(server, args.connections)

        async def touch(client: httpx.AsyncClient) -> None:
            # placing the connections takes seconds: refresh every one of them now, so none
            # is reused after the server closed it for idling (uvicorn: 5 s)
            for _ in range(3):
                try:
                    await client.get("/livez")
                    return
                except httpx.HTTPError:
                    continue

        try:
            await asyncio.gather(*(touch(c) for c in clients))
            warm = await drive(
                clients,
                duration=args.warmup,
                max_requests=args.max_requests,
                feedback_share=args.feedback_share,
                seed=1,
            )
            measured = await drive(
                clients,
                duration=args.duration,
                max_requests=args.max_requests,
                feedback_share=args.feedback_share,
                scrape_interval=args.scrape_interval,
                worker_pids=lambda: pids,
                seed=2,
            )
        finally:
            await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
        return warm, measured, per_worker

    warm, measured, per_worker = asyncio.run(go())
    return warm, measured, {"connections_per_worker": per_worker, "pids": pids}


def report(
    args: argparse.Namespace,
    warm: LoadResult,
    result: LoadResult,
    extra: dict[str, Any],
    version: str,
    log: tuple[int, int],
    pids_after: list[int],
) -> tuple[list[str], dict[str, Any]]:
    """Print the table; return the failed criteria and every figure."""
    answered = sum(r.answered_rows[(MODEL, version)] for r in (warm, result))
    accepted = warm.labels_accepted + result.labels_accepted
    measured_rows = result.answered_rows[(MODEL, version)]
    total = sum(result.requests.values())
    rss = result.rss_windows(0.0, result.seconds)
    secs = result.seconds
    print(f"\n{'measured':<26}{secs:.1f} s, {total} requests, {total / secs:.0f} req/s, "
          f"{measured_rows / secs:.0f} rows/s")  # fmt: skip
    print(f"  {'':<22}{'requests':>9}{'p50 ms':>10}{'p99 ms':>10}")
    for kind in ("predict", "feedback", "metrics", None):
        n = total if kind is None else result.requests[kind]
        if n:
            print(
                f"  {kind or 'all':<22}{n:>9}{result.percentile_ms(kind, 50):>10.2f}"
                f"{result.percentile_ms(kind, 99):>10.2f}"
            )
    print(f"  {'statuses':<22}{dict(sorted(result.statuses.items()))}")
    print(f"  {'connections/worker':<22}{extra['connections_per_worker']}")
    for pid, (first, last, growth) in sorted(rss.items()):
        print(
            f"  {'RSS worker ' + str(pid):<22}first 10 s {first:7.1f} MiB   "
            f"last 10 s {last:7.1f} MiB   growth {growth * 100:+6.2f}%"
        )
        print(f"  {'':<22}by 10 s: " + " ".join(f"{v:.0f}" for v in result.rss_profile(pid)))
    print(
        f"  {'prediction log':<22}answered {answered} rows (warm-up included), "
        f"logged {log[0]}; labels accepted {accepted}, labelled {log[1]}"
    )
    sent = warm.labels_sent + result.labels_sent
    unknown = warm.labels_unknown + result.labels_unknown
    non_2xx = warm.non_2xx + result.non_2xx
    checks = [
        ("zero non-2xx", non_2xx == 0, f"{non_2xx} non-2xx: {(warm.errors + result.errors)[:3]}"),
        ("every label accepted", accepted == sent and unknown == 0,
         f"sent {sent}, accepted {accepted}, unknown {unknown}"),
        ("log == answered rows", log[0] == answered, f"logged {log[0]}, answered {answered}"),
        ("log == accepted labels", log[1] == accepted, f"labelled {log[1]}, accepted {accepted}"),
        (f"RSS growth < {args.max_rss_growth:.0%}",
         len(rss) == args.workers and all(g < args.max_rss_growth for *_, g in rss.values()),
         ", ".join(f"{pid}: {g * 100:+.2f}%" for pid, (*_, g) in sorted(rss.items()))),
        ("workers alive throughout", pids_after == extra["pids"],
         f"before {extra['pids']}, after {pids_after}"),
    ]  # fmt: skip
    print()
    for name, ok, detail in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<26}{detail}")
    figures: dict[str, Any] = {
        "seconds": secs,
        "connections": args.connections,
        "workers": args.workers,
        "requests": dict(result.requests),
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "latency_ms": {
            kind or "all": {
                "p50": result.percentile_ms(kind, 50),
                "p99": result.percentile_ms(kind, 99),
            }
            for kind in ("predict", "feedback", "metrics", None)
        },
        "rss_mib": {
            str(pid): {
                "first_10s": f,
                "last_10s": la,
                "growth": g,
                "by_10s": result.rss_profile(pid),
            }
            for pid, (f, la, g) in rss.items()
        },
        "answered_rows": answered,
        "logged_rows": log[0],
        "labels": {"sent": sent, "accepted": accepted, "labelled": log[1], "unknown": unknown},
        "errors": (warm.errors + result.errors)[:10],
        "checks": {name: ok for name, ok, _ in checks},
        **extra,
    }
    return [f"{name}: {detail}" for name, ok, detail in checks if not ok], figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    p.add_argument("--workers", type=int, default=2, help="argus serve --workers")
    p.add_argument("--max-requests", type=int, default=2_000_000, help="bound on requests")
    p.add_argument("--feedback-share", type=float, default=0.1, help="share of /feedback")
    p.add_argument("--scrape-interval", type=float, default=5.0, help="/metrics; 0: never")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="first -> last 10 s")
    p.add_argument("--model-home", type=Path, help="a BENTOML_HOME holding argus-digits")
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary home and log")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="argus-load-"))
    server: Server | None = None
    failures: list[str] = []
    try:
        if args.model_home:
            store, version = args.model_home.resolve(), newest_version(args.model_home)
        else:
            print("training argus-digits into a temporary store ...", flush=True)
            store, version = train(root / "train")
        onnx = store / "models" / MODEL / version / "model.onnx"
        server = make_server("argus", root, store, onnx, args.workers)
        server.start()
        print(
            f"argus serve {MODEL}:{version}, {args.workers} workers on {server.url}; "
            f"{args.connections} connections, {args.warmup:.0f} s warm-up + "
            f"{args.duration:.0f} s measured",
            flush=True,
        )
        warm, result, extra = run(args, server)
        pids_after = sorted(p.pid for p in server.worker_procs())
        failures, figures = report(
            args, warm, result, extra, version, logged(server.home, MODEL, version), pids_after
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
            print(f"wrote {args.json}")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        if server is not None:
            failures.append(f"server log ends:\n{server.log()[-3000:]}")
    finally:
        if server is not None:
            server.stop()
        if args.keep or failures:
            print(f"kept {root} (server log and state)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failures:
        print(f"\nFAILED ({len(failures)}):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("\nPASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
