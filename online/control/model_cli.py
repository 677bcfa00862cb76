"""`l1forge online model ...`: the model registry and the continual learner from the shell.

    l1forge online model list|show VERSION|rollback|promote VERSION --registry DIR [--apply]
    l1forge online model import RUN_DIR --registry DIR        (an `l1forge train ad` folder)
    l1forge online model firmware VERSION --registry DIR      (firmware build folder)
    l1forge online model learn --registry DIR --reference ZB.h5 [--signals SIG.h5 ...]

``--apply`` also sends the version and its menu to the running daemon in one ``swap`` (or a
``set_model`` when the version has no menu), so a rollback of the live trigger is one command.
``learn`` subscribes to the daemon's zero-bias monitoring tap and adapts on drift until
interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_REGISTRY = "out/online/models"


def _registry(args: argparse.Namespace) -> Any:
    from l1forge.online.learning.registry import ModelRegistry

    return ModelRegistry(args.registry)


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=1, default=str))


def _summary(v: Any, active: str | None) -> dict[str, Any]:
    p = v.provenance
    return {
        "version": v.name,
        "active": v.name == active,
        "parent": v.parent,
        "kind": p.get("kind"),
        "accepted": p.get("accepted"),
        "registered_utc": p.get("registered_utc"),
        "qnet": str(v.qnet_path),
        "has_weights": v.weights_path is not None,
        "has_menu": v.menu_path is not None,
    }


def _client(args: argparse.Namespace) -> Any:
    from l1forge.online.control.commands import client_from_args

    return client_from_args(args)


def _apply(args: argparse.Namespace, version: Any) -> dict[str, Any]:
    """Send a version's IR and menu to the running daemon (together: one swap)."""
    client = _client(args)
    menu = version.menu()
    if menu is not None:
        return {"swap": client.swap(args.model, version.qnet_path, menu)}
    return {"set_model": client.set_model(args.model, version.qnet_path)}


def _list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    active = reg.active_name
    _print(
        {
            "registry": str(reg.folder),
            "active": active,
            "versions": [_summary(v, active) for v in reg.list()],
        }
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    reg = _registry(args)
    v = reg.get(args.version)
    reg.verify(v.name)
    _print({**_summary(v, reg.active_name), "verified": True, "provenance": v.provenance})
    return 0


def _switch(args: argparse.Namespace) -> int:
    reg = _registry(args)
    v = reg.rollback() if args.model_command == "rollback" else reg.promote(args.version)
    reg.verify(v.name)
    doc: dict[str, Any] = {"active": v.name, "history": reg.history()}
    if args.apply:
        doc["daemon"] = _apply(args, v)
    _print(doc)
    return 0


def _import(args: argparse.Namespace) -> int:
    from l1forge.online.learning.registry import import_training_run

    v = import_training_run(_registry(args), args.run_dir, activate=not args.no_activate)
    _print(_summary(v, _registry(args).active_name))
    return 0


def _firmware(args: argparse.Namespace) -> int:
    reg = _registry(args)
    out = reg.build_firmware(args.version, hls=not args.no_hls, lint=not args.no_lint)
    _print({"version": args.version, "firmware_dir": str(out)})
    return 0


def _inputs(path: str) -> dict[str, Any]:
    from l1forge.sim.dataset import read_events

    ev = read_events(path)
    return {str(p): ev.objects_hw[ev.label == i] for i, p in enumerate(ev.processes)}


def _learn(args: argparse.Namespace) -> int:
    import numpy as np

    from l1forge.errors import ConfigError
    from l1forge.online.control.daemon import read_endpoints
    from l1forge.online.datapath.menu import Menu
    from l1forge.online.learning.feed import run_subscriber
    from l1forge.online.learning.learner import Learner
    from l1forge.online.learning.settings import LearnerConfig

    reg = _registry(args)
    active = reg.active
    if active is None:
        raise ConfigError(f"{reg.folder}: no active model (use `l1forge online model promote`)")
    if args.menu:
        menu = Menu.from_json(Path(args.menu).read_text())
    elif active.menu() is not None:
        menu = Menu.from_json(active.menu())
    else:
        raise ConfigError("no menu: pass --menu menu.json (Menu.to_json) or register one")
    reference = np.concatenate(list(_inputs(args.reference).values()))
    signals: dict[str, Any] = {}
    for path in args.signals or ():
        signals.update(_inputs(path))
    reference_signals: dict[str, Any] = {}
    for path in args.reference_signals or ():
        reference_signals.update(_inputs(path))
    if not all(np.isfinite(s.threshold) for s in menu.seeds if s.model == args.model):
        from l1forge.online.learning.learner import score

        menu = menu.calibrate({args.model: score(active.load_net(), reference)})
    client = _client(args)
    monitor, keys = args.monitor, args.keys
    if monitor is None:
        found = read_endpoints(args.state_dir)
        monitor, keys = found["monitor"], keys or found.get("curve_keys")
    changes: dict[str, Any] = {"seed": args.seed}
    for key in ("check_events", "adapt_events"):
        if getattr(args, key):
            changes[key] = getattr(args, key)
    if args.runtime_kinds:
        changes["runtime_kinds"] = tuple(args.runtime_kinds)
    config = dataclasses.replace(LearnerConfig(), **changes)
    learner = Learner(
        reg,
        menu,
        reference,
        model=args.model,
        config=config,
        signal_holdout=signals or None,
        reference_signal=reference_signals or None,
        on_menu=lambda m: client.set_menu(m.to_json()),
        on_model=lambda name, path: client.set_model(name, path),
        on_swap=lambda name, path, m: client.swap(name, path, m.to_json()),
        on_scaling=lambda offset, shift: client.set_scaling(
            offset.tolist(), shift.tolist(), args.model
        ),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    timer = threading.Timer(args.max_seconds or 0.0, stop.set)
    timer.daemon = True  # an interrupted learner does not wait for it
    if args.max_seconds:
        timer.start()
    with learner:
        counts = run_subscriber(learner, monitor, stop, keys=keys)
    timer.cancel()
    _print(
        {
            **counts,
            "active": reg.active_name,
            "menu": learner.menu.to_json(),
            "adaptations": [
                {
                    "version": a.version,
                    "accepted": a.accepted,
                    "path": a.path,
                    "why": list(a.why),
                    "reasons": list(a.reasons),
                }
                for a in learner.adaptations
            ],
        }
    )
    return 0


def _daemon_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ad", help="model name in the run (backend.models key)")
    p.add_argument("--control", help="control endpoint (default: from <state-dir>/endpoints.json)")
    p.add_argument("--state-dir", default="out/online/state", help="the daemon's state_dir")
    p.add_argument("--keys", help="CURVE key folder (when the daemon is not on loopback)")
    p.add_argument(
        "--token-file",
        help="the daemon's control token: its endpoints.json or a file holding the token "
        "(default: <state-dir>/endpoints.json)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for replies")


def register_model_commands(online_subparsers: Any) -> None:
    """Add `model list|show|rollback|promote|import|firmware|learn` under `l1forge online`."""
    p = online_subparsers.add_parser("model", help="model versions: list, rollback, learn")
    sub = p.add_subparsers(dest="model_command", required=True)

    def add(name: str, func: Any, text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text)
        c.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry folder")
        c.set_defaults(func=func)
        return c

    add("list", _list, "every version with parent, status and the active one")
    add("show", _show, "one version's provenance (checksums verified)").add_argument("version")
    rb = add("rollback", _switch, "activate the version that was active before")
    pr = add("promote", _switch, "make VERSION the active one")
    pr.add_argument("version")
    for c in (rb, pr):
        c.add_argument("--apply", action="store_true", help="also send it to the running daemon")
        _daemon_args(c)
    im = add("import", _import, "register an `l1forge train ad` output folder")
    im.add_argument("run_dir")
    im.add_argument("--no-activate", action="store_true")
    fw = add("firmware", _firmware, "write VERSION's firmware build folder (for boards)")
    fw.add_argument("version")
    fw.add_argument("--no-hls", action="store_true", help="skip the hls4ml project")
    fw.add_argument("--no-lint", action="store_true", help="skip Verilator/Icarus checks")
    ln = add("learn", _learn, "adapt the active model on the daemon's zero-bias tap")
    ln.add_argument("--reference", required=True, help="zero-bias HDF5 of the current conditions")
    ln.add_argument("--signals", nargs="*", help="signal HDF5 files for the efficiency check")
    ln.add_argument(
        "--reference-signals",
        nargs="*",
        help="signal HDF5 files of the reference conditions: a candidate that forgets them "
        "(efficiency loss beyond the tolerance) is registered but not activated",
    )
    ln.add_argument("--menu", help="menu JSON (default: the active version's menu)")
    ln.add_argument("--monitor", help="monitoring PUB endpoint (default: endpoints.json)")
    ln.add_argument("--seed", type=int, default=0)
    ln.add_argument(
        "--check-events", type=int, help="zero-bias events per drift-test window (default 5000)"
    )
    ln.add_argument(
        "--runtime-kinds",
        nargs="+",
        type=str,
        help="run-time changes to try before training (default: thresholds offsets scaling; a "
        "register bank without scaling registers: thresholds)",
    )
    ln.add_argument(
        "--adapt-events",
        type=int,
        help="events of the new conditions collected before adapting (default 15000)",
    )
    ln.add_argument("--max-seconds", type=float, help="stop after this long")
    _daemon_args(ln)
