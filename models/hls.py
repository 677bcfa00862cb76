"""hls4ml conversion of an l1forge QKeras network: a complete Vitis HLS project and C-sim.

Converted with hls4ml's bit-exact precision propagation (Vitis backend, io_parallel). The
project is written in full (firmware, testbench, build script) so the vendor tools can
synthesize it; here only ``compile()`` (g++) and ``predict()`` run, never ``build()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import MissingToolError
from l1forge.models.fixed import Fixed

log = logging.getLogger(__name__)

DEFAULT_PART = "xcvu9p-flga2104-2L-e"  # the Virtex UltraScale+ of the CMS Global Trigger boards
DEFAULT_CLOCK_NS = 25.0 / 6.0  # 240 MHz: a 50 ns slot is 12 clock cycles


@dataclass(frozen=True)
class HlsTensor:
    """One hls4ml node's result type."""

    node: str
    fixed: Fixed
    rounding: str
    overflow: str


def convert(
    model: Any,
    out_dir: str | Path,
    project_name: str = "l1forge_net",
    part: str = DEFAULT_PART,
    clock_period_ns: float = DEFAULT_CLOCK_NS,
) -> Any:
    """Convert ``model`` with bit-exact precision propagation and write the HLS project."""
    import hls4ml

    cfg = hls4ml.utils.config_from_keras_model(model, granularity="name", backend="Vitis")
    hm = hls4ml.converters.convert_from_keras_model(
        model,
        hls_config=cfg,
        output_dir=str(out_dir),
        project_name=project_name,
        backend="Vitis",
        io_type="io_parallel",
        part=part,
        clock_period=clock_period_ns,
        bit_exact=True,
    )
    hm.write()
    log.info("hls4ml project written to %s", out_dir)
    return hm


def compile_csim(hm: Any) -> Any:
    """Build the C simulation library (g++ only); returns the model, ready for predict()."""
    import shutil

    if shutil.which("g++") is None:
        raise MissingToolError("hls4ml's C simulation needs g++: apt-get install g++")
    hm.compile()
    return hm


def predict(hm: Any, x_hw: np.ndarray) -> np.ndarray:
    """C-simulation outputs (float64, exact for these widths) for hardware integers."""
    x = np.ascontiguousarray(np.asarray(x_hw, dtype=np.float64))
    y = np.asarray(hm.predict(x), dtype=np.float64)
    return y.reshape(len(x), -1)


def result_types(hm: Any) -> list[HlsTensor]:
    """Every node's result type in graph order (input first)."""
    out = []
    for name, node in hm.graph.items():
        p = node.get_output_variable().type.precision
        rnd = str(p.rounding_mode).split(".")[-1].replace("AP_", "")
        sat = str(p.saturation_mode).split(".")[-1].replace("AP_", "")
        fixed = Fixed(bool(p.signed), int(p.width), int(p.integer))
        out.append(HlsTensor(name, fixed, rnd, sat))
    return out
