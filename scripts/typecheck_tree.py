"""Build build/typecheck/l1forge: the installed package's layout as a tree of links, for mypy.

pyproject's package-dir maps l1forge.sim -> sim/ and so on; mypy cannot follow that mapping
(nor the editable install's import hook), so it checks this tree to see the same module names.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def main() -> int:
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dir: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    root_pkg = TREE / "l1forge"
    root_pkg.mkdir(parents=True)
    for name, folder in package_dir.items():
        source = ROOT / folder
        if name == "l1forge":
            for entry in sorted(source.iterdir()):
                if entry.suffix in (".py", ".typed"):
                    (root_pkg / entry.name).symlink_to(entry)
        else:
            parent, _, leaf = name.rpartition(".")
            if parent != "l1forge":
                print(f"typecheck_tree: cannot map nested package {name}", file=sys.stderr)
                return 1
            (root_pkg / leaf).symlink_to(source, target_is_directory=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
