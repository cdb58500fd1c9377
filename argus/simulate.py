"""Synthetic traffic for a running Argus server: ``argus simulate``.

Rows come from the digits of a scenario (``argus/scenarios.py``: clean, drift, anomaly,
prior-shift), so every row has a true label unless it is not a digit at all.

For a share ``label_fraction`` of the labelled predictions the true digit is posted to
``/feedback`` ``label_delay`` seconds after the prediction, as a label arriving late in
production would. A run is bounded in time (``duration``, plus at most ``label_delay`` to
deliver the labels still due) and in count (``max_requests``); it talks only to loopback
addresses unless ``allow_remote`` is set.
"""

from __future__ import annotations

import ipaddress
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx
import numpy as np

from argus.scenarios import SCENARIOS, Scenario
from errors import ArgusError

FEEDBACK_CHUNK = 500


@dataclass(frozen=True)
class SimulationResult:
    """What a run sent and what the server answered."""

    scenario: str
    requests_sent: int
    requests_ok: int
    requests_failed: int
    invalid_sent: int
    rows_sent: int
    rows_predicted: int
    labels_sent: int
    labels_accepted: int
    elapsed_seconds: float
    status_codes: dict[str, int] = field(default_factory=dict)
    monitoring: dict[str, Any] | None = None
    interrupted: bool = False

    def summary(self) -> str:
        return (
            f"{self.scenario}: {self.requests_sent} requests ({self.rows_sent} rows) in "
            f"{self.elapsed_seconds:.1f} s: {self.requests_ok} ok, {self.requests_failed} "
            f"errors, {self.invalid_sent} deliberately invalid; {self.labels_sent} labels "
            f"sent, {self.labels_accepted} accepted"
            + (" (interrupted)" if self.interrupted else "")
        )


def check_loopback(url: str, allow_remote: bool = False) -> str:
    """Return ``url`` without a trailing slash; refuse a non-loopback host unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must look like http://127.0.0.1:3000, got {url!r}")
    host = parts.hostname
    if not allow_remote and not _is_loopback(host):
        raise ValueError(
            f"url {url!r} is not a loopback address: simulate sends synthetic traffic and "
            "labels, so pass --allow-remote (allow_remote=True) to aim it at another host"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Status:
    """The live one-line summary on ``out``: rewritten in place on a terminal."""

    def __init__(self, out: TextIO | None, scenario: str) -> None:
        self.out = out
        self.scenario = scenario
        self.tty = bool(out is not None and getattr(out, "isatty", lambda: False)())
        self.width = 0

    def show(self, counts: Counter[str], snap: dict[str, Any] | None, final: bool = False) -> None:
        if self.out is None:
            return
        line = f"{self.scenario}: " + render_line(counts, snap)
        if self.tty:
            pad = max(0, self.width - len(line))
            self.out.write("\r" + line + " " * pad + ("\n" if final else ""))
            self.width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()


def render_line(counts: Counter[str], snap: dict[str, Any] | None) -> str:
    """``sent 120 ok 118 errors 2 labels 30 | V: accuracy 0.912 estimate 0.934 drift 25% ...``."""
    head = (
        f"sent {counts['sent']} ok {counts['ok']} errors {counts['errors']} "
        f"labels {counts['labels_sent']}"
    )
    if counts["invalid"]:
        head += f" invalid {counts['invalid']}"
    if not snap:
        return head + " | server figures: -"

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    perf = snap.get("performance") or {}
    drift = snap.get("drift") or {}
    anomaly = snap.get("anomaly") or {}
    share = drift.get("drift_share")
    verdict = " DRIFT" if drift.get("drift_detected") else ""
    ratio = anomaly.get("ratio")
    return (
        f"{head} | {snap.get('version', '?')}: accuracy {num(perf.get('accuracy'))} "
        f"estimate {num(snap.get('estimated_accuracy'))} "
        f"drift {'-' if share is None else f'{100 * share:.0f}%'}{verdict} "
        f"anomalies {'-' if ratio is None else f'{100 * ratio:.1f}%'}"
    )


def simulate(
    url: str,
    scenario: str = "clean",
    *,
    rate: float = 20.0,
    duration: float = 60.0,
    max_requests: int | None = None,
    batch: int = 8,
    label_delay: float = 5.0,
    label_fraction: float = 0.5,
    invalid_fraction: float = 0.0,
    seed: int = 0,
    model: str | None = None,
    allow_remote: bool = False,
    scenario_options: dict[str, Any] | None = None,
    status_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
    out: TextIO | None = sys.stderr,
) -> SimulationResult:
    """Send ``scenario`` traffic to ``url`` at ``rate`` requests/s of ``batch`` rows.

    Stops after ``duration`` seconds or ``max_requests`` requests, whichever comes first,
    then delivers the labels still due; Ctrl-C stops at once (labels still due are not
    sent) and still returns what was done. ``invalid_fraction`` of the requests carry a
    row one feature short, to show refused input on the dashboards. ``model`` names the
    served model to send to (default: the server's default model). ``clock``/``sleep``
    and ``client`` let tests run without waiting or without a server.
    """
    base = check_loopback(url, allow_remote)
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if not (np.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, got {max_requests}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not (np.isfinite(label_delay) and label_delay >= 0):
        raise ValueError(f"label_delay must be >= 0 seconds, got {label_delay}")
    if not 0.0 <= label_fraction <= 1.0:
        raise ValueError(f"label_fraction must be in [0, 1], got {label_fraction}")
    if not 0.0 <= invalid_fraction < 1.0:
        raise ValueError(f"invalid_fraction must be in [0, 1), got {invalid_fraction}")
    spec = Scenario.build(scenario, **(scenario_options or {}))
    http = client or httpx.Client(base_url=base, timeout=30)
    run = _Run(base, spec, http, clock, _Status(out, scenario), seed, model)
    try:
        _check_reachable(http, base)
        start = clock()
        try:
            run.send(
                rate=rate,
                stop_at=start + duration,
                max_requests=max_requests,
                batch=batch,
                label_delay=label_delay,
                label_fraction=label_fraction,
                invalid_fraction=invalid_fraction,
                status_interval=status_interval,
                sleep=sleep,
            )
            run.deliver_labels(sleep)
        except KeyboardInterrupt:
            run.interrupted = True
        run.snap = run.poll()
        run.status.show(run.counts, run.snap, final=True)
        elapsed = clock() - start
    finally:
        if client is None:
            http.close()
    c = run.counts
    return SimulationResult(
        scenario=scenario,
        requests_sent=c["sent"],
        requests_ok=c["ok"],
        requests_failed=c["errors"],
        invalid_sent=c["invalid"],
        rows_sent=c["rows"],
        rows_predicted=c["predicted"],
        labels_sent=c["labels_sent"],
        labels_accepted=c["labels_accepted"],
        elapsed_seconds=elapsed,
        status_codes=dict(run.codes),
        monitoring=run.snap,
        interrupted=run.interrupted,
    )


class _Run:
    """The state of one simulation: counters, labels waiting for their time, last figures."""

    def __init__(
        self,
        base: str,
        spec: Scenario,
        http: httpx.Client,
        clock: Callable[[], float],
        status: _Status,
        seed: int,
        model: str | None = None,
    ) -> None:
        self.base = base
        self.model = model
        self.spec = spec
        self.http = http
        self.clock = clock
        self.status = status
        self.rng = np.random.default_rng(seed)  # the rows
        self.coin = random.Random(seed)  # which requests are malformed, which rows labelled
        self.counts: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.pending: deque[tuple[float, str, int]] = deque()  # (due, id, label), due ascending
        self.snap: dict[str, Any] | None = None
        self.interrupted = False

    def send(
        self,
        *,
        rate: float,
        stop_at: float,
        max_requests: int | None,
        batch: int,
        label_delay: float,
        label_fraction: float,
        invalid_fraction: float,
        status_interval: float,
        sleep: Callable[[float], None],
    ) -> None:
        c, clock = self.counts, self.clock
        start = next_status = clock()
        while (max_requests is None or c["sent"] < max_requests) and clock() < stop_at:
            due_at = start + c["sent"] / rate
            if due_at > clock():
                sleep(min(due_at, stop_at) - clock())
                if clock() >= stop_at:
                    break
            rows, labels = self.spec.rows(batch, self.rng)
            invalid = invalid_fraction > 0 and self.coin.random() < invalid_fraction
            body: dict[str, Any] = {"instances": (rows[:, :-1] if invalid else rows).tolist()}
            if self.model is not None:
                body["model"] = self.model
            response = self.post("/predict", body)
            sent_at = clock()
            c["sent"] += 1
            c["rows"] += batch
            if invalid:
                c["invalid"] += 1
                if response is None or not 400 <= response.status_code < 500:
                    c["errors"] += 1
            elif response is None or response.status_code != 200:
                c["errors"] += 1
                if response is not None and c["ok"] == 0 and response.status_code == 400:
                    raise ArgusError(
                        f"{self.base}/predict refused simulate's {self.spec.n_features}-feature "
                        f"digits rows: {response.text[:300]}"
                    )
            else:
                c["ok"] += 1
                predictions = response.json()["predictions"]
                c["predicted"] += len(predictions)
                for pred, label in zip(predictions, labels.tolist(), strict=True):
                    if label >= 0 and self.coin.random() < label_fraction:
                        self.pending.append((sent_at + label_delay, str(pred["id"]), int(label)))
            self.flush_labels()
            if clock() >= next_status:
                self.snap = self.poll()
                self.status.show(c, self.snap)
                next_status = clock() + status_interval

    def deliver_labels(self, sleep: Callable[[float], None]) -> None:
        """Send the labels already promised, each at its due time."""
        while self.pending:
            wait = self.pending[0][0] - self.clock()
            if wait > 0:
                sleep(wait)
            self.flush_labels()

    def flush_labels(self) -> None:
        now = self.clock()
        due: list[tuple[str, int]] = []
        while self.pending and self.pending[0][0] <= now:
            _, pid, label = self.pending.popleft()
            due.append((pid, label))
        for i in range(0, len(due), FEEDBACK_CHUNK):
            chunk = due[i : i + FEEDBACK_CHUNK]
            body = {"feedback": [{"id": pid, "label": label} for pid, label in chunk]}
            response = self.post("/feedback", body)
            self.counts["labels_sent"] += len(chunk)
            if response is not None and response.status_code == 200:
                self.counts["labels_accepted"] += int(response.json().get("accepted", 0))
            else:
                self.counts["label_errors"] += 1

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response | None:
        try:
            response = self.http.post(f"{self.base}{path}", json=body)
        except httpx.HTTPError:
            self.codes["transport"] += 1
            return None
        self.codes[str(response.status_code)] += 1
        return response

    def poll(self) -> dict[str, Any] | None:
        """The server's figures (``/monitoring``), or the last ones if it does not answer."""
        try:
            params = None if self.model is None else {"model": self.model}
            response = self.http.get(f"{self.base}/monitoring", params=params)
        except httpx.HTTPError:
            return self.snap
        return dict(response.json()) if response.status_code == 200 else self.snap


def _check_reachable(http: httpx.Client, base: str) -> None:
    try:
        response = http.get(f"{base}/readyz")
    except httpx.HTTPError as exc:
        raise ArgusError(f"cannot reach {base}: {exc}") from None
    if response.status_code != 200:
        raise ArgusError(f"{base}/readyz answered {response.status_code}: the server is not ready")
