"""The ``argus`` CLI in-process: train, models list/show/diff/verify/delete/export/import,
activate/rollback, register-onnx, and one-line errors with a non-zero exit."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from argus.cli import main
from models import store
from models.store import StoredVersion
from state.opener import open_state


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_registers_a_version_with_a_full_card(
    capsys: pytest.CaptureFixture[str], model_name: str
) -> None:
    code, out, err = run(
        capsys, "train", "--name", model_name, "--epochs", "5", "--seed", "7", "--no-progress"
    )
    assert code == 0, err
    assert "Evaluation Metrics" in out and f"registered {model_name}:" in out
    assert "Score at iteration" in err  # the loss listener
    (v,) = store.list_versions(model_name)
    card = v.card
    assert card.config["max_epochs"] == 5 and card.config["seed"] == 7
    assert card.data["source"] == "digits" and len(card.data["fingerprint"]) == 64
    assert set(card.data["split_sizes"]) == {"train", "val", "test"}
    assert card.training["history"] and card.training["verdict"]["kind"]
    assert {"temperature", "ece_before", "ece_after"} <= set(card.calibration)
    assert card.export["parity_max_abs_diff"] <= 1e-5
    assert card.profile["anomaly_target_fpr"] == 0.01
    assert card.code_version and card.created_at and card.parent is None
    assert set(card.files) == {"model.onnx", "profile.json"}


def test_models_commands(
    capsys: pytest.CaptureFixture[str], registered: list[StoredVersion], tmp_path: Path
) -> None:
    old, new = registered
    name = old.name
    code, out, _ = run(capsys, "models", "list", "--name", name)
    assert code == 0
    lines = [line for line in out.splitlines() if old.version in line or new.version in line]
    assert old.version in lines[0] and new.version in lines[1]  # creation order
    assert lines[1].startswith("* ")  # newest serves while no pointer is set
    code, out, _ = run(capsys, "models", "show", old.version, "--name", name)
    assert code == 0 and "Evaluation Metrics" in out and "calibration" in out
    code, out, _ = run(capsys, "models", "diff", old.version, new.version, "--name", name)
    assert code == 0 and "metrics.accuracy" in out
    code, out, _ = run(capsys, "models", "verify", old.version, "--name", name)
    assert code == 0 and "verified" in out
    code, out, _ = run(capsys, "models", "activate", old.version, "--name", name)
    assert code == 0
    code, out, err = run(capsys, "models", "delete", old.version, "--name", name)
    assert code == 1 and "is live" in err
    code, out, _ = run(capsys, "models", "activate", new.version, "--name", name)
    code, out, _ = run(capsys, "models", "rollback", "--name", name)
    assert code == 0 and old.version in out
    code, out, _ = run(capsys, "models", "export", new.version, str(tmp_path), "--name", name)
    assert code == 0
    archive = next(tmp_path.glob("*.bentomodel"))
    code, out, _ = run(capsys, "models", "delete", new.version, "--name", name)
    assert code == 0 and [v.version for v in store.list_versions(name)] == [old.version]
    code, out, _ = run(capsys, "models", "import", str(archive))
    assert code == 0 and len(store.list_versions(name)) == 2


def test_verify_reports_a_tampered_model(
    capsys: pytest.CaptureFixture[str], registered: list[StoredVersion]
) -> None:
    v = registered[0]
    data = v.model_path.read_bytes()
    v.model_path.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, "models", "verify", v.version, "--name", v.name)
    assert code == 1
    assert err.startswith("argus: error:") and "model.onnx: checksum mismatch" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "models", "activate", v.version, "--name", v.name)
    assert code == 1 and "failed verification" in err


def write_csv(path: Path, X: np.ndarray, y: list[object], label: str = "digit") -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"p{i}" for i in range(X.shape[1])] + [label])
        for row, target in zip(X.tolist(), y, strict=True):
            w.writerow([*row, target])
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--source", "csv:/nonexistent.csv", "--label-column", "y"], "not found"),
        (["train", "--source", "mnist:/nonexistent"], "mnist"),
        (["train", "--source", "imagenet"], "source"),
        (["train", "--epochs", "0"], "max_epochs"),
        (["train", "--hidden", "a,b"], "--hidden"),
        (["models", "show", "nosuchversion"], "no version"),
        (["models", "verify", "nosuchversion"], "no version"),
        (["models", "import", "/nonexistent.bentomodel"], "no such file"),
        (["models", "rollback"], "roll back"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    capsys: pytest.CaptureFixture[str], model_name: str, argv: list[str], message: str
) -> None:
    name_args = [] if argv[:2] == ["models", "import"] else ["--name", model_name]
    code, out, err = run(capsys, *argv, *name_args)
    assert code != 0
    assert err.startswith("argus: error:") and message.lower() in err.lower(), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert store.list_versions(model_name) == []


@pytest.fixture
def no_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    """``argus serve`` execs BentoML when all is well: here that is a failure, not a server."""

    def refuse(*args: object) -> None:
        raise AssertionError("argus serve went on to start BentoML")

    monkeypatch.setattr(os, "execve", refuse)


@pytest.mark.usefixtures("no_exec")
def test_serve_refuses_an_address_it_cannot_listen_on_before_training(
    capsys: pytest.CaptureFixture[str], model_name: str
) -> None:
    """BentoML's own failure to bind is a traceback, after ``--train-if-empty`` has trained."""
    with socket.socket() as held:  # a port another server listens on
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        argv = ["serve", "--port", str(port), "--model", model_name, "--train-if-empty"]
        code, _, err = run(capsys, *argv)
    assert code == 1
    assert err == f"argus: error: cannot serve on 127.0.0.1:{port}: the port is in use " + (
        "(another server?): choose one with --port\n"
    )
    code, _, err = run(capsys, "serve", "--host", "192.0.2.1", "--model", model_name)
    assert code == 1 and "192.0.2.1:3000: the host is not an address of this machine" in err
    assert store.list_versions(model_name) == []  # refused before anything was trained


@pytest.mark.usefixtures("no_exec")
def test_serve_refuses_a_home_where_workers_cannot_open_the_state(
    capsys: pytest.CaptureFixture[str],
    model_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker would fail to start, and BentoML would restart them forever."""
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "a-file" / "home"  # its parent is a file: nothing can be made there
    monkeypatch.setenv("ARGUS_HOME", str(home))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    code, _, err = run(capsys, "serve", "--port", port, "--model", model_name, "--train-if-empty")
    assert code == 1, err
    assert err.startswith(f"argus: error: cannot open the state database {home}/state.sqlite3")
    assert len(err.strip().splitlines()) == 1
    assert store.list_versions(model_name) == []  # refused before anything was trained


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (["serve", "--port", "70000"], "argument --port: must be a port number from 1 to 65535"),
        (["serve", "--port", "0"], "argument --port: must be a port number from 1 to 65535"),
        (["serve", "--port", "abc"], "argument --port: expected a whole number, got 'abc'"),
        (["status", "--top", "-1"], "argument --top: must be >= 1, got -1"),
    ],
)
@pytest.mark.usefixtures("no_exec")
def test_out_of_range_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Before, ``--workers 0`` silently served with the default and ``--port 70000``
    reached BentoML."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.usefixtures("no_exec")
def test_an_out_of_range_port_in_the_environment_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGUS_PORT", "70000")
    code, _, err = run(capsys, "serve")
    assert code == 1
    assert err == "argus: error: ARGUS_PORT must be a port number from 1 to 65535\n"


def test_bad_csv_content_is_named(
    capsys: pytest.CaptureFixture[str], model_name: str, tmp_path: Path
) -> None:
    X = load_digits().data[:60]
    y = list(load_digits().target[:60])
    good = write_csv(tmp_path / "good.csv", X, y)
    code, _, err = run(
        capsys, "train", "--source", f"csv:{good}", "--label-column", "nope", "--name", model_name
    )
    assert code == 1 and "nope" in err and "p0" in err  # lists the available columns
    text = good.read_text().splitlines()
    text[3] = text[3].replace(text[3].split(",")[5], "abc", 1)
    (tmp_path / "bad.csv").write_text("\n".join(text))
    code, _, err = run(
        capsys,
        "train",
        "--source",
        f"csv:{tmp_path / 'bad.csv'}",
        "--label-column",
        "digit",
        "--name",
        model_name,
    )
    assert code == 1 and "abc" in err
    assert store.list_versions(model_name) == []


def skl_onnx(tmp_path: Path, zipmap: bool = False) -> tuple[Path, Path]:
    """A classifier no one here wrote: scikit-learn's, converted by skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    clf = LogisticRegression(max_iter=2000).fit(X[:1200], y[:1200])
    options = {id(clf): {"zipmap": zipmap}}
    onx = to_onnx(clf, X[:1], options=options, target_opset=17)
    path = tmp_path / ("zip.onnx" if zipmap else "clf.onnx")
    path.write_bytes(onx.SerializeToString())
    ref = write_csv(tmp_path / "ref.csv", X[1200:], list(y[1200:]))
    return path, ref


def test_register_onnx_brings_an_external_model(
    capsys: pytest.CaptureFixture[str], model_name: str, tmp_path: Path
) -> None:
    from sklearn.metrics import accuracy_score

    path, ref = skl_onnx(tmp_path)
    code, out, err = run(
        capsys,
        "models",
        "register-onnx",
        str(path),
        "--reference",
        str(ref),
        "--label-column",
        "digit",
        "--name",
        model_name,
    )
    assert code == 0, err
    (v,) = store.list_versions(model_name)
    assert v.card.kind == "external-onnx" and v.card.n_features == 64 and v.card.n_classes == 10
    assert v.card.output_name == "probabilities"
    import onnxruntime as ort

    d = load_digits()
    sess = ort.InferenceSession(str(v.model_path))
    (proba,) = sess.run(["probabilities"], {v.card.input_name: d.data[1200:].astype(np.float32)})
    expected = accuracy_score(d.target[1200:], proba.argmax(axis=1))
    assert v.card.metrics["accuracy"] == pytest.approx(expected)
    assert v.read_profile()["schema"] == 1


def test_register_onnx_refuses_bad_models_clearly(
    capsys: pytest.CaptureFixture[str], model_name: str, tmp_path: Path
) -> None:
    path, ref = skl_onnx(tmp_path)
    zpath, _ = skl_onnx(tmp_path, zipmap=True)
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    narrow = write_csv(tmp_path / "narrow.csv", load_digits().data[:40, :10], [0, 1] * 20)
    cases = [
        (str(not_onnx), str(ref), "not a loadable ONNX model"),
        (str(zpath), str(ref), "zipmap"),
        (str(path), str(narrow), "expects 64 features"),
        (str(tmp_path / "missing.onnx"), str(ref), "not found"),
        (str(path), str(tmp_path / "missing.csv"), "not found"),
    ]
    for onnx_file, reference, message in cases:
        code, _, err = run(
            capsys,
            "models",
            "register-onnx",
            onnx_file,
            "--reference",
            reference,
            "--label-column",
            "digit",
            "--name",
            model_name,
        )
        assert code == 1 and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert store.list_versions(model_name) == []


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_rollback_returns_to_the_version_served_by_default(
    capsys: pytest.CaptureFixture[str],
    registered: list[StoredVersion],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    """A new user trains twice (the newest serves, nothing was ever activated), activates
    the older version and rolls back: the newest is live again."""
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        monkeypatch.setenv("ARGUS_STATE_URL", f"{server.url}?prefix=cli-{registered[0].name}:")
    old, new = registered
    name = old.name
    code, out, err = run(capsys, "models", "activate", old.version, "--name", name)
    assert code == 0, err
    code, out, err = run(capsys, "models", "rollback", "--name", name)  # a new process' view
    assert code == 0, err
    assert f"{name}:{new.version} is live" in out
    state = open_state(os.environ.get("ARGUS_STATE_URL"), Path(os.environ["ARGUS_HOME"]))
    try:
        history = state.history(name)
    finally:
        state.close()
    assert [(s.version, s.reason) for s in history] == [
        (new.version, "default"),
        (old.version, "activate"),
        (new.version, "rollback"),
    ]
