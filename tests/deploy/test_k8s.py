"""The Kubernetes manifests agree with the settings the code reads and with each other."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from service.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and {"apiVersion", "kind", "metadata"} <= set(doc), path
            docs.append(doc)
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_every_variable_is_a_setting_and_valid() -> None:
    config = one("ConfigMap", "argus-settings")["data"]
    secret = one("Secret", "argus-tokens")["stringData"]
    fields = {f"ARGUS_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    for key in [*config, *secret]:
        assert key in fields, f"{key} is not read by service.settings.Settings"
    settings = Settings.from_env({**config, **secret})  # parses and validates every value
    assert settings.state_url and settings.state_url.startswith("redis://")
    assert settings.admin_token and settings.feedback_token


def test_deployment_wiring() -> None:
    config = one("ConfigMap", "argus-settings")["data"]
    settings = Settings.from_env(config)
    dep = one("Deployment", "argus")
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
    assert refs == {"argus-settings", "argus-tokens"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.port
    assert settings.host == "0.0.0.0"  # reachable from the Service
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == settings.port
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert str(settings.model_source) in mounts and str(settings.home) in mounts
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    models = volumes[mounts[str(settings.model_source)]]
    claim = one("PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every replica mounts it


def test_services_point_at_the_right_pods_and_ports() -> None:
    settings = Settings.from_env(one("ConfigMap", "argus-settings")["data"])
    svc = one("Service", "argus")
    pod_labels = one("Deployment", "argus")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    redis_url = urlparse(str(settings.state_url))
    redis_svc = one("Service", redis_url.hostname or "")
    assert redis_svc["spec"]["ports"][0]["port"] == redis_url.port
    redis_pods = one("Deployment", "argus-redis")["spec"]["template"]
    assert redis_svc["spec"]["selector"].items() <= redis_pods["metadata"]["labels"].items()
    args = redis_pods["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"  # durable shared state


def test_embedded_prometheus_config_is_valid(tmp_path: Path) -> None:
    text = one("ConfigMap", "argus-prometheus")["data"]["prometheus.yml"]
    config = yaml.safe_load(text)
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    labels = one("Deployment", "argus")["spec"]["template"]["metadata"]["labels"]
    assert any(r["regex"] == labels["app.kubernetes.io/name"] for r in keeps)
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("ARGUS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("promtool is required (ARGUS_REQUIRE_PROMETHEUS=1) but not installed")
        pytest.skip("promtool not installed: the embedded config was parsed but not checked")
    # Debian's Prometheus is built without Kubernetes service discovery, so promtool here
    # checks everything else (globals, rule files, relabelling) with static targets.
    job["static_configs"] = [{"targets": ["127.0.0.1:3000"]}]
    del job["kubernetes_sd_configs"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_sentinel_variant_matches_the_url_argus_parses() -> None:
    from state.redis_db import sentinel_address

    path = K8S / "sentinel" / "redis-sentinel.yaml"
    text = path.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    url = next(
        line.split("=", 1)[1].strip()
        for line in text.splitlines()
        if "ARGUS_STATE_URL=redis+sentinel://" in line
    )
    hosts, service, db, _, _ = sentinel_address(url)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    host, port = hosts[0]
    assert port in [p["port"] for p in services[host]["spec"]["ports"]]
    scripts = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert f"sentinel monitor {service} " in scripts["sentinel.sh"] and db == 0
    assert "--appendonly yes" in scripts["redis.sh"]
    stateful = next(d for d in docs if d["kind"] == "StatefulSet")
    assert stateful["spec"]["replicas"] >= 3 and stateful["spec"]["serviceName"] in services
