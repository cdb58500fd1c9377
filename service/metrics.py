"""Prometheus counters and histograms of the serving path.

They are plain prometheus_client objects. Under ``bentoml serve`` every worker inherits
``PROMETHEUS_MULTIPROC_DIR``, so each worker writes its own file and BentoML's
``/metrics`` sums them: counters and histograms stay correct across workers and across
a killed worker. Window figures (ratios, PSI, p-values) are not kept here: they are
computed from the shared state when ``/metrics`` is scraped (``service/exposition.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
DELAY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400)


class ServiceMetrics:
    """The counters and histograms one worker updates; create once per process."""

    def __init__(self) -> None:
        mv = ["model", "version"]
        self.predictions = Counter("argus_predictions", "Rows predicted (one per instance).", mv)
        self.anomalies = Counter(
            "argus_anomalies", "Rows whose anomaly score exceeded the version's threshold.", mv
        )
        self.feedback = Counter(
            "argus_feedback",
            "Labels joined to predictions, by whether the prediction was right.",
            [*mv, "result"],
        )
        self.guard_decisions = Counter(
            "argus_guard_decisions",
            "The guard's decisions at each evaluation (action none: nothing to do).",
            ["model", "action", "rule", "mode"],
        )
        self.candidate_dropped = Counter(
            "argus_candidate_dropped",
            "Rows a shadow did not predict: its queue was full, or its output was not finite.",
            mv,
        )
        self.request_groups = Counter(
            "argus_request_groups",
            "Groups of requests answered together (one model call, one log record each); "
            "the answered requests they held are argus_grouped_requests_total.",
        )
        self.grouped_requests = Counter(
            "argus_grouped_requests",
            "Requests answered in a group (every answered request, groups of 1 too).",
        )
        self.invalid_requests = Counter(
            "argus_invalid_requests", "Requests refused with a 4xx, by reason.", ["reason"]
        )
        self.state_errors = Counter(
            "argus_state_errors",
            "Failed reads or writes of the shared state, by operation (record, lookup, feedback, "
            "switch, models, metrics, ingest, prune).",
            ["operation"],
        )
        self.state_rows = {
            kind: Counter(
                f"argus_state_{kind}_rows",
                f"Answered rows {what}.",
            )
            for kind, what in (
                ("spilled", "kept in this machine's spill while the shared state was away"),
                ("replayed", "replayed from the spill into the shared state"),
                ("dropped", "lost: the spill was full (ARGUS_SPILL_MAX_BYTES) or not writable"),
            )
        }
        self.state_available = Gauge(
            "argus_state_available",
            "1 while this worker's last write to the shared state succeeded, else 0.",
            multiprocess_mode="liveall",
        )
        self.state_available.set(1)
        self.inference_duration = Histogram(
            "argus_inference_duration_seconds",
            "Time from a validated request to its prediction, per request.",
            mv,
            buckets=LATENCY_BUCKETS,
        )
        self.anomaly_score = Histogram(
            "argus_anomaly_score", "Anomaly score per row.", mv, buckets=SCORE_BUCKETS
        )
        self.label_delay = Histogram(
            "argus_label_delay_seconds",
            "Time from a prediction to its label.",
            mv,
            buckets=DELAY_BUCKETS,
        )


STATE_OPERATIONS = (
    "record", "lookup", "feedback", "switch", "ingest", "prune", "history", "guard",
)  # fmt: skip
KNOWN_REASONS = (
    "schema", "bad_type", "empty_batch", "too_many_rows", "row_length", "not_numeric",
    "not_finite", "bad_ids", "duplicate_ids", "bad_label", "body_too_large",
    "unsupported_media_type", "unknown_version", "unverifiable_version", "unauthorized",
    "forbidden", "admin_disabled", "no_previous_version",
)  # fmt: skip

_METRICS: ServiceMetrics | None = None


def get_metrics() -> ServiceMetrics:
    """This process's metrics, created on first use (prometheus_client allows one each)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = ServiceMetrics()
        # series that exist from the start read 0, not "no data", until the first event
        for operation in STATE_OPERATIONS:
            _METRICS.state_errors.labels(operation)
        for reason in KNOWN_REASONS:
            _METRICS.invalid_requests.labels(reason)
    return _METRICS


def observe_many(child: Any, values: np.ndarray) -> None:
    """Observe every value of ``values`` in one histogram child, in O(buckets) writes.

    ``Histogram.observe`` costs about 8 microseconds in multiprocess mode (a lock and an
    mmap write per call), so a 1024-row request would spend 8 ms on its anomaly-score
    histogram. This adds the per-bucket counts and the sum in one pass instead, with the
    same ``value <= bound`` rule; it falls back to ``observe`` if prometheus_client ever
    changes the child's internals.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values.tolist():
            child.observe(v)
        return
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    total.inc(float(values.sum()))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
