"""Dataclasses as JSON, and the one result type of every "compare with expected" check.

``record_json`` serves run configurations, calibrations and register maps; ``Comparison`` is
the base of the stored-pattern check (``firmware.patterns``) and of the emulator's file check
(``models.emulate_files``). Imports nothing of l1forge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def record_json(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields as a JSON-ready dict; tuples (nested too) become lists."""
    return {k: _plain(v) for k, v in asdict(obj).items()}


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Events compared with what was expected: how many differ and the first few, described."""

    n_differing: int
    first_differences: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.n_differing == 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **record_json(self)}
