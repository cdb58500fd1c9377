"""Every PromQL expression the dashboards and the rule files hold, ready to run.

Grafana's template variables are substituted with real values; a variable query
``label_values(selector, label)`` becomes ``count by (label) (selector)``, which returns
data exactly when Grafana's variable would offer a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "argus.json"
RULES = (
    ROOT / "prometheus" / "rules" / "argus-recording.yml",
    ROOT / "prometheus" / "rules" / "argus-alerts.yml",
)
# Grafana's interval variables, with values that suit a Prometheus scraping every second.
INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


@dataclass(frozen=True)
class Expression:
    where: str  # "dashboard panel 'X' A", "alert ArgusDown", "record x:y:z", ...
    expr: str
    kind: str  # panel | variable | annotation | record | alert
    name: str = ""


def dashboard_expressions(path: Path = DASHBOARD) -> list[Expression]:
    dash = json.loads(path.read_text())
    found: list[Expression] = []
    for panel in _panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(
                    Expression(
                        f"panel {panel.get('title')!r} {target.get('refId')}",
                        target["expr"],
                        "panel",
                        str(panel.get("title")),
                    )
                )
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            found.append(
                Expression(f"annotation {ann['name']!r}", ann["expr"], "annotation", ann["name"])
            )
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        found.append(
            Expression(
                f"variable ${var['name']}", label_values_query(query), "variable", var["name"]
            )
        )
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows keep theirs inside


def label_values_query(query: str) -> str:
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if not m:
        raise ValueError(f"not a label_values query: {query!r}")
    return f"count by ({m.group(2)}) ({m.group(1)})"


def rule_expressions(paths: tuple[Path, ...] = RULES) -> list[Expression]:
    found: list[Expression] = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    found.append(
                        Expression(
                            f"record {rule['record']}", rule["expr"], "record", rule["record"]
                        )
                    )
                else:
                    found.append(
                        Expression(f"alert {rule['alert']}", rule["expr"], "alert", rule["alert"])
                    )
    return found


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` (Grafana's syntax) with ``values`` or an interval."""
    table = {**INTERVALS, **values}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in table:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return table[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def strip_comparison(expr: str) -> str:
    """The expression an alert compares, without its final ``> threshold``."""
    stripped = re.sub(r"\s*(>|<|>=|<=|==|!=)\s*[0-9.]+\s*$", "", expr.strip())
    if stripped == expr.strip():
        raise ValueError(f"no trailing comparison in {expr!r}")
    return stripped
