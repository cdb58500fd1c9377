"""``argus status``: a readable summary of /monitoring, drifted features worst first."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.datasets import load_digits

from argus.cli import main
from argus.status import render_status
from monitoring.profile import build_profile
from monitoring.windows import window_figures
from tests.harness import free_port


def drifted_snapshot() -> dict[str, object]:
    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    ref, held, live = order[:900], order[900:1300], order[1300:1700]
    proba = np.full((len(X), 10), 0.02, dtype=np.float32)
    proba[np.arange(len(X)), y] = 0.82
    profile = build_profile(X[ref], proba[held], X_calibration=X[held])
    window = X[live].copy()
    shifted = [19, 20, 21, 26, 27, 28, 35, 36]
    window[:, shifted] = np.clip(window[:, shifted] + 8, 0, 16)
    scores = profile.anomaly.score(window)
    f = window_figures(
        model="m",
        version="v1",
        profile=profile,
        inputs=window,
        predicted=y[live],
        confidences=proba[live].max(axis=1),
        probabilities=proba[live],
        anomalous=scores > profile.anomaly.threshold_,
        anomaly_scores=scores,
        labelled_predicted=y[live][:100],
        labelled_true=y[live][:100],
        label_delays=np.full(100, 30.0),
        predictions_total=400,
        labelled_total=100,
    )
    return {"live": "v1", **f.to_dict()}


def test_status_lists_drifted_features_worst_first() -> None:
    snap = drifted_snapshot()
    text = render_status(snap, top=3)
    assert "m:v1  (live)" in text
    assert "DRIFT DETECTED" in text
    assert "coverage 25.0%" in text and "accuracy     1.0000 realized on 100 labels" in text
    rows = [line.split() for line in text.splitlines() if re.match(r"\s+f\d+ ", line)]
    assert 1 <= len(rows) <= 3
    psis = [float(r[1]) for r in rows]
    assert psis == sorted(psis, reverse=True)
    drift = snap["drift"]
    assert isinstance(drift, dict)
    worst = max((f for f in drift["features"] if f["drifted"]), key=lambda f: f["psi"])
    assert rows[0][0] == worst["name"]


def test_status_says_when_figures_rest_on_a_state_that_is_behind() -> None:
    snap = drifted_snapshot()
    assert "BEHIND" not in render_status({**snap, "state": {"available": True, "waiting_rows": 0}})
    text = render_status({**snap, "state": {"available": True, "waiting_rows": 1234}})
    assert "BEHIND: 1234 answered rows wait" in text and "unavailable" not in text
    text = render_status({**snap, "state": {"available": False, "waiting_rows": 7}})
    assert "BEHIND: 7 answered rows wait" in text and "unavailable" in text


def test_status_of_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--url", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("argus: error: cannot reach")
    assert len(err.strip().splitlines()) == 1


def test_history_table_interleaves_points_and_switches() -> None:
    from argus.status import render_history

    doc = {
        "model": "m",
        "points": [
            {"t": 100.0, "version": "aaaaaaaaaaaa", "accuracy": 0.99, "estimated_accuracy": 0.98,
             "macro_f1": 0.97, "drift_share": 0.0, "anomaly_ratio": 0.01,
             "predictions_per_s": None},
            {"t": 130.0, "version": "bbbbbbbbbbbb", "accuracy": None, "estimated_accuracy": 0.5,
             "macro_f1": None, "drift_share": 0.25, "anomaly_ratio": 0.2,
             "predictions_per_s": 12.5},
        ],
        "events": [{"t": 120.0, "version": "bbbbbbbbbbbb", "previous": "aaaaaaaaaaaa",
                    "reason": "activate"}],
    }  # fmt: skip
    lines = render_history(doc).splitlines()
    assert lines[0] == "m" and lines[1].split()[:3] == ["time", "version", "accuracy"]
    assert "0.9900" in lines[2] and "aaaaaaaaaa" in lines[2] and lines[2].split()[-1] == "-"
    assert "-- activate: bbbbbbbbbbbb live (was aaaaaaaaaaaa)" in lines[3]
    assert "25.0%" in lines[4] and lines[4].split()[-1] == "12.5" and " - " in lines[4]
    assert "no history yet" in render_history({"model": "m", "points": [], "events": []})
