"""Validate request payloads before anything reaches the model or the monitors.

Every failure is a ``RequestError`` carrying the HTTP status, a short ``reason`` (the
label of ``argus_invalid_requests_total``) and a message that names the row and the
field. Types are checked strictly by pydantic (no strings, no booleans, no NaN or
infinity), stopping at the first bad value. Over HTTP that happens while the body is
parsed: ``Rows`` is the type of ``/predict``'s ``instances``, so BentoML validates the JSON
in one pass in Rust, and the middleware restates its refusal with ``rows_problem``;
``parse_instances(..., typed=True)`` then only checks shapes and float32 range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import AllowInfNan, Field, Strict, TypeAdapter, ValidationError

MAX_ID_LENGTH = 128
MAX_LABEL = 2**31 - 1  # class indices beyond this fit no model (and no SQLite INTEGER)

_UNKNOWN: Any = object()  # a value rows_problem could not look up

# A finite JSON number (integers included; no strings, booleans or null), in rows of them;
# fail_fast: the first bad value ends validation (a huge bad body costs no huge report).
Feature = Annotated[float, Strict(), AllowInfNan(False)]
Rows = Annotated[list[Annotated[list[Feature], Field(fail_fast=True)]], Field(fail_fast=True)]
_Rows: TypeAdapter[list[list[float]]] = TypeAdapter(Rows)


RETRY_AFTER = "2"  # seconds, on a 503 while the shared state is away


class RequestError(Exception):
    """A refusal: ``status`` (a 4xx, or a 503 while something is away), ``reason`` (metric
    label), a message, and response ``headers`` (``Retry-After`` on a 503)."""

    def __init__(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "reason": self.reason}


def parse_instances(
    instances: Any, n_features: int, max_batch: int, *, typed: bool = False
) -> np.ndarray:
    """Return the rows as a float32 matrix, or raise ``RequestError`` naming the problem.

    ``typed``: the rows already passed ``Rows`` (the HTTP path), so only their count,
    their lengths and the float32 range are left to check.
    """
    if not isinstance(instances, list):
        raise RequestError(
            400, "bad_type", f"'instances' must be a list of rows, got {_kind(instances)}"
        )
    if not instances:
        raise RequestError(400, "empty_batch", "'instances' is empty: send at least one row")
    if len(instances) > max_batch:
        raise RequestError(
            413,
            "too_many_rows",
            f"'instances' has {len(instances)} rows; at most {max_batch} are allowed per request",
        )
    rows = instances
    if not typed:
        try:
            rows = _Rows.validate_python(instances)
        except ValidationError as exc:
            problem = rows_problem(exc.errors())
            raise problem or RequestError(400, "bad_type", str(exc)) from None
    for i, row in enumerate(rows):
        if len(row) != n_features:
            raise RequestError(
                400,
                "row_length",
                f"row {i} has {len(row)} values; the model expects {n_features}",
            )
    with np.errstate(over="ignore"):  # too large for float32: refused just below
        X = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(X).all():
        i, j = (int(v) for v in np.argwhere(~np.isfinite(X))[0])
        raise RequestError(
            400, "not_finite", f"row {i}, feature {j}: value does not fit in float32"
        )
    return X


def rows_problem(
    errors: Sequence[Mapping[str, Any]], instances: Any = _UNKNOWN
) -> RequestError | None:
    """The first of pydantic's ``errors`` against ``Rows`` as Argus's refusal, naming the
    row and the feature; ``None`` when it is not about a row or a value (for example a
    missing ``instances``). Locations may start with ``"instances"`` (BentoML's errors).
    The offending value, named in the message, is the error's ``input`` or else is looked
    up in ``instances`` (BentoML leaves ``input`` out of its errors)."""
    for err in errors:
        loc = list(err.get("loc", ()))
        if loc[:1] == ["instances"]:
            loc = loc[1:]
        if not 1 <= len(loc) <= 2 or not all(isinstance(p, int) for p in loc):
            continue
        value = err["input"] if "input" in err else _lookup(instances, loc)
        got = "" if value is _UNKNOWN else f", got {_kind(value)}"
        if len(loc) == 1:
            return RequestError(400, "bad_type", f"row {loc[0]} must be a list of numbers{got}")
        where = f"row {loc[0]}, feature {loc[1]}"
        if isinstance(value, int) and not isinstance(value, bool):  # an integer beyond float64
            return RequestError(400, "not_finite", f"{where}: value does not fit in float32")
        if err.get("type") == "finite_number":
            return RequestError(400, "not_finite", f"{where}: NaN or infinity")
        return RequestError(400, "not_numeric", f"{where}: expected a number{got}")
    return None


def _lookup(instances: Any, loc: Sequence[int]) -> Any:
    value = instances
    for index in loc:
        if not isinstance(value, list) or not 0 <= index < len(value):
            return _UNKNOWN
        value = value[index]
    return value


def describe_problems(errors: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """pydantic's errors (``loc``, ``msg``) as one line naming each field, for example
    ``instances: Field required`` or ``body: Invalid JSON: EOF while parsing a list``."""
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}"
        for e in errors[:limit]
    ]
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_ids(ids: Any, n_rows: int) -> list[str] | None:
    """Client ids: optional; one non-empty string per row, unique within the request."""
    if ids is None:
        return None
    if not isinstance(ids, list):
        raise RequestError(400, "bad_type", f"'ids' must be a list of strings, got {_kind(ids)}")
    if len(ids) != n_rows:
        raise RequestError(
            400, "bad_ids", f"'ids' has {len(ids)} entries for {n_rows} rows; give one per row"
        )
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise RequestError(
                400,
                "bad_ids",
                f"ids[{i}] must be a non-empty string of at most {MAX_ID_LENGTH} characters",
            )
        if not _utf8(value):
            raise RequestError(400, "bad_ids", f"ids[{i}] is not valid Unicode text")
        if value in seen:
            raise RequestError(400, "duplicate_ids", f"ids[{i}] {value!r} appears twice")
        seen.add(value)
    return list(ids)


def _utf8(value: str) -> bool:
    """False for text no store can keep, such as a lone surrogate from a JSON escape."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_feedback(feedback: Any, max_items: int) -> list[tuple[str, int]]:
    """``[{"id": str, "label": int}, ...]`` -> pairs; labels are range-checked later."""
    if not isinstance(feedback, list):
        raise RequestError(
            400, "bad_type", f"'feedback' must be a list of objects, got {_kind(feedback)}"
        )
    if not feedback:
        raise RequestError(400, "empty_batch", "'feedback' is empty")
    if len(feedback) > max_items:
        raise RequestError(
            413, "too_many_rows", f"'feedback' has {len(feedback)} items; at most {max_items}"
        )
    pairs: list[tuple[str, int]] = []
    for i, item in enumerate(feedback):
        if not isinstance(item, dict):
            raise RequestError(400, "bad_type", f"feedback[{i}] must be an object")
        fid, label = item.get("id"), item.get("label")
        if not isinstance(fid, str) or not fid or len(fid) > MAX_ID_LENGTH or not _utf8(fid):
            raise RequestError(400, "bad_ids", f"feedback[{i}].id must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, int):
            raise RequestError(
                400, "bad_label", f"feedback[{i}].label must be an integer, got {_kind(label)}"
            )
        if not 0 <= label <= MAX_LABEL:
            raise RequestError(
                400, "bad_label", f"feedback[{i}].label is not a class index (0..{MAX_LABEL})"
            )
        pairs.append((fid, label))
    return pairs


def check_labels(pairs: Sequence[tuple[str, int, int]]) -> None:
    """``(id, label, n_classes)`` triples: each label must be a class of its model."""
    for fid, label, n_classes in pairs:
        if not 0 <= label < n_classes:
            raise RequestError(
                400,
                "bad_label",
                f"feedback for {fid!r}: label {label} is outside the model's classes "
                f"0..{n_classes - 1}",
            )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
