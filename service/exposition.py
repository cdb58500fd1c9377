"""Window figures for ``/metrics`` and ``/monitoring``, computed from the shared state.

Whichever worker answers a scrape reads the same rows from the shared state and so
reports the same figures; nothing here is a per-process gauge that a dead worker could
leave behind. Results are cached for ``ARGUS_METRICS_CACHE_SECONDS`` per worker.

Per-feature series are bounded: a model with at most ``MAX_FEATURE_SERIES`` features
exports every feature; a wider one (784-pixel MNIST) exports only the
``MAX_FEATURE_SERIES`` features with the highest PSI plus every drifted feature, up to
twice that bound. The dataset-level figures always cover every feature.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from models import store
from monitoring.profile import ReferenceProfile
from monitoring.windows import WindowFigures
from service.fleet import Fleet
from service.runtime import ModelRuntime
from service.settings import Settings
from service.validation import RequestError
from state.types import DEFAULT, StateStore
from state.windows import StateWindows

MAX_FEATURE_SERIES = 64


class MetricsExposition:
    def __init__(self, settings: Settings, state: StateStore, fleet: Fleet) -> None:
        self.settings = settings
        self.state = state
        self.fleet = fleet
        self._profiles: dict[tuple[str, str], ReferenceProfile] = {}
        self._cache: dict[tuple[str, str], tuple[float, WindowFigures]] = {}
        self._lock = threading.Lock()
        self._versions: dict[str, tuple[int, list[str]]] = {}  # (store marker, versions)

    # -- computing -------------------------------------------------------------------

    def _profile(self, model: str, version: str) -> ReferenceProfile:
        key = (model, version)
        if key not in self._profiles:
            stored = store.get_version(model, version)
            self._profiles[key] = ReferenceProfile.from_dict(stored.read_profile())
        return self._profiles[key]

    def figures(self, model: str, version: str, now: float | None = None) -> WindowFigures:
        now = time.monotonic() if now is None else now
        key = (model, version)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.settings.metrics_cache_seconds:
                return hit[1]
        figures = self.compute(model, version)
        with self._lock:
            self._cache[key] = (now, figures)
        return figures

    def compute(self, model: str, version: str) -> WindowFigures:
        s = self.settings
        windows = StateWindows.read(self.state, model, version, s.input_window, s.label_window)
        return windows.figures(self._profile(model, version))

    def snapshot(self, version: str | None = None, model: str | None = None) -> dict[str, Any]:
        try:
            runtime = self.fleet.get(model or None)  # "?model=": the default model
        except LookupError as exc:
            raise RequestError(404, "unknown_model", str(exc)) from None
        name = runtime.name
        live = runtime.live.version if runtime.ready else None
        version = version or None  # "?version=" asks for nothing in particular: the live one
        target = version or live
        if target is None:
            raise RequestError(503, "no_model", f"no version of {name} is being served")
        try:
            if version is not None:  # an alias such as "latest" names its real version
                target = store.get_version(name, version).version
            figures = self.figures(name, target)
        except LookupError:
            raise RequestError(
                404, "unknown_version", f"no version {name}:{target} in the store"
            ) from None
        return {"live": live, "generated_at": time.time(), **figures.to_dict()}

    def _stored_versions(self, model: str) -> list[str]:
        """Version names, re-read only when the store changed (listing parses YAML)."""
        marker = store.store_marker(model)
        cached = self._versions.get(model)
        if cached is None or cached[0] != marker:
            cached = self._versions[model] = (
                marker,
                [v.version for v in store.list_versions(model)],
            )
        return cached[1]

    # -- Prometheus text -------------------------------------------------------------

    def render(self) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self))
        return generate_latest(registry).decode()

    def families(self) -> Iterable[Metric]:
        runtimes = [self.fleet.runtimes[name] for name in sorted(self.fleet.names)]
        info = GaugeMetricFamily(
            "argus_model_info",
            'Stored versions; live="true" marks the one serving.',
            labels=["model", "version", "live"],
        )
        switches = CounterMetricFamily(
            "argus_model_switches", "Live-version changes, by reason.", labels=["model", "reason"]
        )
        for runtime in runtimes:
            live = _live(runtime)
            for version in self._stored_versions(runtime.name):
                info.add_metric([runtime.name, version, str(version == live).lower()], 1)
            by_reason = {"activate": 0, "rollback": 0}
            for sw in self.state.history(runtime.name):
                if sw.reason != DEFAULT:  # what served before the first switch: no switch
                    by_reason[sw.reason] = by_reason.get(sw.reason, 0) + 1
            for reason, n in sorted(by_reason.items()):
                switches.add_metric([runtime.name, reason], n)
        yield info
        yield switches
        figures = [self.figures(r.name, live) for r in runtimes if (live := _live(r)) is not None]
        yield from _merged(family for f in figures for family in _figure_families(f))


def _live(runtime: ModelRuntime) -> str | None:
    return runtime.live.version if runtime.ready else None


class _Families:
    def __init__(self, exposition: MetricsExposition) -> None:
        self.exposition = exposition

    def collect(self) -> Iterable[Metric]:
        return self.exposition.families()


def _merged(families: Iterable[Metric]) -> list[Metric]:
    """One family per metric name, holding the samples of every model's families."""
    by_name: dict[str, Metric] = {}
    for family in families:
        if family.name in by_name:
            by_name[family.name].samples.extend(family.samples)
        else:
            by_name[family.name] = family
    return list(by_name.values())


def _gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["model", "version", *(extra or [])])


def _figure_families(f: WindowFigures) -> Iterable[Metric]:
    mv = [f.model, f.version]
    rows = _gauge("argus_window_rows", "Rows each window figure rests on.", ["window"])
    rows.add_metric([*mv, "inputs"], f.input_rows)
    rows.add_metric([*mv, "labels"], f.labelled_rows)
    yield rows

    def single(name: str, doc: str, value: float | None) -> Iterable[Metric]:
        if value is not None and np.isfinite(value):
            g = _gauge(name, doc)
            g.add_metric(mv, float(value))
            yield g

    yield from single(
        "argus_label_coverage_ratio", "Share of predictions that got a label.", f.label_coverage
    )
    yield from single(
        "argus_estimated_accuracy_ratio",
        "Label-free accuracy estimate: mean calibrated confidence over the input window.",
        f.estimated_accuracy,
    )
    p = f.performance
    if p is not None:
        yield from single("argus_accuracy_ratio", "Accuracy over the labelled window.", p.accuracy)
        for metric, value in (
            ("precision", p.macro_precision),
            ("recall", p.macro_recall),
            ("f1", p.macro_f1),
        ):
            yield from single(
                f"argus_macro_{metric}_ratio", f"Macro {metric} over the labelled window.", value
            )
        for metric, values in (("precision", p.precision), ("recall", p.recall), ("f1", p.f1)):
            g = _gauge(
                f"argus_class_{metric}_ratio", f"Per-class {metric}, labelled window.", ["class"]
            )
            for label, value in zip(p.labels, values, strict=True):
                g.add_metric([*mv, str(label)], float(value))
            yield g
    d = f.drift
    if d is not None:
        chosen = _bounded_features(d.features)
        for attr, name, doc in (
            ("psi", "argus_feature_psi", "Population stability index against the reference."),
            ("js_distance", "argus_feature_js_distance", "Jensen-Shannon distance (base 2)."),
            ("ks_statistic", "argus_feature_ks_statistic", "Two-sample KS statistic."),
            ("ks_pvalue", "argus_feature_ks_pvalue", "Two-sample KS p-value (asymptotic)."),
            ("drifted", "argus_feature_drifted", "1 when the feature's drift verdict is on."),
        ):
            g = _gauge(name, doc, ["feature"])
            for feat in chosen:
                g.add_metric([*mv, feat.name], float(getattr(feat, attr)))
            yield g
        yield from single(
            "argus_drift_share_ratio", "Share of features judged drifted.", d.drift_share
        )
        yield from single(
            "argus_drift_detected",
            "1 when the dataset-level drift verdict is on.",
            float(d.drift_detected),
        )
    m = f.multivariate_drift
    if m is not None:
        yield from single(
            "argus_multivariate_drift_pvalue",
            "One-sided Mann-Whitney p-value: the window's anomaly scores against the "
            "held-out reference's.",
            m.p_value,
        )
        yield from single(
            "argus_multivariate_drift_statistic",
            "Effect size of the multivariate drift test (Cliff's delta, -1 to 1; 0 = none).",
            m.effect,
        )
        yield from single(
            "argus_multivariate_drift_detected",
            "1 when the multivariate drift verdict is on (p below alpha, effect at its minimum).",
            float(m.detected),
        )
    if f.prediction_drift is not None:
        pd = f.prediction_drift
        yield from single(
            "argus_prediction_psi", "PSI of the predicted-class distribution.", pd.class_psi
        )
        yield from single(
            "argus_prediction_chi2_pvalue",
            "Chi-square p-value of predicted-class counts against the reference shares.",
            pd.chi2_pvalue,
        )
        yield from single(
            "argus_confidence_psi", "PSI of the confidence distribution.", pd.confidence_psi
        )
    yield from single(
        "argus_anomaly_ratio", "Share of anomalous rows in the input window.", f.anomaly_ratio
    )


def _bounded_features(features: Any) -> list[Any]:
    if len(features) <= MAX_FEATURE_SERIES:
        return list(features)
    ranked = sorted(features, key=lambda x: (-x.psi, -x.ks_statistic, x.index))
    chosen = ranked[:MAX_FEATURE_SERIES]
    extra = [x for x in ranked[MAX_FEATURE_SERIES:] if x.drifted][:MAX_FEATURE_SERIES]
    return sorted(chosen + extra, key=lambda x: x.index)
