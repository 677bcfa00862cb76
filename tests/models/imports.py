"""Helpers for the import tests: `l1forge import` of a Keras model saved as HDF5."""

from __future__ import annotations

import json
from pathlib import Path

from l1forge.cli import main
from l1forge.models.examples import JET_TAGGER_INPUT_FORMAT


def cli_import(tool: str, model, out: Path, capsys, *options: str) -> tuple[list[str], dict]:
    """Save `model` beside `out`, import it with ``l1forge import <tool>`` and the jet tagger's
    input format; returns the arguments without the format and the summary printed."""
    h5 = out.parent / "jet.h5"
    model.save(h5)
    args = ["import", tool, str(h5), "--out", str(out), *options]
    assert main([*args, "--input-format", JET_TAGGER_INPUT_FORMAT]) == 0
    return args, json.loads(capsys.readouterr().out)
