"""Helpers of the hardening suite: rows to send, /metrics parsing, figure snapshots."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from models.store import StoredVersion
from state.opener import open_state
from tests.harness import ArgusServer, seed_store

DIGITS = load_digits().data.astype(np.float32)

# window gauges rendered from the shared state at scrape time (service/exposition.py)
WINDOW_GAUGES = (
    "argus_window_rows",
    "argus_label_coverage_ratio",
    "argus_estimated_accuracy_ratio",
    "argus_accuracy_ratio",
    "argus_macro_precision_ratio",
    "argus_macro_recall_ratio",
    "argus_macro_f1_ratio",
    "argus_drift_share_ratio",
    "argus_drift_detected",
    "argus_prediction_psi",
    "argus_anomaly_ratio",
)


def rows(n: int, offset: int = 0) -> list[list[float]]:
    """``n`` real digits rows (wrapping around the 1797 of the data set)."""
    idx = [(offset + i) % len(DIGITS) for i in range(n)]
    return DIGITS[idx].tolist()


def start_server(
    home: Path, versions: list[StoredVersion], env: dict[str, str], **kwargs: Any
) -> ArgusServer:
    """A real ``argus serve`` (2 workers) over a copy of ``versions``' model store."""
    seed_store(Path(os.environ["BENTOML_HOME"]), versions[0].name, home)
    return ArgusServer(home, versions[0].name, env=env, **kwargs).start()


def store_copy(server: ArgusServer, version: StoredVersion) -> Path:
    """The directory of ``version`` inside the server's own model store."""
    return server.home / "bentoml" / "models" / version.name / version.version


def corrupt(path: Path) -> None:
    """Flip one byte in the middle of ``path`` (same size, different checksum)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def logged_rows(home: Path, model: str, version: str) -> int:
    """Predictions of the version in the prediction log (pending journal records included:
    the state opened this way ingests them before it reads, as every worker does)."""
    state = open_state(None, home)
    try:
        return state.counts(model, version).predictions
    finally:
        state.close()


def logged_ids(home: Path, ids: list[str], url: str | None = None) -> set[str]:
    """Which of ``ids`` are in the prediction log (of the state at ``url``, else ``home``'s
    SQLite); the reader spills nothing of its own."""
    state = open_state(url, home, spill=False)
    try:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            found.update(state.lookup(ids[start : start + 500]))
        return found
    finally:
        state.close()


# -- /metrics -----------------------------------------------------------------------------


def metrics(server: ArgusServer) -> str:
    """The server's ``/metrics`` text (asserting it answered 200)."""
    r = httpx.get(f"{server.url}/metrics", timeout=60)
    assert r.status_code == 200
    return r.text


def argus_lines(text: str) -> list[str]:
    """Every ``argus_*`` sample line of a /metrics text."""
    return [line for line in text.splitlines() if line.startswith("argus_")]


def duplicate_series(text: str) -> list[str]:
    """Series (name and labels) that appear on more than one sample line."""
    keys = Counter(line.rsplit(" ", 1)[0] for line in argus_lines(text))
    return [key for key, n in keys.items() if n > 1]


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Sample ``name`` (e.g. ``argus_predictions_total``): labels -> value."""
    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[frozenset(s.labels.items())] = float(s.value)
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0.0 when absent (a counter never touched)."""
    return samples(text, name).get(frozenset(labels.items()), 0.0)


def monitoring_figures(client: httpx.Client, version: str | None = None) -> dict[str, Any]:
    """The /monitoring snapshot without its timestamp: every window figure."""
    params = {"version": version} if version else None
    r = client.get("/monitoring", params=params)
    assert r.status_code == 200, r.text
    snap = r.json()
    snap.pop("generated_at")
    return snap


def figure_lines(text: str) -> list[str]:
    """The window-gauge lines of a /metrics text, sorted (for comparisons)."""
    return sorted(line for line in argus_lines(text) if line.startswith(WINDOW_GAUGES))


def unchanging_lines(text: str) -> list[str]:
    """Every argus_ line that bad input must not move: all but the refusal counter."""
    return sorted(
        line for line in argus_lines(text) if not line.startswith("argus_invalid_requests_total")
    )


def gauges_match_snapshot(text: str, snap: dict[str, Any]) -> list[str]:
    """Where /metrics' window gauges of ``snap``'s version disagree with /monitoring."""
    mv = {"model": snap["model"], "version": snap["version"]}
    perf = snap.get("performance") or {}
    pairs: list[tuple[str, dict[str, str], float | None]] = [
        ("argus_window_rows", {**mv, "window": "inputs"}, snap["windows"]["inputs"]),
        ("argus_window_rows", {**mv, "window": "labels"}, snap["windows"]["labels"]),
        ("argus_label_coverage_ratio", mv, snap.get("label_coverage")),
        ("argus_estimated_accuracy_ratio", mv, snap.get("estimated_accuracy")),
        ("argus_anomaly_ratio", mv, (snap.get("anomaly") or {}).get("ratio")),
        ("argus_accuracy_ratio", mv, perf.get("accuracy")),
        ("argus_macro_f1_ratio", mv, perf.get("macro_f1")),
    ]
    wrong = []
    for name, labels, expected in pairs:
        got = samples(text, name).get(frozenset(labels.items()))
        if expected is None:
            if got is not None:
                wrong.append(f"{name}{labels}: {got} in /metrics, absent in /monitoring")
        elif got is None or abs(got - float(expected)) > 1e-9 * max(1.0, abs(expected)):
            wrong.append(f"{name}{labels}: {got} in /metrics, {expected} in /monitoring")
    return wrong
