"""Model registry: every network version the trigger ran, with its provenance, and the active one.

Layout of a registry folder::

    versions/v0001/model.qnet.json, model.qnet.npz   the qnet IR
                   keras.weights.h5                    QKeras training weights (to fine-tune from)
                   menu.json                           menu thresholds calibrated for this version
                   provenance.json                     parent, data, seeds, metrics, sha256 of files
                   firmware/                           optional firmware build folder (boards)
    active.json                                        {"active": "v0003", "history": [...]}

A version folder is written under a temporary name and renamed into place, and ``active.json``
is replaced atomically (write, fsync, ``os.replace``), so a crash never leaves a half version or
a torn pointer. Versions are never modified after registration except for an added firmware/.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.fileio import sha256_file, write_atomic
from l1forge.models import qnet
from l1forge.models.qnet import QNet

log = logging.getLogger(__name__)

QNET_FILE = "model.qnet.json"
WEIGHTS_FILE = "keras.weights.h5"
MENU_FILE = "menu.json"
PROVENANCE_FILE = "provenance.json"
ACTIVE_FILE = "active.json"
FIRMWARE_DIR = "firmware"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(L1ForgeError, LookupError):
    """A version is missing, corrupt, or a rollback has nothing to return to."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered network version (read from its folder)."""

    name: str
    path: Path
    provenance: dict[str, Any]

    @property
    def qnet_path(self) -> Path:
        return self.path / QNET_FILE

    @property
    def weights_path(self) -> Path | None:
        p = self.path / WEIGHTS_FILE
        return p if p.is_file() else None

    @property
    def menu_path(self) -> Path | None:
        p = self.path / MENU_FILE
        return p if p.is_file() else None

    @property
    def parent(self) -> str | None:
        return self.provenance.get("parent")

    def load_net(self) -> QNet:
        """The IR, validated by ``qnet.load`` (checksum of its arrays included)."""
        return qnet.load(self.qnet_path)

    def menu(self) -> dict[str, Any] | None:
        return json.loads(self.menu_path.read_text()) if self.menu_path else None


class ModelRegistry:
    """Versions v0001, v0002, ... of one trigger network, and the pointer to the active one."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.versions_dir = self.folder / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    # ---- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Version names in registration order."""
        found = [p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name)]
        return sorted(found, key=lambda n: int(n[1:]))

    def get(self, name: str) -> ModelVersion:
        path = self.versions_dir / name
        prov = path / PROVENANCE_FILE
        if not _VERSION_RE.match(name) or not prov.is_file():
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"no model version {name!r} in {self.folder} (known: {known})")
        try:
            doc = json.loads(prov.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{prov}: unreadable provenance ({exc})") from exc
        return ModelVersion(name, path, doc)

    def list(self) -> list[ModelVersion]:
        return [self.get(n) for n in self.names()]

    def _pointer(self) -> dict[str, Any]:
        path = self.folder / ACTIVE_FILE
        if not path.is_file():
            return {"active": None, "history": []}
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path}: unreadable active pointer ({exc})") from exc
        return doc

    @property
    def active_name(self) -> str | None:
        return self._pointer().get("active")

    @property
    def active(self) -> ModelVersion | None:
        name = self.active_name
        return self.get(name) if name else None

    def history(self) -> builtins.list[str]:  # builtins: the list method shadows list here
        """Versions made active, oldest first; the last one is the active version."""
        return list(self._pointer().get("history", []))

    def verify(self, name: str) -> None:
        """Check every recorded file against its sha256 and that the IR loads."""
        v = self.get(name)
        for rel, digest in v.provenance.get("sha256", {}).items():
            f = v.path / rel
            if not f.is_file():
                raise RegistryError(f"{name}: file {rel} is missing")
            if sha256_file(f) != digest:
                raise RegistryError(f"{name}: {rel} does not match its recorded sha256")
        try:
            v.load_net()
        except DataFormatError as exc:
            raise RegistryError(f"{name}: its qnet IR does not load: {exc}") from exc

    # ---- writing -------------------------------------------------------------------------
    def register(
        self,
        net: QNet,
        provenance: Mapping[str, Any],
        *,
        parent: str | None = None,
        weights: str | Path | None = None,
        menu: Mapping[str, Any] | None = None,
        activate: bool = False,
    ) -> ModelVersion:
        """Store a new version (IR, optional Keras weights file and menu) and return it."""
        if parent is not None:
            self.get(parent)  # the parent must exist
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.versions_dir))
        try:
            qnet.save(net, tmp / QNET_FILE)
            if weights is not None:
                shutil.copyfile(weights, tmp / WEIGHTS_FILE)
            if menu is not None:
                (tmp / MENU_FILE).write_text(json.dumps(dict(menu), indent=1) + "\n")
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            doc = {
                **dict(provenance),
                "parent": parent,
                "network": net.name,
                "registered_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "sha256": {f: sha256_file(tmp / f) for f in files},
            }
            (tmp / PROVENANCE_FILE).write_text(json.dumps(doc, indent=1, default=str) + "\n")
            name = self._rename_into_place(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("registered model %s (parent %s) in %s", name, parent, self.folder)
        if activate:
            self.promote(name)
        return self.get(name)

    def _rename_into_place(self, tmp: Path) -> str:
        """Rename ``tmp`` to the next free vNNNN; a concurrent writer makes us take the next."""
        existing = self.names()
        n = int(existing[-1][1:]) + 1 if existing else 1
        for _ in range(1000):
            name = f"v{n:04d}"
            try:
                os.rename(tmp, self.versions_dir / name)
                return name
            except OSError:
                if not (self.versions_dir / name).exists():
                    raise
                n += 1
        raise RegistryError(f"{self.versions_dir}: could not find a free version name")

    def _write_pointer(self, name: str, history: builtins.list[str]) -> None:
        doc = {"active": name, "history": history}
        write_atomic(self.folder / ACTIVE_FILE, json.dumps(doc, indent=1) + "\n")

    def promote(self, name: str) -> ModelVersion:
        """Make ``name`` the active version (atomic pointer update)."""
        v = self.get(name)
        ptr = self._pointer()
        history = [*ptr.get("history", []), name]
        write_atomic(
            self.folder / ACTIVE_FILE,
            json.dumps({"active": name, "history": history}, indent=1) + "\n",
        )
        log.info("model %s is now active", name)
        return v

    def rollback(self) -> ModelVersion:
        """Return to the version that was active before the current one."""
        ptr = self._pointer()
        history = list(ptr.get("history", []))
        if len(history) < 2:
            raise RegistryError(
                f"{self.folder}: nothing to roll back to (history {history or 'empty'}); "
                "use `promote VERSION` to activate a specific version"
            )
        history.pop()
        name = history[-1]
        self.get(name)
        write_atomic(
            self.folder / ACTIVE_FILE,
            json.dumps({"active": name, "history": history}, indent=1) + "\n",
        )
        log.info("rolled back to model %s", name)
        return self.get(name)

    def build_firmware(self, name: str, **options: Any) -> Path:
        """Write the firmware build folder of version ``name`` (Verilog, wrappers, manifest).

        ``options`` are ``l1forge.firmware.build.BuildOptions`` fields. The bitstream itself is
        built where the vendor tools are, from this folder.
        """
        from l1forge.firmware.build import BuildOptions, build

        v = self.get(name)
        out = v.path / FIRMWARE_DIR
        if out.exists():
            shutil.rmtree(out)
        manifest = build(v.load_net(), out, BuildOptions(**options))
        log.info("firmware folder for %s: %s (%s)", name, out, manifest.get("name"))
        return out


# ---- bootstrap: a training run as the first version ----


def import_training_run(
    registry: ModelRegistry, run_dir: str | Path, *, activate: bool = True, menu: Any = None
) -> ModelVersion:
    """Register the output of ``l1forge train ad`` (IR, last checkpoint, config) as a version."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    ckpts = sorted((run_dir / "checkpoints").glob("epoch*.weights.h5"))
    if not summary_path.is_file() or not ckpts:
        raise ConfigError(
            f"{run_dir}: not a finished `l1forge train ad` folder (summary.json and "
            "checkpoints/epoch*.weights.h5 are needed)"
        )
    summary = json.loads(summary_path.read_text())
    net = qnet.load(run_dir / "encoder.qnet.json")
    provenance = {
        "kind": "training_run",
        "model": summary.get("kind", "ad"),
        "net_config": summary["config"]["network"],
        "training": summary["config"]["training"],
        "source": str(run_dir.resolve()),
        "checkpoint": ckpts[-1].name,
        "metrics": {"score": summary.get("score")},
    }
    return registry.register(
        net,
        provenance,
        weights=ckpts[-1],
        menu=menu.to_json() if menu is not None else None,
        activate=activate,
    )
