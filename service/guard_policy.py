"""The guard's policy: a TOML file of rules over the monitoring's own figures.

``ARGUS_GUARD_FILE`` names it; ``service/guard.toml`` is the default, documented in
docs/releasing.md. A policy is read whole and checked whole before anything runs: a
malformed one is refused in one line naming the rule and the field, so nothing is ever
half-applied.

A rule names a ``figure`` of a release (the new version against the one it replaces), a
comparison (``op``) and a ``threshold``, the rows it needs (``min_rows``: below that it
does not judge) and ``for``: how many consecutive evaluations it must hold before the
guard acts. With ``relative = true`` the threshold is added to the figure of the version
being replaced: ``estimated_accuracy < -0.05`` relative means "0.05 below what the
previous version had".
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import SettingsError

FIGURES = {
    "accuracy": "realized accuracy of the new version's labelled window",
    "estimated_accuracy": "label-free accuracy estimate of the new version",
    "anomaly_ratio": "share of anomalous rows in the new version's input window",
    "drift_share": "share of drifted features in the new version's input window",
    "agreement": "share of shadowed rows where the new and the previous version agree",
    "candidate_worse": "1 when the new version is significantly less accurate",
    "error_ratio": "share of /predict and /feedback requests answered 5xx (this replica)",
}
OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}
MODES = ("off", "dry-run", "act")
DEFAULT_FILE = Path(__file__).with_name("guard.toml")


@dataclass(frozen=True)
class Rule:
    name: str
    figure: str
    op: str
    threshold: float
    min_rows: int = 0
    for_: int = 1
    relative: bool = False

    def holds(self, value: float | None, previous: float | None) -> bool | None:
        """True when the rule fails the release; ``None`` when it cannot judge (no
        value, or no previous value for a relative threshold)."""
        if value is None or (self.relative and previous is None):
            return None
        limit = self.threshold + (previous if self.relative and previous is not None else 0.0)
        return OPS[self.op](float(value), float(limit))


@dataclass(frozen=True)
class Policy:
    """The whole policy; every duration in seconds."""

    rules: tuple[Rule, ...]
    interval: float = 10.0
    guard_seconds: float = 600.0
    cooldown: float = 900.0
    margin: float = 0.01
    alpha: float = 0.05
    min_labelled: int = 200
    steps: tuple[float, ...] = field(default_factory=tuple)  # canary percents, ascending


_TOP = {
    "interval": (float, lambda v: v > 0, "> 0"),
    "guard_seconds": (float, lambda v: v >= 0, ">= 0"),
    "cooldown": (float, lambda v: v >= 0, ">= 0"),
    "margin": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha": (float, lambda v: 0 < v < 1, "in (0, 1)"),
    "min_labelled": (int, lambda v: v >= 1, ">= 1"),
}


def load_policy(path: Path | None = None) -> Policy:
    """Read and check the policy at ``path`` (default: the shipped one)."""
    path = DEFAULT_FILE if path is None else Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"guard policy {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"guard policy {path}: not TOML ({exc})") from None
    return parse_policy(data, str(path))


def parse_policy(data: dict[str, Any], where: str = "guard policy") -> Policy:
    """Check ``data`` (a parsed TOML document) field by field; ``SettingsError`` names the
    first bad rule and field."""
    known = set(_TOP) | {"rule", "steps"}
    for key in data:
        if key not in known:
            raise SettingsError(f"{where}: unknown setting {key!r} (known: {sorted(known)})")
    top: dict[str, Any] = {}
    for key, (kind, ok, need) in _TOP.items():
        if key in data:
            top[key] = _number(data[key], kind, ok, f"{where}: {key} must be {need}")
    steps = data.get("steps", [])
    if not isinstance(steps, list) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) and 0 < s <= 100 for s in steps
    ):
        raise SettingsError(f"{where}: steps must be a list of percents in (0, 100]")
    if list(steps) != sorted(steps):
        raise SettingsError(f"{where}: steps must ascend")
    rules_data = data.get("rule", [])
    if not isinstance(rules_data, list):
        raise SettingsError(f"{where}: rules are [[rule]] tables")
    rules = tuple(_rule(r, i, where) for i, r in enumerate(rules_data))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise SettingsError(f"{where}: rule names must be unique, got {names}")
    return Policy(rules=rules, steps=tuple(float(s) for s in steps), **top)


def _rule(data: Any, i: int, where: str) -> Rule:
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: rule {i} must be a table")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SettingsError(f"{where}: rule {i}: name must be a non-empty string")
    here = f"{where}: rule {name!r}"
    allowed = {"name", "figure", "op", "threshold", "min_rows", "for", "relative"}
    for key in data:
        if key not in allowed:
            raise SettingsError(f"{here}: unknown field {key!r} (known: {sorted(allowed)})")
    figure = data.get("figure")
    if figure not in FIGURES:
        raise SettingsError(f"{here}: figure must be one of {sorted(FIGURES)}, got {figure!r}")
    op = data.get("op")
    if op not in OPS:
        raise SettingsError(f"{here}: op must be one of {sorted(OPS)}, got {op!r}")
    if "threshold" not in data:
        raise SettingsError(f"{here}: threshold is missing")
    threshold = _number(
        data["threshold"], float, lambda v: True, f"{here}: threshold must be a number"
    )
    min_rows = _number(
        data.get("min_rows", 0), int, lambda v: v >= 0, f"{here}: min_rows must be an integer >= 0"
    )
    for_ = _number(
        data.get("for", 1), int, lambda v: v >= 1, f"{here}: for must be an integer >= 1"
    )
    relative = data.get("relative", False)
    if not isinstance(relative, bool):
        raise SettingsError(f"{here}: relative must be true or false")
    if relative and figure in ("agreement", "candidate_worse", "error_ratio"):
        raise SettingsError(f"{here}: relative: {figure} has no previous version's value")
    return Rule(str(name), str(figure), str(op), threshold, min_rows, for_, relative)


def _number(value: Any, kind: type, ok: Any, message: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(message)
    if kind is int and not float(value).is_integer():
        raise SettingsError(message)
    value = kind(value)
    if not ok(value):
        raise SettingsError(message)
    return value
