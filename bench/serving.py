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

    .venv/bin/python bench/serving.py                   # 4 rounds, 8 s per configuration
    .venv/bin/python bench/serving.py --duration 5 --rounds 1 --json out.json
    .venv/bin/python bench/serving.py --servers argus@/tmp/before,argus  # two versions
    .venv/bin/python bench/serving.py --servers argus --doors predict,oip-json,oip-binary
    .venv/bin/python bench/serving.py --shadow --rounds 3   # the cost of a shadow
    .venv/bin/python bench/serving.py --model digits784     # the 784-feature model

``--model digits784`` serves, on both servers, the MNIST-shaped MLP (784-512-256-10)
trained on scikit-learn's digits resized to 28x28 (``training/mnist_shaped.toml``) instead
of the default 64-feature one, and sends rows of its held-out test split (the split its
model card records), so the labels are meaningful and the servers must agree on them.

``argus@TREE`` is ``argus serve`` on the code of another source tree (a worktree of an
older commit, say): ratios are against ``--baseline``, by default bare if it runs, else
the first server listed.

``--doors`` adds, on Argus only, the Open Inference Protocol v2 REST beside ``/predict``:
``oip-json`` (``POST /v2/models/argus-digits/infer``, JSON in and out) and ``oip-binary``
(the binary tensor data extension both ways). Each door at each batch size is a
configuration of its own on the same server, same rows, same client; the doors' order
rotates each round, and a section of the report gives each door's figures as ratios to
``/predict``'s.

``--shadow`` measures what a shadow costs: Argus alone ("live"), then Argus with a second
stored version of the model as its shadow on ``--shadow-fraction`` of the answered rows
("live+shadow", ``POST /models/shadow``), in every round and in that order. Each runs, per
batch size, the closed loop above (saturation) and then an open loop: requests due at a
fixed rate whatever the answers, half the req/s live reached in the same round, their
latency counted from the time each was due. A section of the report gives req/s and CPU
per request at saturation, the open loop's p50 and p99 (the shadow must stay within 10%
of live), the rows the shadow dropped (``argus_candidate_dropped_total``) and the
workers' RSS.

Exits non-zero if a server fails to start, a response is not 2xx, or the servers disagree
on the labels of the same rows (every door of every server, each round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

try:  # imported as bench.serving (bench/load.py under the tests) or run as a script
    from bench.servers import (
        BENCH_MODELS,
        MODEL,
        Server,
        add_load_args,
        check_load_args,
        finish,
        live_version,
        machine,
        make_server,
        metric_samples,
        newest_version,
        open_balanced,
        set_shadow,
        stored_versions,
        train,
    )
except ImportError:  # pragma: no cover - script
    from servers import (
        BENCH_MODELS,
        MODEL,
        Server,
        add_load_args,
        check_load_args,
        finish,
        live_version,
        machine,
        make_server,
        metric_samples,
        newest_version,
        open_balanced,
        set_shadow,
        stored_versions,
        train,
    )

SERVERS = ("bare", "argus")
# argus-alone: the same argus serve with ARGUS_COALESCE_WAIT_MS=0, every request run alone
# (as before requests were grouped); only when asked for, e.g. --servers bare,argus-alone,argus
ALONE = "argus-alone"
DOORS = ("predict", "oip-json", "oip-binary")
"""How a request gets in: ``/predict``, or the Open Inference Protocol with JSON or binary
tensors (Argus only)."""
OIP_PATH = f"/v2/models/{MODEL}/infer"
OIP_INPUT = "input"
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_HEADERS = {"content-type": "application/json"}
BINARY_HEADERS = {"content-type": "application/octet-stream"}
SHADOW_SERVERS = ("live", "live+shadow")
"""``--shadow``'s two configurations of ``argus serve``, run in this order every round."""
PHASES = ("closed", "open")
"""``--shadow``'s loads at each batch size: saturation, then a fixed rate."""
OPEN_LOOP_SHARE = 0.5
"""The open loop's rate, as a share of the req/s live reached at saturation that round."""
OPEN_LOOP_DRAIN = 30.0
"""Seconds the open loop waits, after its window, for answers still due; then failures."""
LATENCY_TOLERANCE = 0.10
"""How much higher the shadow's open-loop p50 and p99 may be than live's."""


# -- load ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    server: str
    config: str
    rows: int
    round: int
    door: str = "predict"
    phase: str = "closed"  # "closed": --concurrency in flight; "open": a fixed rate
    offered_rate: float = 0.0  # the open loop's req/s
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
    send_lag_p99_ms: float = 0.0  # open loop: how late the client started requests
    rows_answered: float = 0.0  # --shadow: argus_predictions_total of live, over the run
    shadow_dropped: float = 0.0  # --shadow: argus_candidate_dropped_total, over the run

    @property
    def rss_mb(self) -> float:
        return statistics.fmean(self.rss_per_worker_mb) if self.rss_per_worker_mb else 0.0


def sample_rows(rows: int, n: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` batches of ``rows`` real digit rows each (sklearn's bundled digits)."""
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(float)
    rng = np.random.default_rng(seed)
    return [X[rng.choice(len(X), size=rows)] for _ in range(n)]


def held_out_rows(
    store: Path, version: str, rows: int, n: int = 64, seed: int = 0, model: str = MODEL
) -> list[np.ndarray]:
    """``n`` batches of ``rows`` rows each from the test split of the data ``model:version``
    was trained on: the source, fractions and seed its model card records (rows the model
    never saw, from a source that needs no download, say ``digits28``)."""
    from training.config import TrainConfig  # data and split only: no torch
    from training.data import load_dataset, split_dataset

    card = json.loads((store / "models" / model / version / "card.json").read_text())
    config = TrainConfig.from_dict(card["config"])
    data = load_dataset(config.source, config.label_column)
    X = split_dataset(data, config.val_fraction, config.test_fraction, config.seed).X_test
    rng = np.random.default_rng(seed)
    return [X[rng.choice(len(X), size=rows)].astype(float) for _ in range(n)]


def request_rows(model: str, store: Path, version: str, rows: int) -> list[np.ndarray]:
    """The rows ``--model`` sends: the default model's as always (``sample_rows``), any
    other's from its held-out test split (``held_out_rows``)."""
    if model == "digits":
        return sample_rows(rows)
    return held_out_rows(store, version, rows, model=BENCH_MODELS[model].name)


def prepare_model(key: str, root: Path, model_home: Path | None = None) -> tuple[Path, str, Path]:
    """The store, version and ``model.onnx`` of ``BENCH_MODELS[key]``: the newest version in
    ``model_home`` (a BENTOML_HOME) if given, else one trained into ``root / "train"``."""
    name = BENCH_MODELS[key].name
    if model_home:
        store, version = model_home.resolve(), newest_version(model_home, name)
    else:
        print(f"training {name} into a temporary store ...", flush=True)
        store, version = train(root / "train", args=BENCH_MODELS[key].train_args, model=name)
    onnx = store / "models" / name / version / "model.onnx"
    print(f"model {name}:{version} ({onnx})", flush=True)
    return store, version, onnx


def make_bodies(rows: int, n: int = 64, seed: int = 0) -> list[bytes]:
    """``n`` ``/predict`` bodies of ``rows`` real digit rows each."""
    return [encode("predict", X)[0] for X in sample_rows(rows, n, seed)]


def door_path(door: str, model: str = MODEL) -> str:
    return "/predict" if door == "predict" else f"/v2/models/{model}/infer"


def encode(door: str, X: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a request of ``door`` for the rows ``X``."""
    if door == "predict":
        return json.dumps({"instances": X.tolist()}).encode(), JSON_HEADERS
    tensor: dict[str, Any] = {"name": OIP_INPUT, "shape": list(X.shape), "datatype": "FP32"}
    if door == "oip-json":
        tensor["data"] = X.ravel().tolist()  # flat, row-major
        return json.dumps({"inputs": [tensor]}).encode(), JSON_HEADERS
    raw = np.ascontiguousarray(X, dtype="<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return head + raw, {**BINARY_HEADERS, HEADER_LENGTH: str(len(head))}


def answer_labels(door: str, r: httpx.Response, n: int) -> list[int]:
    """The ``n`` labels of ``door``'s answer ``r``, once its shape is checked; raises
    ``ValueError`` (or ``KeyError``, ``TypeError``) for a malformed answer."""
    if door == "predict":
        preds = r.json()["predictions"]
        if len(preds) != n or any(len(p["probabilities"]) != 10 for p in preds):
            raise ValueError("wrong number of predictions or of probabilities")
        return [int(p["label"]) for p in preds]
    body, length = r.content, r.headers.get(HEADER_LENGTH)
    if (length is None) != (door == "oip-json"):
        raise ValueError(f"{HEADER_LENGTH} is {length!r}")
    split = len(body) if length is None else int(length)
    outputs = {o["name"]: o for o in json.loads(body[:split])["outputs"]}
    blobs, offset = {}, split
    for name, o in outputs.items():  # binary outputs follow the JSON in the header's order
        size = o.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[name], offset = body[offset : offset + size], offset + size
    if offset != len(body) or (door == "oip-binary") != (set(blobs) == set(outputs)):
        raise ValueError(f"binary outputs {sorted(blobs)} of {sorted(outputs)}, {offset} bytes")
    label, probabilities = outputs["label"], outputs["probabilities"]
    if label["datatype"] != "INT64" or label["shape"] != [n] or probabilities["shape"] != [n, 10]:
        raise ValueError("wrong label or probabilities tensor")
    if door == "oip-binary":
        if len(blobs["label"]) != 8 * n:
            raise ValueError(f"label blob of {len(blobs['label'])} bytes for {n} rows")
        return np.frombuffer(blobs["label"], dtype="<i8").tolist()
    if len(label["data"]) != n:
        raise ValueError(f"{len(label['data'])} labels for {n} rows")
    return [int(v) for v in label["data"]]


@dataclass
class Observed:
    """What ``observe`` saw of the server and the client during the measured window."""

    server_cpu: float = 0.0
    background_cpu: float = 0.0
    client_cpu: float = 0.0
    scrape_latencies: list[float] = field(default_factory=list)
    scrape_failures: list[str] = field(default_factory=list)


async def observe(
    server: Server,
    work: Awaitable[None],
    *,
    window_start: float,
    window_end: float,
    scrape_interval: float,
) -> Observed:
    """Await ``work`` (the load) while a scraper GETs ``/metrics`` every
    ``scrape_interval`` seconds (0: never) and the server's and the client's CPU time are
    sampled at the window's start and end (``time.perf_counter`` times)."""
    seen = Observed()
    expect = "argus_window_rows" if server.kind == "argus" else "bentoml_service_request"

    async def scraper() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            while True:
                t0 = time.perf_counter()
                try:
                    r = await client.get("/metrics")
                    if r.status_code != 200 or expect not in r.text:
                        seen.scrape_failures.append(
                            f"/metrics: HTTP {r.status_code} or no {expect}"
                        )
                    elif window_start <= t0 < window_end:
                        seen.scrape_latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    seen.scrape_failures.append(f"/metrics: {type(exc).__name__}: {exc}")
                await asyncio.sleep(max(0.0, scrape_interval - (time.perf_counter() - t0)))

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        s0, b0, c0 = server.cpu_seconds(), server.background_cpu_seconds(), time.process_time()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        seen.server_cpu = server.cpu_seconds() - s0
        seen.background_cpu = server.background_cpu_seconds() - b0
        seen.client_cpu = time.process_time() - c0

    scrape_task = asyncio.create_task(scraper()) if scrape_interval > 0 else None
    cpu_task = asyncio.create_task(sample_cpu())
    try:
        await work
        await cpu_task
    finally:
        for task in (scrape_task, cpu_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return seen


def summarize(
    server: Server,
    result: RunResult,
    latencies: list[float],
    failures: list[str],
    seen: Observed,
    duration: float,
) -> RunResult:
    """Fill ``result`` from the measured window's latencies (seconds) and observations."""
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
    requests = max(1, len(latencies))
    result.server_cpu_ms_per_req = max(0.0, seen.server_cpu) * 1000.0 / requests
    result.background_cpu_ms_per_req = max(0.0, seen.background_cpu) * 1000.0 / requests
    result.client_cpu_share = seen.client_cpu / duration / (os.cpu_count() or 1)
    result.scrapes = len(seen.scrape_latencies)
    result.scrape_failures = len(seen.scrape_failures)
    result.failure_examples += sorted(set(seen.scrape_failures))[:3]
    if seen.scrape_latencies:
        result.scrape_p50_ms = statistics.median(seen.scrape_latencies) * 1000.0
        result.scrape_max_ms = max(seen.scrape_latencies) * 1000.0
    result.rss_per_worker_mb = server.worker_rss_mb()
    return result


async def post(client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> str:
    """POST one request; "" if it was answered with a 2xx, else what went wrong."""
    try:
        r = await client.post(path, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "" if r.status_code // 100 == 2 else f"HTTP {r.status_code}: {r.text[:200]}"


async def run_load(
    server: Server,
    result: RunResult,
    bodies: Sequence[bytes] | Sequence[tuple[bytes, dict[str, str]]],
    *,
    path: str = "/predict",
    concurrency: int,
    warmup: float,
    duration: float,
    scrape_interval: float,
) -> RunResult:
    """Closed loop: ``concurrency`` connections each send their next request as soon as
    the previous one is answered; latency from send to answer."""
    requests = [(b, JSON_HEADERS) if isinstance(b, bytes) else b for b in bodies]
    latencies: list[float] = []
    failures: list[str] = []
    clients, result.connections_per_worker = await open_balanced(server, concurrency)
    loop_start = time.perf_counter()
    window_start = loop_start + warmup
    window_end = window_start + duration

    async def sender(client: httpx.AsyncClient, k: int) -> None:
        i = k
        while time.perf_counter() < window_end:
            body, headers = requests[i % len(requests)]
            i += concurrency
            t0 = time.perf_counter()
            failure = await post(client, path, body, headers)
            t1 = time.perf_counter()
            if failure:
                failures.append(failure)
            elif window_start <= t1 <= window_end:
                latencies.append(t1 - t0)

    async def senders() -> None:
        await asyncio.gather(*(sender(c, k) for k, c in enumerate(clients)))

    try:
        seen = await observe(
            server,
            senders(),
            window_start=window_start,
            window_end=window_end,
            scrape_interval=scrape_interval,
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    return summarize(server, result, latencies, failures, seen, duration)


async def run_open_loop(
    server: Server,
    result: RunResult,
    bodies: Sequence[tuple[bytes, dict[str, str]]],
    *,
    path: str = "/predict",
    rate: float,
    connections: int,
    warmup: float,
    duration: float,
    scrape_interval: float,
    drain: float = OPEN_LOOP_DRAIN,
) -> RunResult:
    """Open loop: request ``i`` is due at ``t0 + i / rate`` whether or not earlier ones
    were answered (a task of its own, on the first idle one of ``connections``
    keep-alive connections); its latency runs from the time it was due, so waiting for
    the client or for a connection counts. The requests due in the ``duration`` window
    after ``warmup`` are measured; ``rate * (warmup + duration)`` requests in all, and
    those unanswered ``drain`` seconds after the window are cancelled and failures."""
    latencies: list[float] = []
    lags: list[float] = []
    failures: list[str] = []
    clients, result.connections_per_worker = await open_balanced(server, connections)
    idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    for client in clients:
        idle.put_nowait(client)
    loop_start = time.perf_counter()
    window_start = loop_start + warmup
    window_end = window_start + duration
    count = max(1, round(rate * (warmup + duration)))

    async def send(i: int, due: float) -> None:
        measured = window_start <= due < window_end
        if measured:
            lags.append(time.perf_counter() - due)
        client = await idle.get()
        try:
            body, headers = bodies[i % len(bodies)]
            failure = await post(client, path, body, headers)
        finally:
            idle.put_nowait(client)
        if failure:
            failures.append(failure)
        elif measured:
            latencies.append(time.perf_counter() - due)

    async def schedule() -> None:
        tasks = []
        for i in range(count):
            due = loop_start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(send(i, due)))
        timeout = max(0.0, window_end + drain - time.perf_counter())
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        failures.extend([f"no answer {drain:g} s after the window"] * len(late))

    try:
        seen = await observe(
            server,
            schedule(),
            window_start=window_start,
            window_end=window_end,
            scrape_interval=scrape_interval,
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    result.offered_rate = rate
    if lags:
        result.send_lag_p99_ms = float(np.percentile(lags, 99)) * 1000.0
    return summarize(server, result, latencies, failures, seen, duration)


def check_labels(server: Server, door: str, X: np.ndarray, model: str = MODEL) -> list[int]:
    """One request of ``door`` outside the measurement: its shape, and the labels it returns."""
    body, headers = encode(door, X)
    url = f"{server.url}{door_path(door, model)}"
    r = httpx.post(url, content=body, headers=headers, timeout=60)
    r.raise_for_status()
    try:
        return answer_labels(door, r, len(X))
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeError(
            f"{server.kind}: malformed {door} answer ({exc}): {r.content[:300]!r}"
        ) from None


# -- report -------------------------------------------------------------------------------


def median_row(runs: list[RunResult]) -> RunResult:
    first = runs[0]
    med = RunResult(
        first.server, first.config, first.rows, round=0, door=first.door, phase=first.phase
    )
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
        "offered_rate",
        "send_lag_p99_ms",
    ):
        setattr(med, name, statistics.median(getattr(r, name) for r in runs))
    med.requests = sum(r.requests for r in runs)
    med.rows_answered = sum(r.rows_answered for r in runs)
    med.shadow_dropped = sum(r.shadow_dropped for r in runs)
    med.failures = sum(r.failures for r in runs)
    med.scrapes = sum(r.scrapes for r in runs)
    med.scrape_failures = sum(r.scrape_failures for r in runs)
    med.rss_per_worker_mb = [statistics.median(r.rss_mb for r in runs)]
    return med


def format_row(r: RunResult, label: str, width: int = 6, cwidth: int = 7) -> str:
    return (
        f"{r.config:>{cwidth}}  {r.server:<{width}} {label:>6}  {r.req_per_s:8.1f}  "
        f"{r.rows_per_s:9.0f}  "
        f"{r.p50_ms:7.2f}  {r.p99_ms:7.2f}  {r.rss_mb:8.1f}  {r.server_cpu_ms_per_req:8.2f}  "
        f"{r.background_cpu_ms_per_req:7.2f}  {r.scrapes:7d}  {r.failures + r.scrape_failures:6d}"
    )


def over(x: float, y: float) -> float:
    return x / y if y else 0.0


def config_name(rows: int, door: str, phase: str = "closed") -> str:
    name = f"{rows}-row" if door == "predict" else f"{rows}-row {door}"
    return name if phase == "closed" else f"{name} {phase}"


def cells(values: Sequence[float], fmt: str) -> str:
    """``values[0]`` then the rest in brackets: a median and its rounds."""
    first, *rest = values
    return f"{first:{fmt}} [{' '.join(f'{v:{fmt}}' for v in rest)}]"


def print_table(title: str, table: list[list[str]]) -> None:
    """``table``'s first line as a header, columns padded; the first one right-aligned."""
    widths = [max(len(line[k]) for line in table if k < len(line)) for k in range(len(table[0]))]
    print(f"\n{title}")
    for k, line in enumerate(table):
        padded = [
            f"{c:>{w}}" if j == 0 else f"{c:<{w}}"
            for j, (c, w) in enumerate(zip(line, widths, strict=False))
        ]
        print("  " + "  ".join(padded).rstrip())
        if k == 0:
            print("  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))


def doors_of(kind: str, doors: Sequence[str]) -> list[str]:
    """The doors ``kind`` is measured through: the OIP ones on Argus only."""
    return [d for d in doors if d == "predict" or kind.partition("@")[0] in ("argus", ALONE)]


def report_doors(
    runs: list[RunResult], medians: dict[tuple[str, str], RunResult], args: argparse.Namespace
) -> dict[str, Any]:
    """Each door's figures next to ``/predict``'s on the same server, and their ratios."""
    figures = (  # label, attribute, format
        ("req/s", "req_per_s", ".1f"),
        ("CPU ms/req", "server_cpu_ms_per_req", ".2f"),
        ("p50 ms", "p50_ms", ".2f"),
        ("p99 ms", "p99_ms", ".1f"),
    )
    summary: dict[str, Any] = {}
    for server in args.server_kinds:
        doors = doors_of(server, args.door_list)
        if len(doors) < 2 or not any(r.server == server and r.door != "predict" for r in runs):
            continue
        table = [["rows", "door", *(f[0] for f in figures)]]
        for rows in args.batch_sizes:
            mine = {
                d: {r.round: r for r in runs if (r.server, r.rows, r.door) == (server, rows, d)}
                for d in doors
            }
            base = mine["predict"]
            for door in doors:
                med = medians[config_name(rows, door), server]
                line = [str(rows), door]
                entry: dict[str, Any] = {}
                for _, name, fmt in figures:
                    values = [getattr(r, name) for r in mine[door].values()]
                    line.append(
                        f"{getattr(med, name):{fmt}} [{' '.join(f'{v:{fmt}}' for v in values)}]"
                    )
                    entry[name], entry[f"{name}_rounds"] = getattr(med, name), values
                table.append(line)
                if door != "predict":
                    ratio_line = ["", "/ predict"]
                    for _, name, _ in figures[:2]:
                        b = medians[config_name(rows, "predict"), server]
                        per_round = [
                            over(getattr(r, name), getattr(base[k], name))
                            for k, r in mine[door].items()
                            if k in base
                        ]
                        ratio = over(getattr(med, name), getattr(b, name))
                        ratio_line.append(
                            f"{ratio:.3f} [{' '.join(f'{v:.3f}' for v in per_round)}]"
                        )
                        entry[f"{name}_ratio"], entry[f"{name}_ratio_rounds"] = ratio, per_round
                    table.append(ratio_line)
                summary.setdefault(server, {}).setdefault(f"{rows}-row", {})[door] = entry
        print_table(f"doors, ratios to /predict: {server} (median [round 1, 2, ...]):", table)
    return summary


def dropped_cells(dropped: list[float], answered: list[float]) -> list[str]:
    """Rows dropped of rows answered, in all and per round; the share dropped."""
    total, rows = sum(dropped), sum(answered)
    rounds = " ".join(f"{d:.0f}" for d in dropped)
    return [
        f"{total:.0f} of {rows:.0f} [{rounds}]",
        f"{over(total, rows):.2%} of the rows answered",
    ]


def report_shadow(
    runs: list[RunResult], ends: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """live+shadow against live: req/s and CPU per request at saturation, the open loop's
    p50 and p99 (within ``LATENCY_TOLERANCE``?), the rows the shadow dropped, worker RSS."""
    live, shadow = SHADOW_SERVERS
    by = {(r.server, r.rows, r.phase, r.round): r for r in runs}
    rounds = sorted({r.round for r in runs})
    figures = (  # label, phase, attribute, format, held to LATENCY_TOLERANCE
        ("req/s at saturation", "closed", "req_per_s", ".1f", False),
        ("CPU ms/request at saturation", "closed", "server_cpu_ms_per_req", ".2f", False),
        ("open loop: rate, req/s", "open", "offered_rate", ".1f", False),
        ("open loop: CPU ms/request", "open", "server_cpu_ms_per_req", ".2f", False),
        ("open loop: p50 ms", "open", "p50_ms", ".2f", True),
        ("open loop: p99 ms", "open", "p99_ms", ".1f", True),
        ("open loop: client send lag p99 ms", "open", "send_lag_p99_ms", ".2f", False),
    )
    table = [["rows", "figure", live, shadow, f"{shadow} / {live}", ""]]
    summary: dict[str, Any] = {}
    for rows in args.batch_sizes:
        for label, phase, name, fmt, bounded in figures:
            both = [
                k for k in rounds if (live, rows, phase, k) in by and (shadow, rows, phase, k) in by
            ]
            if not both:
                continue
            values = {
                s: [getattr(by[s, rows, phase, k], name) for k in both] for s in SHADOW_SERVERS
            }
            medians = {s: statistics.median(v) for s, v in values.items()}
            ratio = over(medians[shadow], medians[live])
            per_round = [over(x, y) for x, y in zip(values[shadow], values[live], strict=True)]
            verdict = ""
            if bounded:
                within = ratio <= 1.0 + LATENCY_TOLERANCE
                verdict = f"{'' if within else 'NOT '}within {LATENCY_TOLERANCE:.0%}"
            table.append(
                [
                    str(rows),
                    label,
                    cells([medians[live], *values[live]], fmt),
                    cells([medians[shadow], *values[shadow]], fmt),
                    cells([ratio, *per_round], ".3f"),
                    verdict,
                ]
            )
            summary.setdefault(f"{rows}-row", {})[f"{phase} {name}"] = {
                live: medians[live],
                f"{live}_rounds": values[live],
                shadow: medians[shadow],
                f"{shadow}_rounds": values[shadow],
                "ratio": ratio,
                "ratio_rounds": per_round,
                **({"within_tolerance": ratio <= 1.0 + LATENCY_TOLERANCE} if bounded else {}),
            }
        for phase in PHASES:
            mine = [r for r in runs if (r.server, r.rows, r.phase) == (shadow, rows, phase)]
            dropped = [r.shadow_dropped for r in mine]
            answered = [r.rows_answered for r in mine]
            where = "open loop" if phase == "open" else "saturation"
            table.append(
                [str(rows), f"{where}: rows dropped", "", *dropped_cells(dropped, answered)]
            )
            summary.setdefault(f"{rows}-row", {})[f"{phase} dropped"] = {
                "rows_dropped": sum(dropped),
                "rows_answered": sum(answered),
                "rows_dropped_rounds": dropped,
                "rows_answered_rounds": answered,
            }
    rss = {s: [e["rss_mb"] for e in ends if e["server"] == s] for s in SHADOW_SERVERS}
    if all(rss.values()):
        medians = {s: statistics.median(v) for s, v in rss.items()}
        table.append(
            [
                "",
                "worker RSS at the end, MB",
                cells([medians[live], *rss[live]], ".0f"),
                cells([medians[shadow], *rss[shadow]], ".0f"),
                f"{over(medians[shadow], medians[live]):.3f}",
            ]
        )
    mine_ends = [e for e in ends if e["server"] == shadow]
    dropped = [e["dropped"] for e in mine_ends]
    answered = [e["answered"] for e in mine_ends]
    table.append(["", "rows dropped, whole run", "", *dropped_cells(dropped, answered)])
    summary["ends"] = ends
    print_table(
        f"shadow on {args.shadow_fraction:.0%} of the rows: {shadow} against {live} "
        f"(median [round 1, 2, ...]):",
        table,
    )
    return summary


def report(
    runs: list[RunResult],
    args: argparse.Namespace,
    target: float,
    ends: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Print every run, the medians and the ratios to the baseline (with ``--doors``, the
    doors' section; with ``--shadow``, the shadow's, from ``ends``: one entry per server
    run with its workers' RSS and its counters at the end); return the figures."""
    present = [s for s in args.server_kinds if any(r.server == s for r in runs)]
    width = max(6, *(len(s) for s in present))
    configs = list(dict.fromkeys(r.config for r in runs))
    cwidth = max(7, *(len(c) for c in configs))
    header = (
        f"{'config':>{cwidth}}  {'server':<{width}} {'round':>6}  {'req/s':>8}  {'rows/s':>9}  "
        f"{'p50 ms':>7}  {'p99 ms':>7}  {'RSS/wkr':>8}  {'srvCPU':>8}  {'bgCPU':>7}  "
        f"{'scrapes':>7}  {'errors':>6}"
    )
    print()
    print(header)
    print(f"{'':>{width + cwidth + 25}}{'':>29}{'MB':>8}  {'ms/req':>8}  {'ms/req':>7}")
    print("-" * len(header))
    medians: dict[tuple[str, str], RunResult] = {}
    for config in configs:
        for server in present:
            mine = [r for r in runs if r.config == config and r.server == server]
            if not mine:  # an OIP door on the bare service
                continue
            for r in mine:
                print(format_row(r, str(r.round), width, cwidth))
            medians[config, server] = median_row(mine)
            print(format_row(medians[config, server], "median", width, cwidth))
        print("-" * len(header))
    ratios: dict[str, Any] = {}
    base = args.baseline
    others = [s for s in present if s != base] if base in present else []
    for server in others:
        goal = f" (target: req/s ratio >= {target:.2f})" if base == "bare" else ""
        print(f"\n{server} / {base}{goal}:")
        for config in configs:
            if (config, base) not in medians or (config, server) not in medians:
                continue
            b, o = medians[config, base], medians[config, server]
            ratio = over(o.req_per_s, b.req_per_s)
            pairs = zip(
                [r for r in runs if r.config == config and r.server == server],
                [r for r in runs if r.config == config and r.server == base],
                strict=True,
            )
            per_round = [over(x.req_per_s, y.req_per_s) for x, y in pairs]
            cpu_ratio = over(o.server_cpu_ms_per_req, b.server_cpu_ms_per_req)
            p99_ratio = over(o.p99_ms, b.p99_ms)
            verdict = ("  meets target" if ratio >= target else "  BELOW TARGET") if goal else ""
            rounds = ", ".join(f"{x:.3f}" for x in per_round)
            print(
                f"  {config:>{cwidth}}: req/s {ratio:.3f} (ratio of medians; per round {rounds})"
                f"{verdict}\n"
                f"  {'':>{cwidth}}  CPU ms/request {o.server_cpu_ms_per_req:.2f} vs "
                f"{b.server_cpu_ms_per_req:.2f}: {cpu_ratio:.3f}; "
                f"p99 {o.p99_ms:.1f} vs {b.p99_ms:.1f} ms: {p99_ratio:.3f}"
            )
            ratios[config if len(others) == 1 else f"{config} {server}"] = {
                "server": server,
                "baseline": base,
                "req_per_s_ratio": ratio,
                "per_round": per_round,
                "cpu_ms_ratio": cpu_ratio,
                "cpu_cost_ratio": over(1.0, cpu_ratio),  # baseline / server, as it always was
                "p99_ratio": p99_ratio,
                "meets_target": ratio >= target,
            }

    doors = report_doors(runs, medians, args)
    shadow = report_shadow(runs, ends or [], args) if args.shadow else None

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
    oip_path = door_path("oip-json", BENCH_MODELS[args.model].name)
    doors_note = (
        f"""
  * Doors (Argus only): /predict; oip-json, POST {oip_path} with a JSON
    FP32 tensor and JSON outputs; oip-binary, the same with the binary tensor data
    extension both ways (float32 in, every output binary). Each door is a configuration of
    its own on the same server instance, same rows; the doors' order rotates each round.
    Every round, before the load, one {max(args.batch_sizes)}-row request per door checked the
    answer's shape and that its labels equal /predict's on the same rows; under load, each
    response must be 2xx."""
        if len(args.door_list) > 1
        else ""
    )
    bare_answer = (
        "dict BentoML serialises"
        if args.bare_response == "dict"
        else "response serialised like Argus's (so the ratio is the monitoring's cost)"
    )
    servers_note = "\n    ".join(
        (
            "Argus runs with monitoring on: every /predict validates, scores anomalies and writes",
            "the durable prediction log (journal + SQLite); the bare service only runs onnxruntime",
            f"and answers with a {bare_answer}.",
        )
    )
    open_note = ""
    if args.shadow:
        servers_note = f"""Argus runs with monitoring on, alone (live) and with a second stored
    version of the model as its shadow on {args.shadow_fraction:.0%} of the answered rows
    (live+shadow: POST /models/shadow, then 2 s for every worker to load it at its poll).
    live runs first in every round: the open loop's rate comes from its req/s."""
        open_note = f"""
  * Open loop: after the closed loop at each batch size, requests due at a fixed rate,
    {OPEN_LOOP_SHARE:g} x live's closed-loop req/s of the same round and batch size, both
    configurations at the same rate; each request is a task of its own that takes the
    first idle one of {2 * args.concurrency} keep-alive connections, its latency counted
    from the time it was due (so waiting for the client or a connection counts); those
    due in the measured window count. Client send lag: how late the client started them.
  * Rows dropped: argus_candidate_dropped_total on /metrics before and after each run
    (its warm-up included), against the live version's argus_predictions_total; "whole
    run": the counters at the end of each server run."""
    print(
        f"""
Notes:
  * {servers_note}
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
    mean RSS of the worker processes at the end of the run (median rows: median of rounds).{
            doors_note
        }{open_note}
"""
    )
    return {
        "medians": {f"{c}/{s}": asdict(m) for (c, s), m in medians.items()},
        "ratios": ratios,
        "doors": doors,
        **({"shadow": shadow} if args.shadow else {}),
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(p, rounds=4, rounds_help="bare/argus alternations")
    p.add_argument("--scrape-interval", type=float, default=2.0, help="0 disables scraping")
    p.add_argument(
        "--servers",
        help="which servers, in run order (default bare,argus); argus@TREE: argus serve on "
        "another source tree",
    )
    p.add_argument(
        "--doors",
        default="predict",
        help=f"how requests get in, comma separated, with predict: {', '.join(DOORS)} "
        "(the OIP doors on Argus only)",
    )
    p.add_argument("--baseline", help="the server ratios are against (default: bare, or first)")
    p.add_argument("--target", type=float, default=0.90, help="Argus/bare req/s ratio goal")
    p.add_argument(
        "--model",
        choices=tuple(BENCH_MODELS),
        default="digits",
        help="digits: the 64-feature MLP (default); digits784: the 784-feature MNIST-shaped "
        "MLP on the digits resized to 28x28",
    )
    p.add_argument(
        "--model-home", type=Path, help="a BENTOML_HOME holding the model (say argus-digits)"
    )
    p.add_argument(
        "--bare-response",
        choices=("raw", "dict"),
        default="raw",
        help="raw: the bare service serialises like Argus (isolates the monitoring cost); "
        "dict: it returns a dict for BentoML to serialise (a conventional BentoML service)",
    )
    p.add_argument(
        "--shadow",
        action="store_true",
        help="argus alone (live) against argus with a shadow (live+shadow), closed and open "
        "loop; instead of --servers",
    )
    p.add_argument(
        "--shadow-fraction",
        type=float,
        default=1.0,
        help="with --shadow: the share of answered rows the shadow predicts",
    )
    args = p.parse_args(argv)
    check_load_args(p, args)
    if args.shadow:
        if args.servers is not None or args.baseline not in (None, "live"):
            p.error("--shadow runs its own servers: no --servers or --baseline")
        if args.doors != "predict":
            p.error("--shadow measures /predict only: no --doors")
        if not 0.0 < args.shadow_fraction <= 1.0:
            p.error("--shadow-fraction must be in (0, 1]")
        args.servers = ",".join(SHADOW_SERVERS)
    elif args.servers is None:
        args.servers = ",".join(SERVERS)
    args.server_kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if not args.server_kinds or len(set(args.server_kinds)) < len(args.server_kinds):
        p.error("--servers takes distinct servers")
    for kind, _, tree in (k.partition("@") for k in args.server_kinds if not args.shadow):
        if kind not in (*SERVERS, ALONE) or (tree and (kind != "argus" or not Path(tree).is_dir())):
            p.error(f"--servers takes {', '.join(SERVERS)} or argus@TREE, TREE a source tree")
    if args.baseline is None:
        args.baseline = "bare" if "bare" in args.server_kinds else args.server_kinds[0]
    if args.baseline not in args.server_kinds:
        p.error("--baseline must be one of --servers")
    args.door_list = [d.strip() for d in args.doors.split(",") if d.strip()]
    if len(set(args.door_list)) < len(args.door_list) or not set(args.door_list) <= set(DOORS):
        p.error(f"--doors takes distinct doors of {', '.join(DOORS)}")
    if "predict" not in args.door_list:
        p.error("--doors must include predict: the other doors' ratios are to it")
    if len(args.door_list) > 1 and not any(len(doors_of(k, DOORS)) > 1 for k in args.server_kinds):
        p.error("the OIP doors are measured on Argus only: add argus to --servers")
    return args


def with_second_version(store: Path, root: Path, key: str = "digits") -> Path:
    """A store holding two versions of the model, for ``--shadow``: ``store`` if it does,
    else a copy of it under ``root`` with a version trained with another seed added."""
    model = BENCH_MODELS[key]
    if len(stored_versions(store, model.name)) >= 2:
        return store
    home = root / "train"
    if store != home / "bentoml":
        shutil.copytree(store / "models" / model.name, home / "bentoml" / "models" / model.name)
    print(f"training a second version of {model.name} for the shadow ...", flush=True)
    return train(home, seed=1, args=model.train_args, model=model.name)[0]


def shadow_counters(server: Server, live: str) -> tuple[float, float]:
    """(rows the shadow dropped, rows the live version answered) so far, from one scrape
    of ``argus_candidate_dropped_total`` and ``argus_predictions_total``."""
    dropped = answered = 0.0
    names = ("argus_candidate_dropped_total", "argus_predictions_total")
    for name, labels, value in metric_samples(server, *names):
        if name == names[0]:
            dropped += value
        elif labels.get("version") == live:
            answered += value
    return dropped, answered


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="argus-bench-"))
    runs: list[RunResult] = []
    problems: list[str] = []
    current: Server | None = None
    name = BENCH_MODELS[args.model].name
    try:
        store, version, onnx = prepare_model(args.model, root, args.model_home)
        token = secrets.token_hex(16) if args.shadow else None  # ARGUS_ADMIN_TOKEN
        if args.shadow:
            store = with_second_version(store, root, args.model)
        ends: list[dict[str, Any]] = []  # --shadow: each server run's counters and RSS
        samples = {
            rows: request_rows(args.model, store, version, rows) for rows in args.batch_sizes
        }
        bodies = {
            (door, rows): [encode(door, X) for X in samples[rows]]
            for door in args.door_list
            for rows in args.batch_sizes
        }
        check_rows = samples[max(args.batch_sizes)][0]
        labels: dict[str, list[int]] = {}  # "server door" -> labels of check_rows
        for rnd in range(1, args.rounds + 1):
            rates: dict[int, float] = {}  # --shadow: rows -> the open loop's req/s this round
            for kind in args.server_kinds:
                current = make_server(
                    "argus" if args.shadow or kind == ALONE else kind,
                    root,
                    store,
                    onnx,
                    args.workers,
                    args.bare_response,
                    admin_token=token,
                    model=name,
                    env={"ARGUS_COALESCE_WAIT_MS": "0"} if kind == ALONE else None,
                )
                started = time.monotonic()
                current.start()
                print(
                    f"round {rnd}: {kind} ready in {time.monotonic() - started:.1f} s "
                    f"(port {current.port}, {len(current.worker_procs())} workers)",
                    flush=True,
                )
                live = live_version(current, name) if args.shadow else None
                if kind == "live+shadow":
                    shadow = [v for v in stored_versions(store, name) if v != live][-1]
                    set_shadow(current, shadow, args.shadow_fraction, token or "")
                    print(
                        f"  shadow {name}:{shadow} on {args.shadow_fraction:.0%} of the rows "
                        f"{live} answers",
                        flush=True,
                    )
                doors = doors_of(kind, args.door_list)
                shift = (rnd - 1) % len(doors)  # spread the doors' ordering effects
                doors = doors[shift:] + doors[:shift]
                for door in doors:
                    got = check_labels(current, door, check_rows, name)
                    if labels.setdefault(f"{kind} {door}", got) != got:
                        problems.append(f"{kind} {door} round {rnd}: labels changed")
                phases = [(rows, door, "closed") for rows in args.batch_sizes for door in doors]
                if args.shadow:  # each batch size: saturation, then the open loop
                    phases = [(r, "predict", ph) for r in args.batch_sizes for ph in PHASES]
                for rows, door, phase in phases:
                    result = RunResult(kind, config_name(rows, door, phase), rows, rnd, door, phase)
                    before = shadow_counters(current, live) if live else (0.0, 0.0)
                    if phase == "closed":
                        load = run_load(
                            current,
                            result,
                            bodies[door, rows],
                            path=door_path(door, name),
                            concurrency=args.concurrency,
                            warmup=args.warmup,
                            duration=args.duration,
                            scrape_interval=args.scrape_interval,
                        )
                    else:
                        if rates.get(rows, 0.0) <= 0.0:
                            raise RuntimeError(f"round {rnd}: live gave no {rows}-row req/s")
                        load = run_open_loop(
                            current,
                            result,
                            bodies[door, rows],
                            path=door_path(door, name),
                            rate=rates[rows],
                            connections=2 * args.concurrency,
                            warmup=args.warmup,
                            duration=args.duration,
                            scrape_interval=args.scrape_interval,
                        )
                    asyncio.run(load)
                    if live:
                        after = shadow_counters(current, live)
                        result.shadow_dropped = after[0] - before[0]
                        result.rows_answered = after[1] - before[1]
                    if kind == SHADOW_SERVERS[0] and phase == "closed":
                        rates[rows] = OPEN_LOOP_SHARE * result.req_per_s
                    runs.append(result)
                    print(
                        f"  {result.config:>17} {kind:<6} {result.req_per_s:8.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.failures + result.scrape_failures}  "
                        f"connections/worker {result.connections_per_worker}"
                        + (f"  dropped {result.shadow_dropped:.0f}" if live else ""),
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
                if live:
                    dropped, answered = shadow_counters(current, live)
                    rss = current.worker_rss_mb()
                    ends.append(
                        {
                            "server": kind,
                            "round": rnd,
                            "dropped": dropped,
                            "answered": answered,
                            "rss_mb": statistics.fmean(rss) if rss else 0.0,
                            "rss_per_worker_mb": rss,
                        }
                    )
                    print(
                        f"  {kind} at the end: argus_candidate_dropped_total {dropped:.0f}, "
                        f"{answered:.0f} rows answered, worker RSS "
                        f"{' '.join(f'{m:.0f}' for m in rss)} MB",
                        flush=True,
                    )
                current.stop()
                current = None
        first, *rest = labels
        differ = [k for k in rest if labels[k] != labels[first]]
        if differ:
            problems.append(f"{', '.join(differ)} disagree with {first} on the labels")
        summary = report(runs, args, args.target, ends)
        if args.json:
            payload = {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": machine(),
                "model": f"{name}:{version}",
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
    return finish(root, args.keep, problems)


if __name__ == "__main__":
    sys.exit(main())
