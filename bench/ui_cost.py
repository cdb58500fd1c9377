"""What the monitoring console costs: ``/predict`` with it and without it, and one page load.

Two measurements (``--only`` picks one):

* **predict**: ``argus serve`` in two configurations, one at a time, interleaved over
  rounds (their order alternating), each from a fresh home: **quiet**, no history writer
  (``ARGUS_HISTORY_SECONDS=0``) and no page open; and **console**, the history writer at
  ``--history-seconds`` and a browser-like client that opens ``/ui/model/argus-digits``
  (the page and its three assets) when the server is ready and then does what
  ``service/ui_assets/console.js``'s model page does every ``--page-interval`` seconds
  after the previous refresh ended: ``/models`` and ``/monitoring``, then
  ``/monitoring/history`` (since the last point it has, at first the last hour) and
  ``/monitoring/scores``, ``/monitoring/compare`` only while the model has a candidate,
  then ``/monitoring/feature`` of the feature the drift table puts first. The load is
  ``bench/serving.py``'s closed loop with its client (``--concurrency`` keep-alive
  connections spread over the workers, 1-row and 64-row ``/predict``, ``/metrics`` scraped
  every ``--scrape-interval`` seconds on both); the page stays open across the batch sizes.
  Prints req/s, p50/p99 and server CPU ms per request of each, and console / quiet.
* **page**: the server work of one load of a model's page for a 784-feature model,
  in-process: scikit-learn's digits upscaled to 28x28 with a little noise (as
  ``bench/window_figures.py``) written as IDX files and trained with ``argus train
  --source mnist:DIR``; 1000 predictions of 100-row requests through ``ArgusCore``, every
  row labelled through its feedback, an hour of history points every 10 s, all in a
  SQLite state. The requests the browser makes on load then go, one after the other,
  through the service's own Starlette routes (``service.service.read_api``) with
  ``httpx.ASGITransport``: the page's HTML, its assets, ``/models``, ``/monitoring`` (784
  features), ``/monitoring/history``, ``/monitoring/scores``, ``/monitoring/feature``.
  The figure cache is emptied before each load (cold); the reference profile stays loaded,
  as in a worker that has served before. Prints the median over ``--repeat`` loads of each
  request and of the whole, next to the 300 ms target. No HTTP: parsing and sending the
  bytes over loopback are not counted.

    .venv/bin/python bench/ui_cost.py
    .venv/bin/python bench/ui_cost.py --only predict --rounds 4
    .venv/bin/python bench/ui_cost.py --only page --repeat 15

Exits non-zero if a server fails to start, a ``/predict``, a scrape or a page request is
not 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from bench/
    sys.path.insert(0, str(REPO))

from bench.servers import (  # noqa: E402
    MODEL,
    Server,
    add_load_args,
    check_load_args,
    finish,
    make_server,
    newest_version,
    train,
)
from bench.serving import RunResult, make_bodies, run_load  # noqa: E402
from bench.window_figures import wide_digits  # noqa: E402

CONFIGS = ("quiet", "console")
"""quiet: no history writer, no page; console: the history writer and a page open."""
ASSETS = ("console.js", "console.css", "icon.svg")
RANGE_SECONDS = 3600.0
"""The page's default range (1 h): its first ``/monitoring/history`` asks since then."""
PAGE_TARGET_MS = 300.0
HISTORY_CADENCE = 10.0
"""The page measurement's history: one point every this many seconds over the range."""


# -- the browser ----------------------------------------------------------------------


@dataclass
class PageLog:
    """What the browser-like client did while a server ran."""

    loads: int = 0  # the page itself (HTML and assets)
    refreshes: int = 0  # the model page's refreshes (its JSON requests)
    requests: int = 0
    history_points: int = 0  # new points /monitoring/history gave (the writer's work)
    refresh_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def first_feature(mon: dict[str, Any]) -> int | None:
    """The feature the drift table lists first, unsorted: drifted ones first, then by PSI
    (descending), then by index (``sortedFeatures`` in ``console.js``)."""
    drift = mon.get("drift") or {}
    features = drift.get("features") or []
    if not features:
        return None
    best = min(features, key=lambda f: (-bool(f["drifted"]), -f["psi"], f["index"]))
    return int(best["index"])


async def browse(url: str, model: str, interval: float, stop: asyncio.Event, log: PageLog) -> None:
    """Open the model's page and refresh it like ``console.js`` until ``stop`` is set."""

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def get(path: str, **params: Any) -> Any:
            log.requests += 1
            r = await client.get(path, params={k: v for k, v in params.items() if v is not None})
            if r.status_code // 100 != 2:
                raise RuntimeError(f"GET {path}: HTTP {r.status_code}: {r.text[:200]}")
            return r.json() if "json" in r.headers.get("content-type", "") else None

        feature: int | None = None
        last_t: float | None = None
        try:
            await get(f"/ui/model/{model}")
            for asset in ASSETS:
                await get(f"/ui/assets/{asset}")
            log.loads += 1
            while not stop.is_set():
                t0 = time.perf_counter()
                models, mon = await asyncio.gather(
                    get("/models", model=model), get("/monitoring", model=model)
                )
                since = last_t if last_t is not None else mon["generated_at"] - RANGE_SECONDS
                hist, _, _ = await asyncio.gather(
                    get("/monitoring/history", model=model, since=since),
                    get("/monitoring/scores", model=model, version=mon["version"]),
                    get("/monitoring/compare", model=model) if models.get("candidate") else none(),
                )
                log.history_points += sum(p["t"] != last_t for p in hist["points"])
                if hist["points"]:
                    last_t = hist["points"][-1]["t"]
                if feature is None:
                    feature = first_feature(mon)
                if feature is not None:
                    await get(
                        "/monitoring/feature", model=model, version=mon["version"], feature=feature
                    )
                log.refreshes += 1
                log.refresh_seconds.append(time.perf_counter() - t0)
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
        except (httpx.HTTPError, RuntimeError, KeyError, TypeError, ValueError) as exc:
            log.failures.append(f"page: {type(exc).__name__}: {exc}")


async def none() -> None:
    return None


# -- predict: quiet against console -----------------------------------------------------


def config_env(config: str, history_seconds: float) -> dict[str, str]:
    seconds = 0.0 if config == "quiet" else history_seconds
    return {"ARGUS_HISTORY_SECONDS": f"{seconds:g}"}


async def server_run(
    server: Server, config: str, rnd: int, bodies: dict[int, list[bytes]], args: Any
) -> tuple[list[RunResult], PageLog]:
    """Every batch size's closed loop on one server; with ``console``, a page open all along."""
    log = PageLog()
    stop = asyncio.Event()
    page = None
    if config == "console":
        page = asyncio.create_task(browse(server.url, MODEL, args.page_interval, stop, log))
    results = []
    try:
        for rows, batch in bodies.items():
            result = RunResult(config, f"{rows}-row", rows, rnd)
            await run_load(
                server,
                result,
                batch,
                concurrency=args.concurrency,
                warmup=args.warmup,
                duration=args.duration,
                scrape_interval=args.scrape_interval,
            )
            results.append(result)
    finally:
        stop.set()
        if page is not None:
            await page
    return results, log


def median_of(runs: list[RunResult], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def predict_cost(args: Any, root: Path, problems: list[str]) -> dict[str, Any]:
    if args.model_home:
        store, version = args.model_home.resolve(), newest_version(args.model_home)
    else:
        print("training argus-digits into a temporary store ...", flush=True)
        store, version = train(root / "train")
    onnx = store / "models" / MODEL / version / "model.onnx"
    print(f"model {MODEL}:{version}", flush=True)
    bodies = {rows: make_bodies(rows) for rows in args.batch_sizes}
    runs: list[RunResult] = []
    pages: list[dict[str, Any]] = []
    for rnd in range(1, args.rounds + 1):
        order = CONFIGS if rnd % 2 else CONFIGS[::-1]
        for config in order:
            server = make_server(
                "argus",
                root,
                store,
                onnx,
                args.workers,
                env=config_env(config, args.history_seconds),
            )
            try:
                server.start()
                print(f"round {rnd}: {config} ready (port {server.port})", flush=True)
                results, log = asyncio.run(server_run(server, config, rnd, bodies, args))
            finally:
                server.stop()
                if not args.keep:
                    shutil.rmtree(server.home, ignore_errors=True)
            for r in results:
                print(
                    f"  {r.config:>7} {config:<8} {r.req_per_s:8.1f} req/s  p50 {r.p50_ms:6.2f} ms"
                    f"  p99 {r.p99_ms:6.2f} ms  CPU {r.server_cpu_ms_per_req:5.2f} ms/req "
                    f"(bg {r.background_cpu_ms_per_req:4.2f})  scrape p50 {r.scrape_p50_ms:4.0f} ms"
                    f"  errors {r.failures + r.scrape_failures}",
                    flush=True,
                )
                problems += [f"{config} {r.config} round {rnd}: {e}" for e in r.failure_examples]
            if config == "console":
                refresh = statistics.median(log.refresh_seconds) * 1000 if log.refreshes else 0.0
                print(
                    f"  page: {log.refreshes} refreshes, {log.requests} requests, "
                    f"{log.history_points} history points, median refresh {refresh:.0f} ms "
                    f"under load, {len(log.failures)} failures",
                    flush=True,
                )
                problems += [f"round {rnd}: {f}" for f in log.failures]
                if not log.refreshes:
                    problems.append(f"round {rnd}: the page never refreshed")
                pages.append({"round": rnd, **asdict(log)})
            runs += results

    print(
        f"\n/predict, quiet (history off, no page) and console (history every "
        f"{args.history_seconds:g} s, the model page refreshing every {args.page_interval:g} s);"
        f" {args.rounds} rounds, median [per round]"
    )
    print(
        f"{'batch':<7}{'config':<9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>12}"
        f"{'bg ms/req':>11}"
    )
    ratios: dict[str, Any] = {}
    for rows in args.batch_sizes:
        by = {c: [r for r in runs if r.config == f"{rows}-row" and r.server == c] for c in CONFIGS}
        for c in CONFIGS:
            print(
                f"{rows:<7}{c:<9}{median_of(by[c], 'req_per_s'):>8.1f}"
                f"{median_of(by[c], 'p50_ms'):>8.2f}{median_of(by[c], 'p99_ms'):>8.2f}"
                f"{median_of(by[c], 'server_cpu_ms_per_req'):>12.3f}"
                f"{median_of(by[c], 'background_cpu_ms_per_req'):>11.3f}"
            )
        ratios[f"{rows}-row"] = row = {}
        for attr, label in (("req_per_s", "req/s"), ("server_cpu_ms_per_req", "CPU ms/req")):
            per_round = [
                getattr(a, attr) / getattr(b, attr)
                for a, b in zip(by["console"], by["quiet"], strict=True)
                if getattr(b, attr) > 0
            ]
            ratio = median_of(by["console"], attr) / max(1e-9, median_of(by["quiet"], attr))
            row[attr] = {"ratio": ratio, "per_round": per_round}
            rounds_text = ", ".join(f"{v:.2f}" for v in per_round)
            print(f"{'':<7}console / quiet {label}: {ratio:.3f} [{rounds_text}]")
    return {"runs": [asdict(r) for r in runs], "pages": pages, "ratios": ratios}


# -- page: one load's server work, 784 features ------------------------------------------


def write_idx(folder: Path, X: np.ndarray, y: np.ndarray) -> None:
    """``X`` (n, 784) in 0..255 and ``y`` as MNIST's ``train-*`` IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(len(X), 28, 28)
    head = bytes([0, 0, 0x08, 3]) + np.asarray(images.shape, dtype=">u4").tobytes()
    (folder / "train-images-idx3-ubyte").write_bytes(head + images.tobytes())
    labels = y.astype(np.uint8)
    head = bytes([0, 0, 0x08, 1]) + np.asarray([len(labels)], dtype=">u4").tobytes()
    (folder / "train-labels-idx1-ubyte").write_bytes(head + labels.tobytes())


def page_cost(args: Any, root: Path, problems: list[str]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X, y = wide_digits(rng)
    write_idx(root / "mnist", X, y)
    print("training a 784-feature argus-digits (upscaled digits) ...", flush=True)
    t0 = time.perf_counter()
    home = root / "wide"
    bentoml_home, version = train(home, args=["--source", f"mnist:{root / 'mnist'}"])
    print(f"model {MODEL}:{version}, trained in {time.perf_counter() - t0:.0f} s", flush=True)
    os.environ["BENTOML_HOME"] = str(bentoml_home)  # before bentoml resolves its home
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    return asyncio.run(page_loads(args, home, version, wide_digits(np.random.default_rng(1))))


async def page_loads(
    args: Any, home: Path, version: str, data: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    from service import service as svc
    from service.exposition import MetricsExposition
    from service.fleet import Fleet
    from service.handlers import ArgusCore
    from service.history import snapshot
    from service.metrics import get_metrics
    from service.runtime import ModelRuntime
    from service.settings import Settings
    from state.opener import open_state
    from state.types import FiguresPoint

    settings = Settings(home=home, model=MODEL, metrics_cache_seconds=0.0).validated()
    state = open_state(None, home, input_window=settings.input_window)
    runtime = ModelRuntime(MODEL, lambda: state.get_live(MODEL))
    runtime.refresh()
    fleet = Fleet([runtime], MODEL)
    core = ArgusCore(settings, state, fleet, get_metrics())
    exposition = MetricsExposition(settings, state, fleet)
    X, y = data  # other noise than the training rows'
    chosen = np.random.default_rng(2).choice(len(X), size=args.rows, replace=False)
    for start in range(0, args.rows, 100):
        rows = chosen[start : start + 100]
        out = await core.predict(X[rows].tolist())
        ids = [p["id"] for p in out["predictions"]]
        await core.feedback([{"id": i, "label": int(y[r])} for i, r in zip(ids, rows, strict=True)])
    state.ingest()
    figures = snapshot(exposition.compute(MODEL, version))
    now = time.time()
    points = int(RANGE_SECONDS / HISTORY_CADENCE)
    for k in range(points):
        point = {**figures, "predictions_per_s": 10.0 + k % 7}
        state.record_figures(
            FiguresPoint(MODEL, version, now - (points - 1 - k) * HISTORY_CADENCE, point),
            keep_seconds=settings.history_retention_seconds,
            keep_points=settings.history_points,
        )
    svc._CORE, svc._EXPOSITION = core, exposition
    transport = httpx.ASGITransport(app=svc.read_api)
    sizes: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://argus") as client:

            async def timed(key: str, path: str, **params: Any) -> tuple[float, Any]:
                t0 = time.perf_counter()
                r = await client.get(path, params=params)
                seconds = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
                sizes[key] = len(r.content)
                doc = r.json() if "json" in r.headers.get("content-type", "") else None
                return seconds, doc

            async def load() -> dict[str, float]:
                exposition._cache.clear()  # cold: no window figures cached
                exposition._compared.clear()
                t: dict[str, float] = {}
                t["page"], _ = await timed("page", f"/ui/model/{MODEL}")
                t["assets"] = 0.0
                for asset in ASSETS:
                    t["assets"] += (await timed(asset, f"/ui/assets/{asset}"))[0]
                t["/models"], models = await timed("/models", "/models", model=MODEL)
                t["/monitoring"], mon = await timed("/monitoring", "/monitoring", model=MODEL)
                since = mon["generated_at"] - RANGE_SECONDS
                t["/monitoring/history"], hist = await timed(
                    "/monitoring/history", "/monitoring/history", model=MODEL, since=since
                )
                if len(hist["points"]) != points:
                    raise RuntimeError(f"{len(hist['points'])} history points, not {points}")
                t["/monitoring/scores"], _ = await timed(
                    "/monitoring/scores", "/monitoring/scores", model=MODEL, version=mon["version"]
                )
                if models.get("candidate"):
                    t["/monitoring/compare"], _ = await timed(
                        "/monitoring/compare", "/monitoring/compare", model=MODEL
                    )
                feature = first_feature(mon)
                if feature is None or len(mon["drift"]["features"]) != 784:
                    raise RuntimeError("/monitoring has no drift table of 784 features")
                t["/monitoring/feature"], _ = await timed(
                    "/monitoring/feature",
                    "/monitoring/feature",
                    model=MODEL,
                    version=mon["version"],
                    feature=feature,
                )
                t["total"] = sum(t.values())
                return t

            first = await load()  # the profile is read from the store on first use
            loads = [await load() for _ in range(args.repeat)]
            _, mon = await timed("/monitoring", "/monitoring", model=MODEL)
    finally:
        svc._CORE, svc._EXPOSITION = None, None
        state.close()

    ms = {k: [load[k] * 1000 for load in loads] for k in loads[0]}
    print(
        f"\none page load's server work, {MODEL} with 784 features, {args.rows} rows labelled, "
        f"{points} history points; in-process, cold figure cache, median of {args.repeat}"
    )
    drifted = sum(f["drifted"] for f in mon["drift"]["features"])
    print(
        f"{drifted} of 784 features drifted; the histogram drawn: feature {first_feature(mon)}; "
        f"estimated accuracy {mon['estimated_accuracy']:.3f}, accuracy "
        f"{mon['performance']['accuracy']:.3f} on {mon['windows']['labels']} labels"
    )
    print(f"{'request':<22}{'median ms':>10}{'max ms':>9}{'bytes':>10}")
    for key, values in ms.items():
        size = sum(sizes[a] for a in ASSETS) if key == "assets" else sizes.get(key)
        print(
            f"{key:<22}{statistics.median(values):>10.1f}{max(values):>9.1f}"
            f"{'' if size is None else size:>10}"
        )
    total = statistics.median(ms["total"])
    verdict = "within" if total <= PAGE_TARGET_MS else "OVER"
    print(
        f"total {total:.1f} ms against the {PAGE_TARGET_MS:.0f} ms target: {verdict} "
        f"(ratio {total / PAGE_TARGET_MS:.2f}); the first load of the process, profile read "
        f"from the store: {first['total'] * 1000:.1f} ms"
    )
    return {
        "median_ms": {k: statistics.median(v) for k, v in ms.items()},
        "max_ms": {k: max(v) for k, v in ms.items()},
        "first_load_ms": first["total"] * 1000,
        "bytes": sizes,
        "target_ms": PAGE_TARGET_MS,
        "within_target": total <= PAGE_TARGET_MS,
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("predict", "page"), help="one of the two measurements")
    add_load_args(p, rounds=4, rounds_help="quiet/console alternations")
    p.add_argument("--scrape-interval", type=float, default=2.0, help="0 disables scraping")
    p.add_argument("--history-seconds", type=float, default=10.0, help="console's cadence")
    p.add_argument("--page-interval", type=float, default=3.0, help="the page's refresh pause")
    p.add_argument("--repeat", type=int, default=15, help="page loads timed")
    p.add_argument("--rows", type=int, default=1000, help="page: rows predicted and labelled")
    p.add_argument("--model-home", type=Path, help="a BENTOML_HOME holding argus-digits")
    args = p.parse_args(argv)
    check_load_args(p, args)
    if args.history_seconds <= 0 or args.page_interval <= 0 or args.repeat < 1:
        p.error("--history-seconds > 0, --page-interval > 0 and --repeat >= 1")
    if args.rows < 100 or args.rows % 100:
        p.error("--rows is a multiple of 100 (requests of 100 rows)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="argus-ui-cost-"))
    problems: list[str] = []
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    steps: list[tuple[str, Callable[[Any, Path, list[str]], dict[str, Any]]]] = [
        ("predict", predict_cost),
        ("page", page_cost),
    ]
    try:
        for name, step in steps:
            if args.only in (None, name):
                out[name] = step(args, root, problems)
        if args.json:
            args.json.write_text(json.dumps({**out, "problems": problems}, indent=2))
            print(f"wrote {args.json}")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return finish(root, args.keep, problems)


if __name__ == "__main__":
    sys.exit(main())
