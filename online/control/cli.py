"""`l1forge online ...`: run the daemon, send it control commands, make CURVE keys.

    l1forge online run [--config run.yaml] [--set key=value ...] [--idle]
    l1forge online configure [run.yaml] | start | stop | status | reset | shutdown
    l1forge online set-model NAME IR.json | set-menu menu.json | swap NAME IR.json menu.json
    l1forge online set-scaling scaling.json
    l1forge online keys --out DIR
    l1forge online worker --connect tcp://DAEMON:PORT [--curve-keys DIR]   (a remote worker)

Control commands find the daemon and its control token through ``<state_dir>/endpoints.json``
(``--state-dir``, default out/online/state) or take ``--control tcp://HOST:PORT`` (with
``--token-file FILE`` for the token and ``--keys DIR`` for CURVE).
The `model` sub-commands of the continual learner are defined in ``online/control/model_cli.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from l1forge.online.control.model_cli import register_model_commands

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "out/online/state"
CONTROL_COMMANDS = ("start", "stop", "status", "reset", "shutdown")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("online", help="the online trigger daemon and its control commands")
    sub = p.add_subparsers(dest="online_command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground (one run, or --idle)")
    run.add_argument("--config", help="run YAML (default: the embedded demo run)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set source.n_events=10000 (repeatable)",
    )
    run.add_argument(
        "--idle",
        action="store_true",
        help="configure (if --config) but wait for control commands; exit on shutdown/SIGTERM",
    )
    run.add_argument("--state-dir", help="run numbers and endpoints.json (default: state_dir)")
    run.set_defaults(func=_run)

    cfg = sub.add_parser("configure", help="configure the next run")
    cfg.add_argument("config", nargs="?", help="run YAML read by the daemon (none: keep the last)")
    cfg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _control_args(cfg)
    cfg.set_defaults(func=_configure)

    for name in CONTROL_COMMANDS:
        c = sub.add_parser(name, help=f"send {name} to the daemon")
        _control_args(c)
        c.set_defaults(func=_simple, command=name)

    sm = sub.add_parser("set-model", help="swap a model's qnet IR (live when running)")
    sm.add_argument("name", help="model name (a key of backend.models)")
    sm.add_argument("path", help="qnet IR JSON")
    _control_args(sm)
    sm.set_defaults(func=_set_model)

    mn = sub.add_parser("set-menu", help="replace the trigger menu (Menu.to_json file)")
    mn.add_argument("menu", help="menu JSON file")
    _control_args(mn)
    mn.set_defaults(func=_set_menu)

    sw = sub.add_parser(
        "swap", help="install a model and its menu together (live: one broadcast, no mixed batch)"
    )
    sw.add_argument("name", help="model name (a key of backend.models)")
    sw.add_argument("path", help="qnet IR JSON")
    sw.add_argument("menu", help="menu JSON file (Menu.to_json)")
    _control_args(sw)
    sw.set_defaults(func=_swap)
    sc = sub.add_parser(
        "set-scaling",
        help="set a model's input offsets and shifts in a running run (register bank or emulator)",
    )
    sc.add_argument("scaling", help='JSON file {"offset": [...], "shift": [...]} (one per input)')
    sc.add_argument("--model", help="model name (default: the run's first model)")
    _control_args(sc)
    sc.set_defaults(func=_set_scaling)

    wk = sub.add_parser("worker", help="run a trigger worker that connects to a daemon")
    wk.add_argument("--connect", required=True, help="the daemon's worker endpoint (tcp://...)")
    wk.add_argument("--name", help="worker name (default host-pid)")
    wk.add_argument("--credits", type=int, default=4, help="batches this worker may hold")
    wk.add_argument("--heartbeat-s", type=float, default=0.5)
    wk.add_argument("--curve-keys", help="CURVE key folder with the client key pair")
    wk.add_argument("--give-up-s", type=float, help="exit after this long without the daemon")
    wk.add_argument(
        "--runs", type=int, help="exit after serving this many runs (default 0: every run)"
    )
    wk.set_defaults(func=_worker)

    keys = sub.add_parser("keys", help="generate CURVE keys (server, client, authorized clients)")
    keys.add_argument("--out", required=True, help="new folder for the keys")
    keys.set_defaults(func=_keys)

    register_model_commands(sub)


def _control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", help="control endpoint (default: from <state-dir>/endpoints.json)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="the daemon's state_dir")
    p.add_argument("--keys", help="CURVE key folder (default: the daemon's, if local)")
    p.add_argument(
        "--token-file",
        help="the daemon's control token: its endpoints.json or a file holding the token "
        "(default: <state-dir>/endpoints.json)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")


def _overrides(items: list[str]) -> dict[str, Any]:
    from l1forge.online.config import parse_override

    return dict(parse_override(text) for text in items)


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=1, default=str))


def _run(args: argparse.Namespace) -> int:
    from l1forge.online.config import load_run_config
    from l1forge.online.control.daemon import Daemon, DaemonOptions

    overrides = _overrides(args.set)
    if args.state_dir:
        overrides["state_dir"] = str(Path(args.state_dir).resolve())
    cfg = None
    if args.config or not args.idle:
        cfg = load_run_config(args.config, overrides)
    if cfg is not None:
        options = DaemonOptions.from_config(cfg, exit_when_run_ends=not args.idle)
    else:
        options = DaemonOptions(args.state_dir or DEFAULT_STATE_DIR, exit_when_run_ends=False)
    daemon = Daemon(options)
    summary = daemon.serve(cfg, start=not args.idle)
    _print({"run_summary": summary} if summary is not None else {"state": "idle", "run": None})
    if daemon.error:
        print(f"l1forge: error: {daemon.error}", file=sys.stderr)
        return 1
    return 0


def _client(args: argparse.Namespace) -> Any:
    from l1forge.online.control.commands import client_from_args

    return client_from_args(args)


def _configure(args: argparse.Namespace) -> int:
    path = None if args.config is None else Path(args.config)
    _print(_client(args).configure(path, overrides=_overrides(args.set)))
    return 0


def _simple(args: argparse.Namespace) -> int:
    _print(_client(args).request(args.command))
    return 0


def _set_model(args: argparse.Namespace) -> int:
    _print(_client(args).set_model(args.name, args.path))
    return 0


def _menu_file(path: str) -> str:
    from l1forge.errors import ConfigError

    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read menu file {path}: {exc.strerror}") from exc


def _set_menu(args: argparse.Namespace) -> int:
    _print(_client(args).set_menu(_menu_file(args.menu)))
    return 0


def _swap(args: argparse.Namespace) -> int:
    _print(_client(args).swap(args.name, args.path, _menu_file(args.menu)))
    return 0


def _set_scaling(args: argparse.Namespace) -> int:
    from l1forge.errors import ConfigError

    try:
        doc = json.loads(Path(args.scaling).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read scaling file {args.scaling}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"scaling file {args.scaling}: not JSON ({exc})") from exc
    if (
        not isinstance(doc, dict)
        or set(doc) - {"offset", "shift", "model"}
        or not ({"offset", "shift"} <= set(doc))
    ):
        raise ConfigError(
            f'scaling file {args.scaling}: expected {{"offset": [...], "shift": [...]}}'
        )
    model = args.model or doc.get("model")
    _print(_client(args).set_scaling(doc["offset"], doc["shift"], model))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from l1forge.online.datapath.worker import main as worker_main

    argv = ["--connect", args.connect, "--credits", str(args.credits)]
    argv += ["--heartbeat-s", str(args.heartbeat_s)]
    for flag, value in (
        ("--name", args.name),
        ("--curve-keys", args.curve_keys),
        ("--give-up-s", args.give_up_s),
        ("--runs", args.runs),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return worker_main(argv)


def _keys(args: argparse.Namespace) -> int:
    from l1forge.online.security import generate_keys

    keys = generate_keys(args.out)
    _print(
        {
            "keys": str(keys.folder),
            "server_public": keys.server_public.decode(),
            "authorized_clients": str(keys.authorized_dir),
            "use": "set network.curve_keys to this folder; give clients a copy without "
            "server.key_secret",
        }
    )
    return 0


if __name__ == "__main__":
    from l1forge.cli import main

    sys.exit(main(["online", *sys.argv[1:]]))
