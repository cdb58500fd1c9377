"""Integration: traffic and feedback through 2 workers; /monitoring and /metrics equal a
batch computation over all of that traffic, and /metrics passes ``promtool check metrics``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import ks_2samp, mannwhitneyu
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from models.store import StoredVersion
from monitoring.binned import bin_counts
from monitoring.profile import ReferenceProfile
from tests.harness import ArgusServer, seed_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def version(outcome: Any) -> StoredVersion:
    from training.publish import publish

    return publish(outcome, f"mon-{uuid.uuid4().hex[:8]}")


def psi(ref: np.ndarray, cur: np.ndarray, eps: float = 1e-4) -> float:
    k = len(ref)
    p = (ref / ref.sum() + eps) / (1 + eps * k)
    q = (cur / cur.sum() + eps) / (1 + eps * k)
    return float(np.sum((q - p) * np.log(q / p)))


def test_figures_equal_a_batch_computation_over_all_traffic(
    tmp_path: Path, version: StoredVersion
) -> None:
    seed_store(Path(os.environ["BENTOML_HOME"]), version.name, tmp_path)
    d = load_digits()
    rng = np.random.default_rng(11)
    order = rng.permutation(len(d.data))[:400]
    X = d.data[order].astype(np.float32)
    y = d.target[order]
    X[:150, 28:36] = np.clip(X[:150, 28:36] + 5, 0, 16)  # drift in 8 features
    X[380:] = rng.uniform(0, 16, size=(20, 64)).astype(np.float32)  # not digits
    responses: list[dict[str, Any]] = []
    workers: set[str] = set()
    with ArgusServer(tmp_path, version.name) as srv:
        for start in range(0, len(X), 8):
            with srv.client() as c:  # a fresh connection: either worker may answer
                r = c.post("/predict", json={"instances": X[start : start + 8].tolist()})
                assert r.status_code == 200, r.text
                workers.add(r.headers["x-argus-worker"])
                responses.extend(r.json()["predictions"])
        labelled = rng.random(len(X)) < 0.6
        fb = [{"id": responses[i]["id"], "label": int(y[i])} for i in np.flatnonzero(labelled)]
        for start in range(0, len(fb), 20):
            with srv.client() as c:
                r = c.post("/feedback", json={"feedback": fb[start : start + 20]})
                assert r.json()["accepted"] == len(fb[start : start + 20])
                workers.add(r.headers["x-argus-worker"])
        with srv.client() as c:
            snap = c.get("/monitoring").json()
            metrics_text = c.get("/metrics").text
    assert len(workers) == 2, "traffic reached only one worker"

    pred = np.array([p["label"] for p in responses])
    proba = np.array([p["probabilities"] for p in responses])
    anomalous = np.array([p["anomalous"] for p in responses])
    yt, yp = y[labelled], pred[labelled]

    # performance from labels
    perf = snap["performance"]
    assert snap["windows"] == {"inputs": 400, "predictions": 400, "labels": int(labelled.sum())}
    assert perf["accuracy"] == pytest.approx(accuracy_score(yt, yp))
    assert perf["macro_precision"] == pytest.approx(
        precision_score(yt, yp, average="macro", zero_division=0)
    )
    assert perf["macro_recall"] == pytest.approx(recall_score(yt, yp, average="macro"))
    assert perf["macro_f1"] == pytest.approx(f1_score(yt, yp, average="macro"))
    assert snap["label_coverage"] == pytest.approx(labelled.mean())
    # the label-free estimate and anomalies
    assert snap["estimated_accuracy"] == pytest.approx(proba.max(axis=1).mean(), rel=1e-5)
    assert snap["anomaly"]["ratio"] == pytest.approx(anomalous.mean())
    assert anomalous[380:].mean() >= 0.95
    # input drift, feature by feature, against the version's profile
    profile = ReferenceProfile.from_dict(version.read_profile())
    feats = snap["drift"]["features"]
    for j in range(64):
        ref = np.asarray(profile.reference_counts[j], dtype=float)
        cur = bin_counts(X[:, j], profile.edges[j]).astype(float)
        assert feats[j]["psi"] == pytest.approx(psi(ref, cur), abs=1e-9)
        ks = ks_2samp(profile.sample[:, j], X[:, j], method="asymp")
        assert feats[j]["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-12)
        assert feats[j]["ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-7, abs=1e-12)
    flagged = {f["index"] for f in feats if f["drifted"]}
    assert flagged and len(flagged & set(range(28, 36))) >= 0.8 * len(flagged)
    # multivariate drift: the served rows' anomaly scores against the held-out ones
    multi = snap["multivariate_drift"]
    scores = np.array([p["anomaly_score"] for p in responses])
    reference = profile.reference_scores
    assert reference is not None
    u = mannwhitneyu(scores, reference, alternative="greater", method="asymptotic")
    assert multi["window_rows"] == 400
    assert multi["p_value"] == pytest.approx(u.pvalue, rel=1e-6, abs=1e-12)
    assert multi["effect"] == pytest.approx(
        2 * u.statistic / (len(scores) * len(reference)) - 1, rel=1e-6
    )

    # /metrics carries the same figures, once each, labelled by model and version
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    mv = (("model", version.name), ("version", version.version))

    def value(name: str, **extra: str) -> float:
        return samples[(name, tuple(sorted((*mv, *extra.items()))))]

    assert value("argus_accuracy_ratio") == pytest.approx(perf["accuracy"])
    assert value("argus_estimated_accuracy_ratio") == pytest.approx(snap["estimated_accuracy"])
    assert value("argus_macro_f1_ratio") == pytest.approx(perf["macro_f1"])
    assert value("argus_label_coverage_ratio") == pytest.approx(labelled.mean())
    assert value("argus_anomaly_ratio") == pytest.approx(anomalous.mean())
    assert value("argus_drift_share_ratio") == pytest.approx(snap["drift"]["drift_share"])
    assert value("argus_multivariate_drift_pvalue") == pytest.approx(multi["p_value"])
    assert value("argus_multivariate_drift_statistic") == pytest.approx(multi["effect"])
    assert value("argus_multivariate_drift_detected") == float(multi["detected"])
    assert value("argus_feature_psi", feature=feats[30]["name"]) == pytest.approx(feats[30]["psi"])
    assert value("argus_predictions_total") == 400
    assert value("argus_anomalies_total") == anomalous.sum()
    correct = int((yt == yp).sum())
    assert value("argus_feedback_total", result="correct") == correct
    assert value("argus_feedback_total", result="incorrect") == len(yt) - correct
    assert value("argus_window_rows", window="labels") == labelled.sum()

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("ARGUS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("promtool is required (ARGUS_REQUIRE_PROMETHEUS=1) but not installed")
        pytest.skip("promtool not installed: /metrics lint not run")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=metrics_text, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.strip() == "", json.dumps(
        [check.stdout[-2000:], check.stderr[-2000:]]
    )
