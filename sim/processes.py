"""The catalogue of Pythia 8 processes, read from YAML and validated once."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict, model_validator

from l1forge.config import KeyedError, Real, Section, one_of, parse_yaml, validate
from l1forge.errors import ConfigError

SIGNALS_2021 = ("ato4l", "lq_btau", "h0_tautau", "hch_taunu")


def _none_is_empty(raw: Any) -> Any:
    return () if raw is None else raw


@dataclass(frozen=True)
class Process(Section):
    """One process: Pythia settings, and optional pT-hat bins (GeV; hi < 0 means open)."""

    name: str
    kind: Annotated[str, one_of(("background", "signal"))]
    description: Annotated[str, Strict()]
    settings: tuple[Annotated[str, Strict()], ...]  # Pythia setting strings
    pthat_bins: Annotated[tuple[tuple[Real, Real], ...], BeforeValidator(_none_is_empty)] = ()

    @model_validator(mode="after")
    def _bins_ordered(self) -> Process:
        for i, (lo, hi) in enumerate(self.pthat_bins):
            if lo < 0 or not (hi < 0 or hi > lo):
                raise KeyedError(f"pthat_bins[{i}]", "must be [lo, hi] with hi > lo (or -1)")
        return self


def _parse(name: str, d: Any, source: str) -> Process:
    if not isinstance(d, dict) or "name" in d:
        raise ConfigError(f"{source}: {name}: must be a mapping of kind, settings, ...")
    try:
        return validate(Process, {"name": name, "description": "", **d}, root=name)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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
    doc = parse_yaml(text, source)
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{source}: must map process names to definitions")
    return {name: _parse(name, d, source) for name, d in doc.items()}


def get_process(name: str, catalogue: dict[str, Process] | None = None) -> Process:
    procs = catalogue if catalogue is not None else load_processes()
    if name not in procs:
        raise ConfigError(f"unknown process {name!r}; known: {', '.join(sorted(procs))}")
    return procs[name]
