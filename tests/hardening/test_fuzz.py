"""API fuzzing: schemathesis against the service's own OpenAPI document (/docs.json).

Every operation of the document is fuzzed with schema-valid (positive) and schema-breaking
(negative) bodies, without a token, with a wrong one and with the right one. No answer may
be a 5xx, every 4xx must be JSON with an ``error`` message (BentoML's own validation errors
carry ``{"error", "detail"}``), and no worker may die. GET /models and /monitoring are not
in BentoML's document: they get hand-made query strings. Bounded by ``max_examples``
(``ARGUS_FUZZ_EXAMPLES``, default 100 per operation, mode and token) and derandomized, so
a CI run is repeatable.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.hardening.conftest import Hardened
from tests.hardening.support import logged_ids

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("ARGUS_FUZZ_EXAMPLES", "100"))
ARGUS_OPERATIONS = {"/predict", "/feedback", "/models/activate", "/models/rollback"}

# query strings for the GET routes BentoML's document does not list
HAND_MADE_QUERIES = [
    "",
    "version=",
    "version=nope",
    "version=a:b",
    "version=..%2F..%2Fetc",
    "version=%00",
    "version=%ff%fe",
    "version=latest",
    "version=" + "A" * 4000,
    "version=%F0%9F%92%A5",
    "version=1&version=2",
    "version[]=x",
    "unknown=1",
    "%%%",
    "version=%",
]


def _bad_answer(status: int, content_type: str, body: bytes) -> str | None:
    """Why an answer breaks the contract, or None."""
    if status >= 500:
        return f"{status}"
    if status >= 400:
        if not content_type.startswith("application/json"):
            return f"{status} with content-type {content_type!r}"
        try:
            doc = httpx.Response(status, content=body).json()
        except ValueError:
            return f"{status} with a body that is not JSON"
        if not isinstance(doc, dict) or not isinstance(doc.get("error"), str) or not doc["error"]:
            return f"{status} without an 'error' message"
    return None


def _run(strategy: Any, examples: int, check: Callable[[Any], None]) -> None:
    """Draw ``examples`` cases from ``strategy`` and ``check`` each (no shrinking)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        check(case)

    fuzz()


def _auth_variants(path: str, hardened: Hardened) -> list[tuple[str, dict[str, str], int]]:
    """(label, headers, share of MAX_EXAMPLES) for one operation."""
    if path.startswith("/models/"):
        right = hardened.admin
    elif path == "/feedback":
        right = hardened.feedback_auth
    else:
        return [("no token", {}, MAX_EXAMPLES)]
    few = max(5, MAX_EXAMPLES // 5)
    return [
        ("right token", right, MAX_EXAMPLES),
        ("no token", {}, few),
        ("wrong token", {"Authorization": "Bearer not-the-token"}, few),
    ]


def test_schemathesis_finds_no_5xx_and_every_4xx_is_json(hardened: Hardened) -> None:
    server = hardened.server
    pids_before = sorted(server.worker_pids())
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert ARGUS_OPERATIONS <= {op.path for op in operations}
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    session = requests.Session()

    for op in operations:
        for mode in GenerationMode:
            for label, headers, examples in _auth_variants(op.path, hardened):
                where = f"{op.method.upper()} {op.path} ({mode.value}, {label})"

                def check(case: Any, where: str = where, headers: dict[str, str] = headers) -> None:
                    r = case.call(base_url=server.url, session=session, headers=headers, timeout=60)
                    sent[case.operation.path] += 1
                    statuses[r.status_code] += 1
                    content_type = (r.headers.get("content-type") or [""])[0]
                    bad = _bad_answer(r.status_code, content_type, r.content)
                    if bad:
                        problems.append(
                            f"{where}: {bad}: body={case.body!r:.200} answer={r.text[:200]!r}"
                        )

                try:
                    _run(op.as_strategy(generation_mode=mode), examples, check)
                except Unsatisfiable:  # no parameters to break (negative GET /livez, ...)
                    continue

    with httpx.Client(base_url=server.url, timeout=60) as client:
        for route in ("/models", "/monitoring"):
            for query in HAND_MADE_QUERIES:
                r = client.get(f"{route}?{query}" if query else route)
                sent[route] += 1
                statuses[r.status_code] += 1
                bad = _bad_answer(r.status_code, r.headers.get("content-type", ""), r.content)
                if bad:
                    problems.append(f"GET {route}?{query[:40]}: {bad}: {r.text[:200]!r}")
        assert client.get("/readyz").status_code == 200

    total = sum(sent.values())
    n5xx = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nfuzz: {total} requests sent, {n5xx} 5xx seen; by path {dict(sorted(sent.items()))}; "
        f"by status {dict(sorted(statuses.items()))}"
    )
    assert not problems, f"{len(problems)} answers broke the contract:\n" + "\n".join(problems[:20])
    assert ARGUS_OPERATIONS <= set(sent)
    assert sorted(server.worker_pids()) == pids_before, "a worker died or was replaced"


def test_well_formed_rows_of_any_float32_are_answered_finite_or_refused(
    hardened: Hardened,
) -> None:
    """Schema-valid bodies never carry real rows, so the model path gets its own fuzzing:
    rows of any finite float32 values (3e38 included), any client ids. Each answer is a
    200 whose every figure is a finite number and whose rows reach the log, or a 4xx."""
    server = hardened.server
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
    row = st.lists(floats, min_size=64, max_size=64)
    answered: list[str] = []
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    client = httpx.Client(base_url=server.url, timeout=60)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        instances=st.lists(row, min_size=1, max_size=3),
        with_ids=st.booleans(),
        id_text=st.text(min_size=1, max_size=128),
    )
    def fuzz(instances: list[list[float]], with_ids: bool, id_text: str) -> None:
        body: dict[str, Any] = {"instances": instances}
        if with_ids:  # unique per example (a reused id is a 409, tested elsewhere)
            n = sum(statuses.values())
            body["ids"] = [f"{id_text[:100]}#{n}.{k}" for k in range(len(instances))]
        r = client.post("/predict", json=body)
        statuses[r.status_code] += 1
        bad = _bad_answer(r.status_code, r.headers.get("content-type", ""), r.content)
        if bad:
            problems.append(f"{bad}: {r.text[:200]!r}")
            return
        if r.status_code != 200:
            return
        predictions = r.json()["predictions"]
        if len(predictions) != len(instances):
            problems.append(f"{len(predictions)} predictions for {len(instances)} rows")
        for p in predictions:
            numbers = [p["confidence"], p["anomaly_score"], *p["probabilities"]]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
                problems.append(f"a figure is not a finite number: {p}")
            answered.append(p["id"])

    try:
        fuzz()
    finally:
        client.close()
    missing = set(answered) - logged_ids(server.home, answered)
    print(
        f"\nrow fuzz: {sum(statuses.values())} requests, "
        f"by status {dict(sorted(statuses.items()))}, {len(answered)} rows answered, "
        f"{len(missing)} missing from the log"
    )
    assert not problems, "\n".join(problems[:10])
    assert statuses[200] > 0 and not missing
