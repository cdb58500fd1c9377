"""The files around the server agree with each other (docker is not needed to check them):
docker-compose.yml, the Dockerfile, both Prometheus configs, Grafana's provisioning and the
dashboard; and every expression takes window gauges once and sums counters across replicas.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.observability.expressions import (
    DASHBOARD,
    ROOT,
    dashboard_expressions,
    label_values_query,
    rule_expressions,
    strip_comparison,
    substitute,
)


def load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load("docker-compose.yml"))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repo) of the bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = host
    return out


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port."""
    out = {}
    for port in service["ports"]:
        host, container = str(port).split(":")
        out[int(container)] = int(host)
    return out


def test_compose_has_the_three_services_and_their_mounts_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"argus", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        for container, host in mounts(services[name]).items():
            assert (ROOT / host).is_dir(), f"{name} mounts {host} at {container}: missing"
    assert services["argus"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file() and (ROOT / ".dockerignore").is_file()


def test_dockerfile_serves_on_all_interfaces_and_trains_if_empty() -> None:
    text = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == [
        "argus",
        "serve",
        "--host",
        "0.0.0.0",
        "--train-if-empty",
    ]
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "EXPOSE 3000" in text
    for package in ("argus", "training", "models", "monitoring", "service"):
        assert f"COPY {package} ./{package}" in text


def test_prometheus_scrapes_argus_where_compose_and_the_defaults_put_it(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    argus_port = Settings().port
    assert published(services["argus"]) == {argus_port: argus_port}
    local = load("prometheus/prometheus.yml")
    docker = load("prometheus/prometheus-compose.yml")
    targets = local["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{Settings().host}:{argus_port}"]
    assert local["global"]["scrape_interval"] == "15s"
    assert docker["scrape_configs"][0]["static_configs"][0]["targets"] == [f"argus:{argus_port}"]
    # the two files differ only in the target
    docker["scrape_configs"][0]["static_configs"][0]["targets"] = targets
    assert docker == local
    # the compose prometheus reads the compose file from the mounted folder, and the
    # rule files it names lie in that folder
    prom = services["prometheus"]
    config = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = PurePosixPath(config.split("=", 1)[1])
    host_dir = mounts(prom)[str(config_path.parent)]
    assert (ROOT / host_dir / config_path.name).is_file()
    for rule_file in docker["rule_files"]:
        assert (ROOT / host_dir / rule_file).is_file()
    assert published(prom) == {9090: 9090}


def test_grafana_reaches_prometheus_and_loads_the_dashboards(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    grafana_mounts = mounts(grafana)
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    (source,) = load("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    prom_port = next(iter(published(services["prometheus"])))
    assert source["url"] == f"http://prometheus:{prom_port}"
    scrape = load("prometheus/prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape
    (provider,) = load("grafana/provisioning/dashboards/argus.yml")["providers"]
    assert provider["type"] == "file"
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name
    # Grafana on 3001: Argus owns 3000
    assert published(grafana) == {3000: 3001}


# -- the dashboard ----------------------------------------------------------------------

ROWS = ["Traffic", "Quality", "Candidates", "Drift", "Anomalies"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "model", "version", "feature"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, label in (("model", "model"), ("version", "version"), ("feature", "feature")):
        query = variables[name]["query"]["query"]
        assert query.startswith("label_values(") and label_values_query(query).startswith(
            f"count by ({label}) ("
        )
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ds, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ds, panel["title"]
    assert len(ids) == len(set(ids))
    assert all(a["datasource"] == ds for a in dashboard["annotations"]["list"] if "expr" in a)


def test_dashboard_rows_and_layout(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ROWS
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    text = json.dumps(dashboard)
    for needle in (
        "argus_inference_duration_seconds_bucket",
        "bentoml_service_request_duration_seconds_bucket",
        "argus_invalid_requests_total",
        'argus_model_info{model=~\\"$model\\", live=\\"true\\"}',
        "argus_model_switches_total",
        "argus_accuracy_ratio",
        "argus_estimated_accuracy_ratio",
        "argus_macro_f1_ratio",
        "argus_class_f1_ratio",
        "argus_label_coverage_ratio",
        "argus_label_delay_seconds_bucket",
        "argus_candidate_info",
        "argus_candidate_accuracy_delta",
        "argus_candidate_agreement_ratio",
        "argus_candidate_worse",
        "argus_candidate_dropped_total",
        "argus_drift_share_ratio",
        "argus_drift_detected",
        "argus_multivariate_drift_statistic",
        "argus_multivariate_drift_pvalue",
        "topk(10, max by (feature) (argus_feature_psi",
        'feature=~\\"$feature\\"',
        "argus_prediction_psi",
        "argus_anomaly_ratio",
        "argus_anomaly_score_bucket",
    ):
        assert needle in text, needle


# -- every expression is safe with several replicas --------------------------------------

WINDOW_GAUGES = re.compile(
    r"\b(argus_model_info|argus_window_rows|argus_(?:estimated_)?accuracy_ratio"
    r"|argus_label_coverage_ratio|argus_macro_\w+_ratio|argus_class_\w+_ratio"
    r"|argus_feature_\w+|argus_drift_share_ratio|argus_drift_detected|argus_prediction_psi"
    r"|argus_multivariate_drift_\w+|argus_candidate_(?!dropped_total\b)\w+"
    r"|argus_prediction_chi2_pvalue|argus_confidence_psi|argus_anomaly_ratio)\b(?!:)"
)
SUMMED_COUNTERS = re.compile(
    r"\b(argus_(?:predictions|anomalies|feedback|invalid_requests|state_errors"
    r"|candidate_dropped)_total"
    r"|argus_\w+_bucket|bentoml_service_request_total|bentoml_service_request_duration_seconds_bucket)\b"
)
SHARED_COUNTERS = re.compile(r"\b(argus_model_switches_total)\b")


def enclosing_call(expr: str, pos: int) -> tuple[str, int]:
    """The function or aggregation whose parentheses enclose ``pos``, and where it starts."""
    depth = 0
    for i in range(pos - 1, -1, -1):
        c = expr[i]
        if c == ")":
            depth += 1
        elif c == "(":
            if depth:
                depth -= 1
                continue
            head = expr[:i].rstrip()
            if head.endswith(")"):  # `sum by (a, b) (...)`: skip the grouping clause
                head = head[: head.rindex("(")].rstrip()
                head = re.sub(r"\s*\b(by|without)$", "", head)
            m = re.search(r"(\w+)$", head)
            return (m.group(1) if m else "", len(head) - (len(m.group(1)) if m else 0))
    return "", -1


def all_expressions() -> list[tuple[str, str]]:
    values = {"model": "m", "version": "v", "feature": "f"}
    return [(e.where, substitute(e.expr, values)) for e in dashboard_expressions()] + [
        (e.where, e.expr) for e in rule_expressions()
    ]


@pytest.mark.parametrize("where, expr", all_expressions())
def test_gauges_taken_once_and_counters_summed_across_replicas(where: str, expr: str) -> None:
    for m in WINDOW_GAUGES.finditer(expr):
        call, _ = enclosing_call(expr, m.start())
        assert call in {"max", "min", "avg", "count"}, f"{where}: {m.group(1)} under {call!r}"
    for pattern, aggregations in ((SUMMED_COUNTERS, {"sum"}), (SHARED_COUNTERS, {"max"})):
        for m in pattern.finditer(expr):
            call, start = enclosing_call(expr, m.start())
            assert call in {"rate", "increase"}, f"{where}: {m.group(1)} under {call!r}"
            outer, _ = enclosing_call(expr, start)
            assert outer in aggregations, f"{where}: rate of {m.group(1)} under {outer!r}"


def test_the_lint_catches_a_summed_gauge_and_an_unsummed_rate() -> None:
    bad = "sum by (model) (argus_accuracy_ratio)"
    call, _ = enclosing_call(bad, bad.index("argus_accuracy_ratio"))
    assert call == "sum"
    bad = "max by (model) (rate(argus_predictions_total[5m]))"
    call, start = enclosing_call(bad, bad.index("argus_predictions_total"))
    assert call == "rate" and enclosing_call(bad, start)[0] == "max"


def test_expression_helpers() -> None:
    assert substitute('rate(x{a=~"$model"}[$__rate_interval])', {"model": "m"}) == (
        'rate(x{a=~"m"}[1m])'
    )
    assert substitute("${model}", {"model": "m"}) == "m"
    with pytest.raises(KeyError):
        substitute("$nope", {})
    assert strip_comparison('a:b:c{x="y"} > 0.05') == 'a:b:c{x="y"}'
    assert label_values_query('label_values(m{a="b"}, version)') == 'count by (version) (m{a="b"})'
    names = {e.name for e in rule_expressions() if e.kind == "alert"}
    assert names == {
        "ArgusRealizedAccuracyLow",
        "ArgusEstimatedAccuracyLow",
        "ArgusInputDrift",
        "ArgusMultivariateDrift",
        "ArgusAnomalyShareHigh",
        "ArgusNoTraffic",
        "ArgusErrorRateHigh",
        "ArgusLabelCoverageLow",
        "ArgusCandidateWorse",
        "ArgusAutoRollback",
        "ArgusLiveVersionChanged",
        "ArgusDown",
    }


def test_alerts_carry_severity_and_tell_how_to_roll_back() -> None:
    for group in load("prometheus/rules/argus-alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            text = rule["annotations"]["description"]
            assert "argus models rollback" in text, rule["alert"]
            if rule["alert"] != "ArgusDown":
                assert "POST /models/rollback" in text and "ARGUS_ADMIN_TOKEN" in text
                assert "argus status" in text or "argus models list" in text
                rows = "|".join(ROWS)
                assert re.search(rf'row "({rows})"', text), rule["alert"]
            if rule["alert"] == "ArgusCandidateWorse":  # the way back is to end the candidate
                for way in (
                    "argus models canary --stop",
                    "argus models shadow --stop",
                    "POST /models/canary",
                    "POST /models/shadow",
                    "Never promote it",
                ):
                    assert way in text, way


def test_recording_rules_follow_the_naming_convention() -> None:
    for e in rule_expressions():
        if e.kind == "record":
            level, metric, ops = e.name.split(":")
            assert level and metric.startswith(("argus_", "bentoml_")) and ops, e.name


def test_paths_exist() -> None:
    for path in (
        "grafana/dashboards/argus.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/argus.yml",
        "prometheus/prometheus.yml",
        "prometheus/rules/argus-alerts.yml",
        "prometheus/rules/argus-recording.yml",
    ):
        assert Path(ROOT / path).is_file(), path
