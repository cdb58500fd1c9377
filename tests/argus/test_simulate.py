"""``argus simulate``: scenario rows, pacing, late labels, bounds, the loopback guard, and a
short run against a real server."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from argus.cli import main
from argus.scenarios import SCENARIOS, Scenario, default_drift_features, digits_pool
from argus.simulate import check_loopback, simulate
from errors import ArgusError

URL = "http://127.0.0.1:3999"

# -- scenario rows ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_rows_are_deterministic_per_seed(name: str) -> None:
    spec = Scenario.build(name)
    a = spec.rows(200, np.random.default_rng(3))
    b = spec.rows(200, np.random.default_rng(3))
    c = spec.rows(200, np.random.default_rng(4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (200, 64) and a[1].shape == (200,)
    assert a[0].min() >= 0.0 and a[0].max() <= 16.0


def test_clean_rows_are_digits_with_their_labels() -> None:
    pool = digits_pool()
    X, y = Scenario.build("clean").rows(300, np.random.default_rng(0))
    lookup = {row.tobytes(): set() for row in pool.X}
    for row, label in zip(pool.X, pool.y, strict=True):
        lookup[row.tobytes()].add(int(label))
    assert all(int(label) in lookup[row.tobytes()] for row, label in zip(X, y, strict=True))
    assert len(np.unique(y)) == 10


def test_drift_changes_exactly_the_chosen_features() -> None:
    clean = Scenario.build("clean").rows(500, np.random.default_rng(11))
    spec = Scenario.build("drift")
    drift = spec.rows(500, np.random.default_rng(11))
    chosen = list(spec.drift_features)
    other = [j for j in range(64) if j not in chosen]
    assert len(chosen) == 16
    np.testing.assert_array_equal(drift[0][:, other], clean[0][:, other])
    np.testing.assert_array_equal(drift[0][:, chosen], np.clip(clean[0][:, chosen] + 4, 0, 16))
    np.testing.assert_array_equal(drift[1], clean[1])  # still the same digits
    # every chosen feature really moved: its mean rises by several units
    assert (drift[0][:, chosen].mean(axis=0) - clean[0][:, chosen].mean(axis=0) > 2).all()


def test_drift_features_by_default_are_informative_and_mostly_dark() -> None:
    pool = digits_pool()
    feats = default_drift_features(pool)
    var, mean = pool.X.var(axis=0), pool.X.mean(axis=0)
    assert len(feats) == 16 and all(var[j] > 1 for j in feats)
    others = [j for j in range(64) if var[j] > 1 and j not in feats]
    assert max(mean[list(feats)]) <= min(mean[others])


def test_drift_accepts_chosen_features_and_shift() -> None:
    spec = Scenario.build("drift", drift_features=[0, 5], drift_shift=-2.0)
    clean = Scenario.build("clean").rows(50, np.random.default_rng(1))[0]
    X, _ = spec.rows(50, np.random.default_rng(1))
    np.testing.assert_array_equal(X[:, [0, 5]], np.clip(clean[:, [0, 5]] - 2, 0, 16))
    np.testing.assert_array_equal(X[:, 1:5], clean[:, 1:5])


def test_anomaly_replaces_a_share_of_rows_with_noise_and_drops_their_labels() -> None:
    clean = Scenario.build("clean").rows(2000, np.random.default_rng(5))
    X, y = Scenario.build("anomaly", anomaly_fraction=0.3).rows(2000, np.random.default_rng(5))
    noisy = y == -1
    assert 0.25 < noisy.mean() < 0.35
    np.testing.assert_array_equal(X[~noisy], clean[0][~noisy])
    np.testing.assert_array_equal(y[~noisy], clean[1][~noisy])
    # noise: uniform on 0..16, not the integer pixel intensities of a digit
    assert (X[noisy] != np.round(X[noisy])).mean() > 0.99
    assert abs(X[noisy].mean() - 8.0) < 0.2


def test_prior_shift_sends_only_the_chosen_classes() -> None:
    pool = digits_pool()
    X, y = Scenario.build("prior-shift", prior_classes=(3, 8)).rows(400, np.random.default_rng(2))
    assert set(np.unique(y).tolist()) == {3, 8}
    rows = {row.tobytes() for row in pool.X[np.isin(pool.y, [3, 8])]}
    assert all(row.tobytes() in rows for row in X)
    _, y_default = Scenario.build("prior-shift").rows(400, np.random.default_rng(2))
    assert set(np.unique(y_default).tolist()) == {0, 1, 7}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "sideways"}, "scenario"),
        ({"name": "drift", "drift_features": [64]}, "drift_features"),
        ({"name": "drift", "drift_shift": 0.0}, "drift_shift"),
        ({"name": "anomaly", "anomaly_fraction": 0.0}, "anomaly_fraction"),
        ({"name": "prior-shift", "prior_classes": [12]}, "prior_classes"),
    ],
)
def test_bad_scenario_parameters_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scenario.build(**kwargs)


# -- the loopback guard -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:3000", "http://localhost:3000/", "http://[::1]:3000", "http://127.2.3.4"],
)
def test_loopback_urls_pass(url: str) -> None:
    assert check_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://10.0.0.5:3000", "https://argus.example.com"])
def test_remote_urls_need_allow_remote(url: str) -> None:
    with pytest.raises(ValueError, match="allow-remote"):
        check_loopback(url)
    assert check_loopback(url, allow_remote=True) == url


def test_cli_refuses_a_remote_url_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--url", "http://192.0.2.7:3000", "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("argus: error: url") and "--allow-remote" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_names_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.harness import free_port

    code = main(["simulate", "--url", f"http://127.0.0.1:{free_port()}", "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach" in err and len(err.strip().splitlines()) == 1


# -- the loop, against a fake server and a fake clock -----------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class FakeServer:
    """Answers like Argus: ids for predictions, accepted counts for feedback."""

    def __init__(self, clock: FakeClock, *, latency: float = 0.002, fail_every: int = 0) -> None:
        self.clock = clock
        self.latency = latency
        self.fail_every = fail_every
        self.predicted: dict[str, float] = {}
        self.feedback: list[tuple[float, str, int]] = []
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.clock.now += self.latency
        path = request.url.path
        if path == "/readyz":
            return httpx.Response(200, text="ok")
        if path == "/monitoring":
            return httpx.Response(
                200,
                json={
                    "version": "v1",
                    "performance": {"accuracy": 0.9},
                    "estimated_accuracy": 0.93,
                    "drift": {"drift_share": 0.25, "drift_detected": True},
                    "anomaly": {"ratio": 0.02},
                },
            )
        body = json.loads(request.content)
        if path == "/predict":
            self.requests += 1
            if self.fail_every and self.requests % self.fail_every == 0:
                raise httpx.ConnectError("connection reset")
            rows = body["instances"]
            if any(len(r) != 64 for r in rows):
                return httpx.Response(400, json={"error": "row_length"})
            preds = []
            for _ in rows:
                pid = f"p{len(self.predicted)}"
                self.predicted[pid] = self.clock.now
                preds.append({"id": pid, "label": 0})
            return httpx.Response(200, json={"model": "m", "version": "v1", "predictions": preds})
        if path == "/feedback":
            for item in body["feedback"]:
                self.feedback.append((self.clock.now, item["id"], item["label"]))
            return httpx.Response(200, json={"accepted": len(body["feedback"])})
        return httpx.Response(404)


def fake_run(
    server: FakeServer, clock: FakeClock, out: io.StringIO | None = None, **kwargs: Any
) -> Any:
    client = httpx.Client(transport=httpx.MockTransport(server))
    return simulate(URL, clock=clock, sleep=clock.sleep, client=client, out=out, **kwargs)


def test_paces_requests_at_the_rate_for_the_duration() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    result = fake_run(server, clock, rate=10, duration=5, batch=4, label_fraction=0.0)
    assert result.requests_sent == 50 and result.requests_ok == 50
    assert result.rows_sent == result.rows_predicted == 200
    assert result.requests_failed == 0 and result.labels_sent == 0
    assert 5.0 <= result.elapsed_seconds < 5.2
    assert result.status_codes["200"] >= 50  # and the /readyz and /monitoring calls


def test_max_requests_bounds_the_run() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    result = fake_run(server, clock, rate=100, duration=60, max_requests=7, batch=2)
    assert result.requests_sent == 7 and server.requests == 7
    assert result.elapsed_seconds < 6  # 7 requests at 100/s, then the labels' delay


def test_labels_follow_their_predictions_after_the_delay() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    result = fake_run(
        server, clock, scenario="drift", rate=20, duration=3, batch=5, label_delay=1.5,
        label_fraction=0.5, seed=4,
    )  # fmt: skip
    assert result.labels_sent == result.labels_accepted == len(server.feedback)
    assert 0.35 * result.rows_predicted < result.labels_sent < 0.65 * result.rows_predicted
    for t, pid, label in server.feedback:
        assert t >= server.predicted[pid] + 1.5
        assert 0 <= label <= 9
    assert len({pid for _, pid, _ in server.feedback}) == len(server.feedback)
    # every label promised was delivered before simulate returned
    assert result.elapsed_seconds >= 3 + 1.5 - 0.1


def test_the_same_seed_sends_the_same_labels() -> None:
    runs = []
    for _ in range(2):
        clock = FakeClock()
        server = FakeServer(clock)
        fake_run(server, clock, rate=10, duration=2, batch=8, label_delay=0.5, seed=9)
        runs.append([(pid, label) for _, pid, label in server.feedback])
    assert runs[0] == runs[1] and runs[0]


def test_anomaly_rows_get_no_label() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    result = fake_run(
        server, clock, scenario="anomaly", rate=10, duration=2, batch=50, label_fraction=1.0
    )
    # every digit row is labelled, no noise row is: about 70% of the rows
    assert 0.6 * result.rows_predicted < result.labels_sent < 0.8 * result.rows_predicted


def test_invalid_requests_are_counted_apart_from_errors() -> None:
    clock = FakeClock()
    server = FakeServer(clock, fail_every=10)
    result = fake_run(server, clock, rate=20, duration=5, invalid_fraction=0.2, label_fraction=0)
    assert result.requests_sent == 100
    assert 10 < result.invalid_sent < 30
    assert result.requests_failed == 10  # the transport failures, not the refused rows
    assert result.status_codes["400"] + result.status_codes["transport"] >= result.invalid_sent
    assert result.requests_ok + result.requests_failed + result.invalid_sent >= 100


def test_ctrl_c_ends_the_run_with_what_was_done() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    calls = 0

    def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 20:
            raise KeyboardInterrupt
        clock.sleep(seconds)

    client = httpx.Client(transport=httpx.MockTransport(server))
    out = io.StringIO()
    result = simulate(
        URL, rate=10, duration=60, label_delay=5, clock=clock, sleep=sleep, client=client, out=out
    )
    assert result.interrupted and result.requests_sent == server.requests == 20
    assert result.labels_sent == 0  # none was due yet, and no one waits for them
    assert result.summary().endswith("(interrupted)")
    assert out.getvalue().splitlines()[-1].startswith("clean: sent 20 ok 20 errors 0")


def test_a_server_refusing_the_rows_stops_the_run() -> None:
    clock = FakeClock()

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200)
        return httpx.Response(400, json={"error": "row 0 has 64 features, the model takes 784"})

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(ArgusError, match="784"):
        simulate(URL, clock=clock, sleep=clock.sleep, client=client, out=None, duration=5)


def test_prints_a_live_summary_line() -> None:
    clock = FakeClock()
    out = io.StringIO()
    fake_run(FakeServer(clock), clock, out=out, rate=10, duration=3, label_delay=0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3  # one a second, and the final one
    last = lines[-1]
    assert last.startswith("clean: sent 30 ok 30 errors 0 labels ")
    assert "accuracy 0.900 estimate 0.930 drift 25% DRIFT anomalies 2.0%" in last


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate": 0}, "rate"),
        ({"duration": -1}, "duration"),
        ({"max_requests": 0}, "max_requests"),
        ({"batch": 0}, "batch"),
        ({"label_delay": -1}, "label_delay"),
        ({"label_fraction": 1.5}, "label_fraction"),
        ({"invalid_fraction": 1.0}, "invalid_fraction"),
        ({"scenario": "nope"}, "scenario"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate(URL, out=None, **kwargs)


# -- against a real server --------------------------------------------------------------


@pytest.mark.integration
def test_a_short_run_against_a_real_server(outcome: Any, tmp_path: Path) -> None:
    from tests.harness import ArgusServer, seed_store
    from training.publish import publish

    name = f"sim-{uuid.uuid4().hex[:8]}"
    publish(outcome, name)
    seed_store(Path(os.environ["BENTOML_HOME"]), name, tmp_path)
    out = io.StringIO()
    with ArgusServer(tmp_path, name) as server:
        result = simulate(
            server.url, "drift", rate=40, duration=30, max_requests=40, batch=5,
            label_delay=0.5, label_fraction=0.5, invalid_fraction=0.1, seed=3, out=out,
        )  # fmt: skip
        snap = httpx.get(f"{server.url}/monitoring", timeout=10).json()
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert result.requests_sent == 40 and result.requests_failed == 0
    ok = result.requests_sent - result.invalid_sent
    assert result.requests_ok == ok and result.rows_predicted == 5 * ok
    assert result.labels_sent == result.labels_accepted > 0
    assert snap["totals"] == {"predictions": 5 * ok, "labelled": result.labels_accepted}
    assert f'argus_predictions_total{{model="{name}"' in metrics
    line = next(x for x in metrics.splitlines() if x.startswith("argus_predictions_total{"))
    assert float(line.rsplit(" ", 1)[1]) == 5 * ok
    invalid = [x for x in metrics.splitlines() if x.startswith("argus_invalid_requests_total{")]
    assert sum(float(x.rsplit(" ", 1)[1]) for x in invalid) == result.invalid_sent
    assert result.monitoring is not None and result.monitoring["drift"]["drift_detected"]
    assert "drift: sent 40 ok" in out.getvalue()


def test_scenario_examples_run() -> None:
    import doctest

    from argus import scenarios

    result = doctest.testmod(scenarios)
    assert result.attempted > 0 and result.failed == 0
