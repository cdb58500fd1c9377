"""``argus models ...``: list, inspect, move and switch the stored versions of a model.

Part of the ``argus`` command line (``argus/cli.py`` builds the parser and runs the
commands); each command works on the same model store and shared state a running server
uses, so ``activate`` and ``rollback`` reach every worker within its poll interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from errors import ArgusError
from service.settings import Settings


def add_models_parser(sub: Any) -> None:
    """Add ``models`` and its subcommands to the ``argus`` subparsers ``sub``."""
    models = sub.add_parser("models", help="list, inspect and manage stored versions")
    msub = models.add_subparsers(title="models commands")
    p = msub.add_parser("list", help="versions by creation time")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("show", help="a version's card and evaluation report")
    p.add_argument("version")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_show)
    p = msub.add_parser("diff", help="config and metric differences between two versions")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_diff)
    p = msub.add_parser("verify", help="check stored files against their checksums")
    p.add_argument("version")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_verify)
    p = msub.add_parser("delete", help="delete a version that is not live")
    p.add_argument("version")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_delete)
    p = msub.add_parser("export", help="write a version as a .bentomodel archive")
    p.add_argument("version")
    p.add_argument("dest", type=Path)
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_export)
    p = msub.add_parser("import", help="add a version from a .bentomodel archive")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_models_import)
    p = msub.add_parser("register-onnx", help="register an ONNX classifier trained elsewhere")
    p.add_argument("file", type=Path)
    p.add_argument("--reference", type=Path, required=True, help="CSV of labelled reference rows")
    p.add_argument("--label-column", required=True)
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_register_onnx)
    p = msub.add_parser(
        "sync", help="import the versions this store lacks from the shared model source"
    )
    p.add_argument("--from", dest="source", type=Path, help="folder (default ARGUS_MODEL_SOURCE)")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_sync)
    p = msub.add_parser("activate", help="make a version live (running servers follow)")
    p.add_argument("version")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_activate)
    p = msub.add_parser("shadow", help="run a version beside the live one on its rows")
    p.add_argument("version", nargs="?")
    p.add_argument("--fraction", type=float, default=1.0, help="share of rows (default 1.0)")
    p.add_argument("--stop", action="store_true", help="end the shadow")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_shadow)
    p = msub.add_parser("canary", help="let a version answer a share of the requests")
    p.add_argument("version", nargs="?")
    p.add_argument("--percent", type=float, help="share of requests, 0 to 100")
    p.add_argument("--stop", action="store_true", help="end the canary")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_canary)
    p = msub.add_parser("history", help="every switch of the live version, with who and why")
    p.add_argument("--json", action="store_true")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_history)
    p = msub.add_parser("promote", help="make the shadow or canary live")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_promote)
    p = msub.add_parser("rollback", help="make the previously live version live again")
    p.add_argument("--name", "--model", dest="name", help="model (default ARGUS_MODEL)")
    p.set_defaults(func=cmd_models_rollback)


def share(stored: Any, settings: Settings) -> None:
    """Put a new version where every replica finds it (ARGUS_MODEL_SOURCE), if set."""
    if settings.model_source is not None:
        from models import store

        path = store.publish_to(stored, settings.model_source)
        print(f"shared {stored.tag} as {path}")


def _name(args: argparse.Namespace, settings: Settings) -> str:
    return str(getattr(args, "name", None) or settings.model)


def _state(settings: Settings) -> Any:
    from state.opener import open_state

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
    share(stored, settings)
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
    from training.register_onnx import register_onnx

    stored = register_onnx(
        args.file, args.reference, args.label_column, name=args.name or settings.model
    )
    print(f"registered {stored.tag}")
    share(stored, settings)
    return 0


def cmd_models_activate(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    stored = store.get_version(name, args.version)
    store.verify(stored)
    newest = store.newest(name)  # what serves while no version was ever activated
    default = None if newest is None else newest.version
    _state(settings).set_live(
        name, stored.version, reason="activate", t=time.time(), default=default, actor="cli"
    )
    print(f"{stored.tag} is live")
    return 0


def cmd_models_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    state = _state(settings)
    target = state.previous_live(name)
    stored = store.get_version(name, target)
    store.verify(stored)
    version = state.rollback(name, t=time.time(), actor="cli")
    print(f"rolled back: {name}:{version} is live")
    return 0


def cmd_models_shadow(args: argparse.Namespace, settings: Settings) -> int:
    if args.stop:
        return _end_candidate(args, settings, "shadow")
    if args.version is None:
        raise ArgusError("give the VERSION to shadow, or --stop")
    if not 0.0 < args.fraction <= 1.0:
        raise ArgusError(f"--fraction must be in (0, 1], got {args.fraction}")
    return _start_candidate(args, settings, "shadow", args.fraction)


def cmd_models_canary(args: argparse.Namespace, settings: Settings) -> int:
    if args.stop or args.percent == 0:
        return _end_candidate(args, settings, "canary")
    if args.version is None or args.percent is None:
        raise ArgusError("give the VERSION and --percent P (0 to 100), or --stop")
    if not 0.0 < args.percent <= 100.0:
        raise ArgusError(f"--percent must be from 0 to 100, got {args.percent}")
    return _start_candidate(args, settings, "canary", args.percent / 100.0)


def _start_candidate(args: argparse.Namespace, settings: Settings, role: str, share: float) -> int:
    from models import store
    from state.types import Candidate

    name = _name(args, settings)
    stored = store.get_version(name, args.version)
    store.verify(stored)
    state = _state(settings)
    live_version = state.get_live(name) or getattr(store.newest(name), "version", None)
    if live_version == stored.version:
        raise ArgusError(f"{stored.tag} is the live version")
    if live_version is not None:
        live = store.get_version(name, live_version)
        if (live.card.n_features, live.card.n_classes) != (
            stored.card.n_features,
            stored.card.n_classes,
        ):
            raise ArgusError(
                f"{stored.tag} takes {stored.card.n_features} features and gives "
                f"{stored.card.n_classes} classes; the live {live.tag} "
                f"{live.card.n_features} and {live.card.n_classes}"
            )
    state.set_candidate(name, Candidate(role, stored.version, share, time.time()))
    print(f"{stored.tag} is the {role} ({share:.0%}); running servers follow")
    return 0


def _end_candidate(args: argparse.Namespace, settings: Settings, role: str) -> int:
    name = _name(args, settings)
    state = _state(settings)
    current = state.get_candidate(name)
    if current is None or current.role != role:
        print(f"{name} has no {role}")
        return 0
    state.set_candidate(name, None)
    print(f"{role} {name}:{current.version} ended")
    return 0


def cmd_models_promote(args: argparse.Namespace, settings: Settings) -> int:
    from models import store

    name = _name(args, settings)
    state = _state(settings)
    candidate = state.get_candidate(name)
    if candidate is None:
        raise ArgusError(f"{name} has no shadow or canary to promote")
    stored = store.get_version(name, candidate.version)
    store.verify(stored)
    newest = store.newest(name)
    default = None if newest is None else newest.version
    state.set_live(
        name, stored.version, reason="promote", t=time.time(), default=default, actor="cli"
    )
    state.set_candidate(name, None)
    print(f"promoted: {stored.tag} is live ({candidate.role} ended)")
    return 0


def cmd_models_history(args: argparse.Namespace, settings: Settings) -> int:
    name = _name(args, settings)
    switches = _state(settings).history(name)
    if args.json:
        print(json.dumps([s.__dict__ for s in switches], indent=2))
        return 0
    if not switches:
        print(f"{name}: no switch yet (the newest version serves)")
        return 0
    for s in switches:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.t))
        line = f"{when}  {s.version:<18} {s.reason:<14} by {s.actor or '-':<6} was {s.previous}"
        if s.detail:
            figures = ", ".join(
                f"{k} {v:.4g}" for k, v in (s.detail.get("figures") or {}).items()
                if isinstance(v, int | float)
            )  # fmt: skip
            line += f"\n    rule {s.detail.get('rule')}: {figures}"
        print(line)
    return 0
