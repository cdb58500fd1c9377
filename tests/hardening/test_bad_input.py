"""The bad-input matrix, over HTTP against one real server: one case per row.

Each case gets its status and a JSON message naming the problem, is counted in
``argus_invalid_requests_total{reason}`` (a 4xx), and changes no monitoring figure: the
/monitoring snapshot (totals, windows, every figure) and every other ``argus_`` series of
/metrics (predictions, anomalies, feedback, histograms, window gauges) are identical
before and after.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.hardening.conftest import Hardened
from tests.hardening.support import monitoring_figures, rows, unchanging_lines, value

pytestmark = pytest.mark.integration

KNOWN = ["known-0", "known-1", "known-2"]  # predicted once, before the matrix
ROW = rows(1)[0]
LIMIT = 8 * 1024 * 1024  # ARGUS_MAX_BODY_BYTES default


def _raw_row(first: str) -> bytes:
    """A request whose first feature is the raw JSON token ``first`` (NaN, Infinity, ...)."""
    rest = ",".join(json.dumps(v) for v in ROW[1:])
    return f'{{"instances": [[{first},{rest}]]}}'.encode()


def _chunked_over_limit() -> Iterator[bytes]:
    """A body sent with Transfer-Encoding: chunked (no Content-Length), past the limit."""
    yield b'{"instances": ['
    chunk = (json.dumps(ROW) + ",").encode() * 256
    sent = 0
    while sent <= LIMIT:
        yield chunk
        sent += len(chunk)
    yield json.dumps(ROW).encode() + b"]}"


@dataclass
class Case:
    id: str
    path: str
    status: int
    reason: str | None  # argus_invalid_requests_total label; None: not a refusal
    text: str  # must appear in the answer's "error" (or, for 200, in the body)
    json: Any = None
    content: bytes | Callable[[], Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None  # "admin", "feedback" or None
    method: str = "POST"
    query: str = ""


ADMIN, FEEDBACK = "admin", "feedback"
JSON_CT = {"content-type": "application/json"}

CASES = [
    # -- /predict: rows ---------------------------------------------------------------
    Case("short-row", "/predict", 400, "row_length", "row 0 has 63 values; the model expects 64",
         json={"instances": [ROW[:63]]}),
    Case("long-second-row", "/predict", 400, "row_length", "row 1 has 65 values",
         json={"instances": [ROW, ROW + [0.0]]}),
    Case("empty-row", "/predict", 400, "row_length", "row 0 has 0 values",
         json={"instances": [[]]}),
    Case("string", "/predict", 400, "not_numeric",
         "row 0, feature 5: expected a number, got a string",
         json={"instances": [ROW[:5] + ["7"] + ROW[6:]]}),
    Case("boolean", "/predict", 400, "not_numeric",
         "row 0, feature 0: expected a number, got a boolean",
         json={"instances": [[True] + ROW[1:]]}),
    Case("null", "/predict", 400, "not_numeric", "row 0, feature 2: expected a number, got null",
         json={"instances": [ROW[:2] + [None] + ROW[3:]]}),
    Case("nested-list", "/predict", 400, "not_numeric",
         "row 0, feature 0: expected a number, got a list",
         json={"instances": [[[1.0]] + ROW[1:]]}),
    Case("object-in-row", "/predict", 400, "not_numeric", "got an object",
         json={"instances": [[{"v": 1}] + ROW[1:]]}),
    Case("row-not-a-list", "/predict", 400, "bad_type", "row 1 must be a list of numbers",
         json={"instances": [ROW, 3]}),
    Case("nan", "/predict", 400, "not_finite", "row 0, feature 0: NaN or infinity",
         content=_raw_row("NaN"), headers=JSON_CT),
    Case("infinity", "/predict", 400, "not_finite", "row 0, feature 0: NaN or infinity",
         content=_raw_row("Infinity"), headers=JSON_CT),
    Case("minus-infinity", "/predict", 400, "not_finite", "row 0, feature 0: NaN or infinity",
         content=_raw_row("-Infinity"), headers=JSON_CT),
    Case("beyond-float32", "/predict", 400, "not_finite",
         "row 0, feature 0: value does not fit in float32",
         json={"instances": [[1e39] + ROW[1:]]}),
    Case("huge-integer", "/predict", 400, "not_finite",
         "row 0, feature 0: value does not fit in float32",
         content=_raw_row("1" + "0" * 400), headers=JSON_CT),
    Case("model-output-overflow", "/predict", 400, "not_finite",
         "row 0: the model's output is not finite",
         json={"instances": [[3.0e38] * 64]}),
    # -- /predict: the request's shape ---------------------------------------------------
    Case("empty-instances", "/predict", 400, "empty_batch", "'instances' is empty",
         json={"instances": []}),
    Case("instances-not-a-list", "/predict", 400, "schema", "instances",
         json={"instances": "rows"}),
    Case("instances-missing", "/predict", 400, "schema", "instances",
         json={"rows": [ROW]}),
    Case("body-not-an-object", "/predict", 400, "schema", "object",
         json=[ROW]),
    Case("too-many-rows", "/predict", 413, "too_many_rows", "1025 rows; at most 1024",
         json={"instances": [ROW] * 1025}),
    Case("body-over-limit", "/predict", 413, "body_too_large", f"larger than {LIMIT} bytes",
         content=b'{"instances": [' + b" " * LIMIT + b"]}", headers=JSON_CT),
    Case("chunked-body-over-limit", "/predict", 413, "body_too_large", f"larger than {LIMIT} bytes",
         content=_chunked_over_limit, headers=JSON_CT),
    Case("invalid-json", "/predict", 400, "schema", "Invalid JSON",
         content=b'{"instances": [[1, 2,', headers=JSON_CT),
    Case("not-utf8", "/predict", 400, "schema", "Invalid JSON",
         content=b'\xff\xfe{"instances"', headers=JSON_CT),
    Case("text-plain", "/predict", 415, "unsupported_media_type", "Content-Type: application/json",
         content=b'{"instances": [[0]]}', headers={"content-type": "text/plain"}),
    Case("form-encoded", "/predict", 415, "unsupported_media_type",
         "application/x-www-form-urlencoded",
         content=b"instances=1", headers={"content-type": "application/x-www-form-urlencoded"}),
    # -- /predict: ids -------------------------------------------------------------------
    Case("duplicate-ids", "/predict", 400, "duplicate_ids", "ids[1] 'dup' appears twice",
         json={"instances": [ROW, ROW], "ids": ["dup", "dup"]}),
    Case("ids-count", "/predict", 400, "bad_ids", "'ids' has 1 entries for 2 rows",
         json={"instances": [ROW, ROW], "ids": ["a"]}),
    Case("id-not-a-string", "/predict", 400, "bad_ids", "ids[0] must be a non-empty string",
         json={"instances": [ROW], "ids": [7]}),
    Case("id-too-long", "/predict", 400, "bad_ids", "at most 128 characters",
         json={"instances": [ROW], "ids": ["x" * 129]}),
    Case("id-already-logged", "/predict", 409, "duplicate_ids", "ids already recorded: ['known-0']",
         json={"instances": [ROW], "ids": ["known-0"]}),
    # -- /feedback -----------------------------------------------------------------------
    Case("feedback-unknown-ids", "/feedback", 200, None, '"unknown_ids": ["ghost-1", "ghost-2"]',
         json={"feedback": [{"id": "ghost-1", "label": 1}, {"id": "ghost-2", "label": 2}]},
         auth=FEEDBACK),
    Case("label-outside-classes", "/feedback", 400, "bad_label",
         "label 10 is outside the model's classes 0..9",
         json={"feedback": [{"id": "known-1", "label": 10}]}, auth=FEEDBACK),
    Case("label-negative", "/feedback", 400, "bad_label", "feedback[0].label is not a class index",
         json={"feedback": [{"id": "known-1", "label": -1}]}, auth=FEEDBACK),
    Case("label-huge", "/feedback", 400, "bad_label", "feedback[0].label is not a class index",
         json={"feedback": [{"id": "ghost-3", "label": 2**70}]}, auth=FEEDBACK),
    Case("label-string", "/feedback", 400, "bad_label",
         "feedback[0].label must be an integer, got a string",
         json={"feedback": [{"id": "known-1", "label": "3"}]}, auth=FEEDBACK),
    Case("label-boolean", "/feedback", 400, "bad_label", "got a boolean",
         json={"feedback": [{"id": "known-1", "label": True}]}, auth=FEEDBACK),
    Case("label-float", "/feedback", 400, "bad_label", "got a number",
         json={"feedback": [{"id": "known-1", "label": 1.5}]}, auth=FEEDBACK),
    Case("one-bad-item-refuses-all", "/feedback", 400, "bad_label",
         "feedback for 'known-2': label 11",
         json={"feedback": [{"id": "known-1", "label": 1}, {"id": "known-2", "label": 11}]},
         auth=FEEDBACK),
    Case("feedback-id-missing", "/feedback", 400, "bad_ids",
         "feedback[0].id must be a non-empty string",
         json={"feedback": [{"label": 1}]}, auth=FEEDBACK),
    Case("feedback-empty", "/feedback", 400, "empty_batch", "'feedback' is empty",
         json={"feedback": []}, auth=FEEDBACK),
    Case("feedback-item-not-object", "/feedback", 400, "bad_type", "feedback[0] must be an object",
         json={"feedback": ["known-1"]}, auth=FEEDBACK),
    Case("feedback-too-many", "/feedback", 413, "too_many_rows", "1025 items; at most 1024",
         json={"feedback": [{"id": f"g{i}", "label": 0} for i in range(1025)]}, auth=FEEDBACK),
    Case("feedback-without-token", "/feedback", 401, "unauthorized",
         "Authorization: Bearer <ARGUS_FEEDBACK_TOKEN>",
         json={"feedback": [{"id": "known-1", "label": 1}]}),
    # -- admin ---------------------------------------------------------------------------
    Case("activate-unknown-version", "/models/activate", 404, "unknown_version", "no version",
         json={"version": "doesnotexist"}, auth=ADMIN),
    Case("activate-corrupted-version", "/models/activate", 422, "unverifiable_version",
         "model.onnx",
         json={"version": "<corrupted>"}, auth=ADMIN),
    Case("activate-empty-version", "/models/activate", 400, "bad_type",
         "'version' must be a non-empty string",
         json={"version": ""}, auth=ADMIN),
    Case("activate-version-not-a-string", "/models/activate", 400, "schema", "version",
         json={"version": 3}, auth=ADMIN),
    Case("activate-without-token", "/models/activate", 401, "unauthorized", "ARGUS_ADMIN_TOKEN",
         json={"version": "<live>"}),
    Case("rollback-without-history", "/models/rollback", 409, "no_previous_version",
         "no earlier live version",
         json={}, auth=ADMIN),
    # -- GET routes ----------------------------------------------------------------------
    Case("monitoring-unknown-version", "/monitoring", 404, "unknown_version", "no version",
         method="GET", query="version=nope"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(hardened: Hardened) -> Hardened:
    """The package's server, with the rows the cases refer to already predicted."""
    with hardened.server.client() as c:
        r = c.post("/predict", json={"instances": rows(3, 100), "ids": KNOWN})
        assert r.status_code == 200, r.text
    return hardened


def _request(case: Case, hardened: Hardened) -> httpx.Response:
    headers = dict(case.headers)
    if case.auth == ADMIN:
        headers.update(hardened.admin)
    elif case.auth == FEEDBACK:
        headers.update(hardened.feedback_auth)
    body = case.json
    if isinstance(body, dict) and body.get("version") == "<corrupted>":
        body = {"version": hardened.versions[0].version}
    elif isinstance(body, dict) and body.get("version") == "<live>":
        body = {"version": hardened.versions[-1].version}
    content = case.content() if callable(case.content) else case.content
    url = case.path + (f"?{case.query}" if case.query else "")
    with hardened.server.client() as c:
        if case.method == "GET":
            return c.get(url, headers=headers)
        if content is not None:
            return c.post(url, content=content, headers=headers)
        return c.post(url, json=body, headers=headers)


def _figures(hardened: Hardened) -> tuple[dict[str, Any], list[str], str]:
    with hardened.server.client() as c:
        text = c.get("/metrics").text
        return monitoring_figures(c), unchanging_lines(text), text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_by_name_and_changes_no_figure(server: Hardened, case: Case) -> None:
    snap_before, lines_before, text_before = _figures(server)
    r = _request(case, server)
    assert r.status_code == case.status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = r.json()
    if case.status >= 400:
        assert isinstance(doc.get("error"), str) and doc["error"], doc
        assert case.text in doc["error"], doc  # BentoML's own refusals are restated too
        assert doc["reason"] == case.reason == r.headers["x-argus-reason"], doc
    else:
        assert case.text in r.text
    snap_after, lines_after, text_after = _figures(server)
    assert snap_after == snap_before, "a monitoring figure moved"
    assert lines_after == lines_before, "an argus_ series moved"
    if case.reason is not None:
        counted = value(text_after, "argus_invalid_requests_total", reason=case.reason)
        assert counted == value(text_before, "argus_invalid_requests_total", reason=case.reason) + 1


def test_the_matrix_covers_the_issue(server: Hardened) -> None:
    """Every kind of bad input the hardening issue lists has at least one case."""
    ids = {c.id for c in CASES}
    for wanted in (
        "short-row", "string", "boolean", "nested-list", "nan", "infinity",
        "empty-instances", "too-many-rows", "body-over-limit", "chunked-body-over-limit",
        "invalid-json", "text-plain", "duplicate-ids", "feedback-unknown-ids",
        "label-outside-classes", "activate-unknown-version", "activate-corrupted-version",
    ):  # fmt: skip
        assert wanted in ids
    print(f"\nbad-input matrix: {len(CASES)} cases")


def test_malformed_bodies_are_logged_as_warnings_without_data(server: Hardened) -> None:
    """BentoML's own refusals (no JSON, a missing field, a wrong JSON type) leave one
    warning line each in the server log: no ERROR traceback, none of the body."""
    bodies = [b"not json at all", b'{"nope": "marker-1"}', b'{"instances": "marker-2"}']
    path = server.server.log_path
    start = path.stat().st_size

    def written() -> str:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    with server.server.client() as c:
        for body in bodies:
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and written().count("refused a malformed") < 3:
        time.sleep(0.2)
    log = written()
    assert log.count("refused a malformed request on /predict (400)") == 3, log[-2000:]
    assert "Field required" in log and "Invalid JSON" in log
    assert "marker-1" not in log and "marker-2" not in log and "not json at all" not in log
    assert "Traceback" not in log and "ValidationError" not in log, log[-3000:]
