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
from dataclasses import replace
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from models import store
from monitoring.binned import bin_counts, psi
from monitoring.compare import PairedFigures, paired_figures, two_proportion_worse
from monitoring.profile import ReferenceProfile
from monitoring.windows import WindowFigures
from service.fleet import Fleet
from service.runtime import ModelRuntime
from service.settings import Settings
from service.validation import RequestError
from state.ids import SHADOW_SUFFIX
from state.types import DEFAULT, SHADOW, StateStore
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
        self._compared: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    # -- computing -------------------------------------------------------------------

    def profile(self, model: str, version: str) -> ReferenceProfile:
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
        return windows.figures(self.profile(model, version))

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

    # -- what the console draws -------------------------------------------------------

    def _target(self, model: str | None, version: str | None) -> tuple[str, str]:
        try:
            runtime = self.fleet.get(model or None)
        except LookupError as exc:
            raise RequestError(404, "unknown_model", str(exc)) from None
        target = version or _live(runtime)
        if target is None:
            raise RequestError(503, "no_model", f"no version of {runtime.name} is being served")
        try:
            return runtime.name, store.get_version(runtime.name, target).version
        except LookupError:
            raise RequestError(
                404, "unknown_version", f"no version {runtime.name}:{target} in the store"
            ) from None

    def feature(self, model: str | None, version: str | None, index: int) -> dict[str, Any]:
        """One feature's input-window histogram on the reference's bins, beside the
        reference's (``GET /monitoring/feature``)."""
        name, version = self._target(model, version)
        profile = self.profile(name, version)
        if not 0 <= index < profile.n_features:
            raise RequestError(
                404, "unknown_feature", f"feature {index} is not in 0..{profile.n_features - 1}"
            )
        inputs = self.state.input_window(name, version, self.settings.input_window)
        column = inputs[:, index] if len(inputs) else np.empty(0)
        edges = np.asarray(profile.edges[index], dtype=np.float64)
        current = bin_counts(column.astype(np.float32), edges) if len(column) else None
        return {
            "model": name,
            "version": version,
            "index": index,
            "name": profile.feature_names[index],
            "edges": edges.tolist(),
            "reference_counts": np.asarray(profile.reference_counts[index]).tolist(),
            "current_counts": None if current is None else current.tolist(),
            "rows": int(len(column)),
        }

    def scores(self, model: str | None, version: str | None, bins: int = 30) -> dict[str, Any]:
        """The input window's anomaly-score histogram and the threshold
        (``GET /monitoring/scores``)."""
        name, version = self._target(model, version)
        threshold = float(self.profile(name, version).anomaly.threshold_)
        window = self.state.prediction_window(name, version, self.settings.input_window)
        scores = np.asarray(window.anomaly_scores, dtype=np.float64)
        if not len(scores):
            return {"model": name, "version": version, "threshold": threshold, "edges": [],
                    "counts": [], "rows": 0}  # fmt: skip
        top = max(float(np.quantile(scores, 0.99)), threshold) * 1.2
        counts, edges = np.histogram(np.minimum(scores, top), bins=bins, range=(0.0, top))
        return {
            "model": name,
            "version": version,
            "threshold": threshold,
            "edges": edges.tolist(),
            "counts": counts.tolist(),  # the last bin holds every score above its edge
            "rows": int(len(scores)),
        }

    # -- candidate against live -------------------------------------------------------

    def compare(self, model: str | None = None, now: float | None = None) -> dict[str, Any]:
        """Live against the model's shadow or canary (``GET /monitoring/compare``)."""
        try:
            runtime = self.fleet.get(model or None)
        except LookupError as exc:
            raise RequestError(404, "unknown_model", str(exc)) from None
        name = runtime.name
        live = _live(runtime)
        if live is None:
            raise RequestError(503, "no_model", f"no version of {name} is being served")
        now = time.monotonic() if now is None else now
        key = (name, "compare:" + live)
        with self._lock:
            hit = self._compared.get(key)
            if hit is not None and now - hit[0] < self.settings.metrics_cache_seconds:
                return hit[1]
        result = self._compare(name, live)
        with self._lock:
            self._compared[key] = (now, result)
        return result

    def _compare(self, name: str, live: str) -> dict[str, Any]:
        candidate = self.state.get_candidate(name)
        doc: dict[str, Any] = {
            "model": name,
            "generated_at": time.time(),
            "live": _summary(self.figures(name, live)),
            "candidate": None,
            "comparison": None,
        }
        if candidate is None:
            return doc
        cand = self.figures(name, candidate.version)
        doc["candidate"] = {
            "role": candidate.role,
            "share": candidate.share,
            "since": candidate.t,
            **_summary(cand),
        }
        if candidate.role == SHADOW:
            doc["comparison"] = self.paired(name, live, candidate.version).to_dict()
        else:  # a canary answered other rows: two proportions
            lp, cp = self.figures(name, live).performance, cand.performance
            verdict = two_proportion_worse(
                _correct(lp), 0 if lp is None else lp.n, _correct(cp), 0 if cp is None else cp.n
            )
            doc["comparison"] = {
                "rows": cand.prediction_rows,
                "agreement": None,
                "labelled": verdict.rows,
                "live_accuracy": None if lp is None else lp.accuracy,
                "candidate_accuracy": None if cp is None else cp.accuracy,
                "class_psi": _class_psi(self.figures(name, live), cand),
                "verdict": verdict.to_dict(),
            }
        return doc

    def paired(
        self, name: str, live: str, shadow: str, *, reverse: bool = False, **test: float
    ) -> PairedFigures:
        """Live against its shadow on the same rows: agreement over the shadow's last
        input-window rows, accuracies and the McNemar verdict over its last label-window
        labelled rows (labels can come long after the input window has moved on).
        ``reverse``: judge whether *live* is worse than the shadow (the guard's question
        after a switch, where the shadow is the previous version)."""
        s = self.settings
        recent = self._pairs(name, live, self.state.recent_ids(name, shadow, s.input_window))
        labelled = self._pairs(name, live, self.state.labelled_ids(name, shadow, s.label_window))
        k = self.profile(name, live).n_classes
        first, second = (1, 0) if reverse else (0, 1)
        by_rows = paired_figures(recent[first], recent[second], recent[2] * 0 - 1, n_classes=k)
        by_labels = paired_figures(labelled[first], labelled[second], labelled[2], n_classes=k,
                                   **test)  # fmt: skip
        return replace(
            by_labels, rows=by_rows.rows, agreement=by_rows.agreement, class_psi=by_rows.class_psi
        )

    def _pairs(self, name: str, live: str, shadow_ids: list[str]) -> tuple[np.ndarray, ...]:
        """Live labels, shadow labels and true labels (-1: none yet) of the rows among
        ``shadow_ids`` whose live prediction is logged under ``live``."""
        shadow_ids = [i for i in shadow_ids if i.endswith(SHADOW_SUFFIX)]
        bases = [i[: -len(SHADOW_SUFFIX)] for i in shadow_ids]
        found = self.state.outcomes(bases + shadow_ids)
        rows = [
            (found[b], found[s])
            for b, s in zip(bases, shadow_ids, strict=True)
            if b in found and s in found and found[b].version == live
        ]
        true = [
            r.true_label if r.true_label is not None else (-1 if c.true_label is None else
                                                           c.true_label)
            for r, c in rows
        ]  # fmt: skip
        return (
            np.array([r.label for r, _ in rows], dtype=np.int64),
            np.array([c.label for _, c in rows], dtype=np.int64),
            np.array(true, dtype=np.int64),
        )

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
            by_reason = {"activate": 0, "rollback": 0, "promote": 0}
            for sw in self.state.history(runtime.name):
                if sw.reason != DEFAULT:  # what served before the first switch: no switch
                    by_reason[sw.reason] = by_reason.get(sw.reason, 0) + 1
            for reason, n in sorted(by_reason.items()):
                switches.add_metric([runtime.name, reason], n)
        yield info
        yield switches
        served = [(r.name, live) for r in runtimes if (live := _live(r)) is not None]
        candidates = {name: self.state.get_candidate(name) for name, _ in served}
        figures = [self.figures(name, live) for name, live in served]
        figures += [self.figures(name, c.version) for name, c in candidates.items() if c]
        yield from _merged(family for f in figures for family in _figure_families(f))
        yield from self._candidate_families(candidates)
        yield from self._guard_families([name for name, _ in served])

    def _guard_families(self, models: list[str]) -> Iterable[Metric]:
        """The guard's last evaluation of each model, as the evaluator stored it."""
        failing = _gauge(
            "argus_guard_rule_failing",
            "1 when the guard's rule failed the release at its last evaluation.",
            ["rule"],
        )
        for name in models:
            doc = self.state.get_doc(f"guard:{name}")
            if doc is None:
                continue
            for rule, value in sorted(doc.get("failing", {}).items()):
                failing.add_metric([name, str(doc.get("version")), rule], float(bool(value)))
        yield failing

    def _candidate_families(self, candidates: dict[str, Any]) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "argus_candidate_info",
            "The model's shadow or canary (role), 1 while it runs.",
            labels=["model", "version", "role"],
        )
        agreement = _gauge(
            "argus_candidate_agreement_ratio",
            "Share of shadowed rows where the shadow predicted the live version's label.",
        )
        delta = _gauge(
            "argus_candidate_accuracy_delta",
            "Candidate minus live accuracy (a shadow: on the same labelled rows).",
        )
        worse = _gauge(
            "argus_candidate_worse",
            "1 when the candidate is significantly less accurate than live by more than "
            "the margin (McNemar for a shadow, two proportions for a canary).",
        )
        for name, candidate in sorted(candidates.items()):
            if candidate is None:
                continue
            mv = [name, candidate.version]
            info.add_metric([*mv, candidate.role], 1)
            comparison = self.compare(name)["comparison"]
            if comparison is None:
                continue
            if comparison["agreement"] is not None:
                agreement.add_metric(mv, comparison["agreement"])
            verdict = comparison["verdict"]
            if verdict["accuracy_delta"] is not None:
                delta.add_metric(mv, verdict["accuracy_delta"])
            worse.add_metric(mv, float(verdict["worse"]))
        yield from (info, agreement, delta, worse)


def _summary(f: WindowFigures) -> dict[str, Any]:
    """One version's side of the comparison, with the rows behind each figure."""
    return {
        "version": f.version,
        "input_rows": f.input_rows,
        "labelled_rows": f.labelled_rows,
        "accuracy": None if f.performance is None else f.performance.accuracy,
        "estimated_accuracy": f.estimated_accuracy,
        "anomaly_ratio": f.anomaly_ratio,
        "drift_share": None if f.drift is None else f.drift.drift_share,
    }


def _correct(p: Any) -> int:
    return 0 if p is None else int(round(p.accuracy * p.n))


def _class_psi(live: WindowFigures, cand: WindowFigures) -> float | None:
    if live.prediction_drift is None or cand.prediction_drift is None:
        return None
    return psi(live.prediction_drift.class_share, cand.prediction_drift.class_share)


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
