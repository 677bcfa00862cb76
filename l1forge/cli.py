"""The `l1forge` command: one sub-command group per part, registered by that part's `cli` module.

Part modules import their heavy dependencies inside the handlers, so `l1forge --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from l1forge import __version__
from l1forge.errors import L1ForgeError

# (command, module that defines `register(subparsers)`); every part ships in this distribution.
PARTS = [
    ("sim", "l1forge.sim.cli"),
    ("train", "l1forge.models.cli"),
    ("import", "l1forge.models.import_cli"),
    ("firmware", "l1forge.firmware.cli"),
    ("online", "l1forge.online.control.cli"),
    ("codesign", "l1forge.offline.cli"),
    ("demo", "l1forge.demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l1forge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"l1forge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for _name, module_name in PARTS:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except L1ForgeError as exc:
        print(f"l1forge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l1forge: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
