"""The bulk histogram update equals prometheus_client's own per-value observe."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from service.metrics import SCORE_BUCKETS, observe_many


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_equals_observe() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [rng.lognormal(3, 2, size=3000), np.array(SCORE_BUCKETS, dtype=float), [0.0, 1e9]]
    )
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("s", "s", ["m"], buckets=SCORE_BUCKETS, registry=one).labels("x")
    h2 = Histogram("s", "s", ["m"], buckets=SCORE_BUCKETS, registry=bulk).labels("x")
    for v in values.tolist():
        h1.observe(v)
    observe_many(h2, values[:1000])
    observe_many(h2, values[1000:])
    observe_many(h2, np.array([]))
    a, b = samples(one), samples(bulk)
    assert a.keys() == b.keys()
    sum_key = ("s_sum", "")
    for key in a.keys() - {sum_key}:
        assert b[key] == a[key], key  # bucket counts and _count exactly equal
    assert b[sum_key] == pytest.approx(a[sum_key], rel=1e-9)
    assert b[("s_bucket", "+Inf")] == len(values)
