"""The ``argus`` command line: a thin layer over the library functions.

Every command reads its Settings from ``ARGUS_*`` variables, points BentoML at the
home's model store, does its work and turns Argus's own errors into one line on stderr
and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from argus.settings import Settings
from models.errors import ArgusError

EXIT_ERROR = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = Settings.from_env()
        settings.apply_bentoml_home()
        return int(args.func(args, settings) or 0)
    except (ArgusError, ValueError, OSError) as exc:
        print(f"argus: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("argus: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="argus", description="Serve ML models with monitoring built in."
    )
    sub = parser.add_subparsers(title="commands")

    train = sub.add_parser("train", help="train a classifier and register it as a new version")
    train.add_argument("--config", type=Path, help="TOML file with hyperparameters")
    train.add_argument("--source", help="digits (default), mnist:DIR or csv:PATH")
    train.add_argument("--label-column", help="label column of a csv: source")
    train.add_argument("--name", help="model name in the store (default: ARGUS_MODEL)")
    train.add_argument("--seed", type=int)
    train.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs")
    train.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--hidden", help="hidden layer sizes, comma separated (default 100)")
    train.add_argument(
        "--gradient-check", action="store_true", help="check autograd against finite differences"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list, inspect and manage stored versions")
    msub = models.add_subparsers(title="models commands")
    p = msub.add_parser("list", help="versions by creation time")
    p.add_argument("--name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("show", help="a version's card and evaluation report")
    p.add_argument("version")
    p.add_argument("--name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_show)
    p = msub.add_parser("diff", help="config and metric differences between two versions")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_diff)
    p = msub.add_parser("verify", help="check stored files against their checksums")
    p.add_argument("version")
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_verify)
    p = msub.add_parser("delete", help="delete a version that is not live")
    p.add_argument("version")
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_delete)
    p = msub.add_parser("export", help="write a version as a .bentomodel archive")
    p.add_argument("version")
    p.add_argument("dest", type=Path)
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_export)
    p = msub.add_parser("import", help="add a version from a .bentomodel archive")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_models_import)
    p = msub.add_parser("register-onnx", help="register an ONNX classifier trained elsewhere")
    p.add_argument("file", type=Path)
    p.add_argument("--reference", type=Path, required=True, help="CSV of labelled reference rows")
    p.add_argument("--label-column", required=True)
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_register_onnx)
    p = msub.add_parser(
        "sync", help="import the versions this store lacks from the shared model source"
    )
    p.add_argument("--from", dest="source", type=Path, help="folder (default ARGUS_MODEL_SOURCE)")
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_sync)
    p = msub.add_parser("activate", help="make a version live (running servers follow)")
    p.add_argument("version")
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_activate)
    p = msub.add_parser("rollback", help="make the previously live version live again")
    p.add_argument("--name")
    p.set_defaults(func=cmd_models_rollback)
    status = sub.add_parser("status", help="print a running server's monitoring figures")
    status.add_argument("--url", default=None, help="server URL (default http://HOST:PORT)")
    status.add_argument("--version", help="a version other than the live one")
    status.add_argument(
        "--top", type=_positive, default=10, help="how many drifted features to list"
    )
    status.add_argument("--json", action="store_true", help="print the raw /monitoring JSON")
    status.set_defaults(func=cmd_status)

    sim = sub.add_parser(
        "simulate", help="send synthetic digits traffic (and late labels) to a running server"
    )
    sim.add_argument("--url", default=None, help="server URL (default http://HOST:PORT)")
    sim.add_argument(
        "--scenario", default="clean", choices=["clean", "drift", "anomaly", "prior-shift"]
    )
    sim.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    sim.add_argument("--max-requests", type=int, help="stop after this many requests")
    sim.add_argument("--batch", type=int, default=8, help="rows per request (default 8)")
    sim.add_argument(
        "--label-delay", type=float, default=5.0, help="seconds before a label is sent (default 5)"
    )
    sim.add_argument(
        "--label-fraction",
        type=float,
        default=0.5,
        help="share of predictions that get their true label (default 0.5)",
    )
    sim.add_argument(
        "--invalid-fraction",
        type=float,
        default=0.0,
        help="share of requests sent with a malformed row, refused with a 400 (default 0)",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--allow-remote", action="store_true", help="allow a URL that is not a loopback address"
    )
    sim.set_defaults(func=cmd_simulate)

    serve = sub.add_parser("serve", help="serve the live version over HTTP")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default 3000)")
    serve.add_argument("--workers", type=_positive, help="worker processes (default 2)")
    serve.add_argument("--model", help="model name (default ARGUS_MODEL)")
    serve.add_argument(
        "--train-if-empty",
        action="store_true",
        help="train and register the default model first if the store holds none",
    )
    serve.set_defaults(func=cmd_serve)
    return parser


# -- status ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from argus.status import render_status

    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    params = {"version": args.version} if args.version else None
    try:
        response = httpx.get(f"{url}/monitoring", params=params, timeout=10)
    except httpx.HTTPError as exc:
        raise ArgusError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise ArgusError(f"{url}/monitoring answered {response.status_code}: {message}")
    snapshot = response.json()
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(render_status(snapshot, top=args.top))
    return 0


# -- simulate --------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from argus.simulate import simulate

    url = args.url or f"http://{settings.host}:{settings.port}"
    result = simulate(
        url,
        args.scenario,
        rate=args.rate,
        duration=args.duration,
        max_requests=args.max_requests,
        batch=args.batch,
        label_delay=args.label_delay,
        label_fraction=args.label_fraction,
        invalid_fraction=args.invalid_fraction,
        seed=args.seed,
        allow_remote=args.allow_remote,
        out=sys.stderr,
    )
    print(result.summary())
    return 130 if result.interrupted else 0


# -- serve -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from models import store

    name = args.model or settings.model
    env = dict(os.environ)
    for key, value in (
        ("ARGUS_HOME", str(settings.home)),
        ("ARGUS_MODEL", name),
        ("ARGUS_HOST", args.host or settings.host),
        ("ARGUS_PORT", str(settings.port if args.port is None else args.port)),
        ("ARGUS_WORKERS", str(settings.workers if args.workers is None else args.workers)),
        ("BENTOML_HOME", str(settings.bentoml_home)),
    ):
        env[key] = value
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    serving = Settings.from_env(env)  # refuse bad values here, not in every worker
    check_can_listen(serving.host, serving.port)  # before a training run, not after it
    if store.newest(name) is None and settings.model_source is not None:
        imported, problems = store.sync_from(settings.model_source, name)
        for problem in problems:
            print(f"argus: skipped {problem}", file=sys.stderr)
        print(f"imported {len(imported)} versions from {settings.model_source}", file=sys.stderr)
    if store.newest(name) is None:
        if not args.train_if_empty:
            raise ArgusError(
                f"the store at {settings.bentoml_home} holds no version of {name}: "
                "run `argus train` first (or `argus serve --train-if-empty`)"
            )
        print(f"no version of {name} yet: training the default model first", file=sys.stderr)
        train_args = build_parser().parse_args(["train", "--name", name, "--no-progress"])
        cmd_train(train_args, settings)
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "service.service:Argus",
        "--host",
        env["ARGUS_HOST"],
        "--port",
        env["ARGUS_PORT"],
    ]
    print(
        f"serving {name} on http://{env['ARGUS_HOST']}:{env['ARGUS_PORT']} "
        f"with {env['ARGUS_WORKERS']} workers (home {settings.home})",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
    return 0  # not reached


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return value


def check_can_listen(host: str, port: int) -> None:
    """Raise ``ArgusError`` if ``host:port`` cannot be listened on, the way BentoML's
    arbiter binds it (``SO_REUSEADDR``); otherwise BentoML fails later with a traceback.
    The port is free again when this returns, so a server started right after can bind."""
    import errno
    import socket

    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ArgusError(f"cannot serve on {where}: unknown host ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = {
                errno.EADDRINUSE: "the port is in use (another server?): choose one with --port",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
                errno.EADDRNOTAVAIL: "the host is not an address of this machine",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise ArgusError(f"cannot serve on {where}: {hint}") from None


# -- train -----------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from training.config import TrainConfig
    from training.pipeline import run
    from training.publish import publish
    from training.report import render_report

    config = TrainConfig.load_toml(args.config) if args.config else TrainConfig()
    overrides: dict[str, Any] = {}
    for key in ("source", "label_column", "seed", "max_epochs", "patience", "learning_rate"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.hidden is not None:
        try:
            overrides["hidden"] = tuple(int(h) for h in args.hidden.split(",") if h.strip())
        except ValueError:
            raise ValueError(f"--hidden {args.hidden!r} must be comma-separated integers") from None
    if overrides:
        config = config.with_overrides(**overrides)
    outcome = run(
        config,
        progress=not args.no_progress and sys.stderr.isatty(),
        gradient_check=args.gradient_check,
        out=sys.stderr,
    )
    print(render_report(outcome))
    stored = publish(outcome, args.name or settings.model)
    print(f"registered {stored.tag}")
    _share(stored, settings)
    return 0


def _share(stored: Any, settings: Settings) -> None:
    """Put a new version where every replica finds it (ARGUS_MODEL_SOURCE), if set."""
    if settings.model_source is not None:
        from models import store

        path = store.publish_to(stored, settings.model_source)
        print(f"shared {stored.tag} as {path}")


# -- models ----------------------------------------------------------------------------


def _name(args: argparse.Namespace, settings: Settings) -> str:
    return str(getattr(args, "name", None) or settings.model)


def _state(settings: Settings) -> Any:
    from monitoring.state import open_state

    return open_state(settings.state_url, settings.home)


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    versions = store.list_versions(name)
    live = _state(settings).get_live(name)
    if live is None and versions:
        live = versions[-1].version
    if args.json:
        rows = [
            {
                "version": v.version,
                "created": v.creation_time.isoformat(),
                "accuracy": v.card.accuracy,
                "live": v.version == live,
                "kind": v.card.kind,
            }
            for v in versions
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not versions:
        print(f"no versions of {name} yet: run `argus train`")
        return 0
    print(f"{'':2}{'VERSION':<18}{'CREATED (UTC)':<21}{'ACCURACY':>9}  CONFIG")
    for v in versions:
        mark = "* " if v.version == live else "  "
        acc = f"{v.card.accuracy:.4f}" if v.card.accuracy is not None else "-"
        created = v.creation_time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{mark}{v.version:<18}{created:<21}{acc:>9}  {config_summary(v.card)}")
    print("(* live)")
    return 0


def config_summary(card: Any) -> str:
    c = card.config
    if card.kind != "argus-mlp" or not c:
        return f"{card.kind} {card.data.get('source', '')}".strip()
    hidden = "x".join(str(h) for h in c.get("hidden", []))
    return (
        f"{c.get('source')} mlp[{hidden}] lr={c.get('learning_rate')} "
        f"bs={c.get('batch_size')} seed={c.get('seed')}"
    )


def cmd_models_show(args: argparse.Namespace, settings: Settings) -> int:
    from models import store
    from monitoring.performance import ClassificationReport

    stored = store.get_version(_name(args, settings), args.version)
    if args.json:
        print(stored.card.to_json())
        return 0
    card = stored.card
    print(f"{stored.tag}  ({card.kind}, created {card.created_at}, parent {card.parent})")
    print(f"code version: {card.code_version}")
    print(f"data: {json.dumps(dict(card.data), sort_keys=True)}")
    if card.config:
        print(f"config: {json.dumps(dict(card.config), sort_keys=True)}")
    training = dict(card.training)
    if training.get("verdict"):
        verdict = training["verdict"]
        print(f"training: best epoch {training.get('best_epoch')}, verdict: {verdict.get('kind')}")
        print(f"  {verdict.get('reason')}")
    if card.calibration:
        cal = card.calibration
        print(
            f"calibration: temperature {cal.get('temperature'):.4f}, "
            f"ECE {cal.get('ece_before'):.4f} -> {cal.get('ece_after'):.4f}"
        )
    print(f"profile: {json.dumps(dict(card.profile), sort_keys=True)}")
    print(f"files: {json.dumps(dict(card.files), sort_keys=True)}")
    print()
    report = ClassificationReport.from_dict(card.metrics)
    print(report.stats(class_names=card.class_names))
    return 0


def cmd_models_diff(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    a = store.get_version(name, args.a)
    b = store.get_version(name, args.b)
    print(f"--- {a.tag}\n+++ {b.tag}")
    changed = False
    for section, left, right in (
        ("config", dict(a.card.config), dict(b.card.config)),
        ("data", dict(a.card.data), dict(b.card.data)),
    ):
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                changed = True
                print(f"{section}.{key}: {left.get(key)!r} -> {right.get(key)!r}")
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        x, y = a.card.metrics.get(key), b.card.metrics.get(key)
        if isinstance(x, int | float) and isinstance(y, int | float):
            print(f"metrics.{key}: {x:.4f} -> {y:.4f} ({y - x:+.4f})")
        elif x != y:
            print(f"metrics.{key}: {x!r} -> {y!r}")
    if not changed:
        print("(no config or data differences)")
    return 0


def cmd_models_verify(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    stored = store.get_version(_name(args, settings), args.version)
    checked = store.verify(stored)
    for fname, digest in sorted(checked.items()):
        print(f"ok  {fname}  sha256:{digest}")
    print(f"{stored.tag} verified")
    return 0


def cmd_models_delete(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    stored = store.get_version(name, args.version)
    if _state(settings).get_live(name) == stored.version:
        raise ArgusError(f"{stored.tag} is live: activate another version before deleting it")
    store.delete(stored)
    print(f"deleted {stored.tag}")
    return 0


def cmd_models_export(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    stored = store.get_version(_name(args, settings), args.version)
    out = store.export_version(stored, args.dest)
    print(f"exported {stored.tag} to {out}")
    return 0


def cmd_models_import(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    stored = store.import_version(args.path)
    print(f"imported {stored.tag}")
    _share(stored, settings)
    return 0


def cmd_models_sync(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    source = args.source or settings.model_source
    if source is None:
        raise ArgusError("no model source: pass --from DIR or set ARGUS_MODEL_SOURCE")
    imported, problems = store.sync_from(source, _name(args, settings))
    for v in imported:
        print(f"imported {v.tag}")
    for problem in problems:
        print(f"argus: skipped {problem}", file=sys.stderr)
    print(f"{len(imported)} imported, {len(problems)} skipped from {source}")
    return 1 if problems else 0


def cmd_models_register_onnx(args: argparse.Namespace, settings: Settings) -> int:
    from training.byom import register_onnx

    stored = register_onnx(
        args.file, args.reference, args.label_column, name=args.name or settings.model
    )
    print(f"registered {stored.tag}")
    _share(stored, settings)
    return 0


def cmd_models_activate(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    stored = store.get_version(name, args.version)
    store.verify(stored)
    _state(settings).set_live(name, stored.version, reason="activate", t=time.time())
    print(f"{stored.tag} is live")
    return 0


def cmd_models_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    state = _state(settings)
    target = state.previous_live(name)
    stored = store.get_version(name, target)
    store.verify(stored)
    version = state.rollback(name, t=time.time())
    print(f"rolled back: {name}:{version} is live")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
