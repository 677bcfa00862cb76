"""The catalogue of Pythia 8 processes, read from YAML and validated once."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from l1forge.errors import ConfigError

SIGNALS_2021 = ("ato4l", "lq_btau", "h0_tautau", "hch_taunu")


@dataclass(frozen=True)
class Process:
    """One process: Pythia settings, and optional pT-hat bins (GeV; hi < 0 means open)."""

    name: str
    kind: str
    description: str
    settings: tuple[str, ...]
    pthat_bins: tuple[tuple[float, float], ...] = ()


def _parse(name: str, d: Any, source: str) -> Process:
    where = f"{source}: {name}"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: must be a mapping")
    unknown = set(d) - {"kind", "description", "settings", "pthat_bins"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    if d.get("kind") not in ("background", "signal"):
        raise ConfigError(f"{where}.kind: must be 'background' or 'signal'")
    settings = d.get("settings")
    if not isinstance(settings, list) or not all(isinstance(s, str) for s in settings):
        raise ConfigError(f"{where}.settings: must be a list of Pythia setting strings")
    bins = []
    for i, b in enumerate(d.get("pthat_bins") or []):
        if not (isinstance(b, list) and len(b) == 2 and b[0] >= 0 and (b[1] < 0 or b[1] > b[0])):
            raise ConfigError(f"{where}.pthat_bins[{i}]: must be [lo, hi] with hi > lo (or -1)")
        bins.append((float(b[0]), float(b[1])))
    return Process(name, d["kind"], str(d.get("description", "")), tuple(settings), tuple(bins))


def load_processes(path: str | Path | None = None) -> dict[str, Process]:
    """The processes in ``path``, or the built-in catalogue."""
    if path is None:
        text = resources.files("l1forge.sim").joinpath("processes.yaml").read_text()
        source = "built-in processes.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read process catalogue {path}: {exc}") from exc
        source = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{source}: must map process names to definitions")
    return {name: _parse(name, d, source) for name, d in doc.items()}


def get_process(name: str, catalogue: dict[str, Process] | None = None) -> Process:
    procs = catalogue if catalogue is not None else load_processes()
    if name not in procs:
        raise ConfigError(f"unknown process {name!r}; known: {', '.join(sorted(procs))}")
    return procs[name]
