"""The ``argus`` command line: a thin layer over the library functions.

Every command reads its Settings from ``ARGUS_*`` variables, points BentoML at the
home's model store, does its work and turns Argus's own errors into one line on stderr
and a non-zero exit. The ``models`` commands live in ``argus/models_cli.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from argus.models_cli import add_models_parser, share
from errors import ArgusError
from service.settings import Settings

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
    train.add_argument("--source", help="digits (default), digits28, mnist:DIR or csv:PATH")
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

    add_models_parser(sub)
    status = sub.add_parser("status", help="print a running server's monitoring figures")
    status.add_argument("--url", default=None, help="server URL (default http://HOST:PORT)")
    status.add_argument("--model", help="a served model (default: the server's default)")
    status.add_argument("--version", help="a version other than the live one")
    status.add_argument(
        "--top", type=_positive, default=10, help="how many drifted features to list"
    )
    status.add_argument("--json", action="store_true", help="print the raw /monitoring JSON")
    status.add_argument(
        "--history",
        type=float,
        nargs="?",
        const=3600.0,
        metavar="SECONDS",
        help="the figures' history over the last SECONDS (default 3600) instead",
    )
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
    sim.add_argument("--model", help="a served model (default: the server's default)")
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

    from argus.status import render_comparison, render_status

    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    params = {k: v for k, v in (("model", args.model), ("version", args.version)) if v}
    if args.history is not None:
        return _status_history(url, params, args)
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
    compared = None
    if not args.version:  # the candidate is compared with the live version
        try:
            got = httpx.get(f"{url}/monitoring/compare", params=params, timeout=10)
            compared = got.json() if got.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            compared = None
    if args.json:
        print(json.dumps({**snapshot, "compare": compared}, indent=2))
    else:
        print(render_status(snapshot, top=args.top))
        if compared and compared.get("candidate"):
            print(render_comparison(compared))
    return 0


def _status_history(url: str, params: dict[str, str], args: argparse.Namespace) -> int:
    import time

    import httpx

    from argus.status import render_history

    if not args.history > 0:
        raise ArgusError(f"--history takes a number of seconds > 0, got {args.history}")
    query = {**params, "since": str(time.time() - args.history)}
    try:
        response = httpx.get(f"{url}/monitoring/history", params=query, timeout=10)
    except httpx.HTTPError as exc:
        raise ArgusError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise ArgusError(
            f"{url}/monitoring/history answered {response.status_code}: {response.text}"
        )
    doc = response.json()
    print(json.dumps(doc, indent=2) if args.json else render_history(doc))
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
        model=args.model,
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
    # numpy's BLAS, like onnxruntime, would use every core in every worker: share them
    blas_threads = str(max(1, (os.cpu_count() or 1) // max(1, int(env["ARGUS_WORKERS"]))))
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(variable, blas_threads)
    serving = Settings.from_env(env)  # refuse bad values here, not in every worker
    check_can_listen(serving.host, serving.port)  # before a training run, not after it
    check_state(serving)
    if serving.guard_mode != "off":  # a malformed policy: one line now, not in every worker
        from service.guard_policy import load_policy

        load_policy(serving.guard_file)
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


def check_state(settings: Settings) -> None:
    """Open the shared state once, as every worker will, or raise ``StateError`` (an
    ARGUS_HOME that cannot be written, an unreachable Redis): BentoML restarts a worker
    that fails to start, again and again, instead of stopping."""
    from state.opener import open_state

    state = open_state(settings.state_url, settings.home, busy_timeout=settings.state_busy_timeout)
    try:
        state.get_live(settings.model)  # connects, and makes the schema in a new file
    finally:
        state.close()


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
    share(stored, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
