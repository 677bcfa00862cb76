"""LUT model of the co-design network, calibrated on yosys synthesis of its Verilog.

LUTs ≈ k_mul · EBOPs + k_add · ACC. EBOPs count, for every multiplication by a constant
weight, the input width times the weight's significant bits (highest to lowest set bit), as
HGQ's effective bit operations do; ACC counts, for every non-zero weight, the width of the
accumulator it is added into (the adder trees). The calibration builds each network's Verilog
with the firmware part, synthesizes it with yosys ``synth_xilinx`` and fits k_mul, k_add by
least squares (no intercept: an empty network has no logic); its error is the leave-one-out
relative error of the LUT prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l1forge.models.qnet import QNet

log = logging.getLogger(__name__)


def significant_bits(w: np.ndarray) -> np.ndarray:
    """Bits between the highest and the lowest set bit of |w| (0 for w == 0)."""
    a = np.abs(np.asarray(w, dtype=np.int64))
    out = np.zeros(a.shape, dtype=np.int64)
    nz = a > 0
    low = np.zeros_like(a)
    rest = a.copy()
    while np.any(nz & (rest % 2 == 0)):
        even = nz & (rest % 2 == 0)
        rest[even] //= 2
        low[even] += 1
    high = np.zeros_like(a)
    high[nz] = np.floor(np.log2(a[nz])).astype(np.int64)
    out[nz] = high[nz] - low[nz] + 1
    return out


def ir_features(net: QNet) -> tuple[float, float]:
    """(EBOPs, ACC) of the dense layers of an exported network."""
    ebops = acc = 0
    for lay in net.layers:
        if lay.op != "dense":
            continue
        w = lay.arrays["weight"]
        ebops += net.tensors[lay.input].fixed.width * int(significant_bits(w).sum())
        acc += net.tensors[lay.output].fixed.width * int(np.count_nonzero(w))
    return float(ebops), float(acc)


@dataclass(frozen=True)
class LutModel:
    """LUTs ≈ k_mul · EBOPs + k_add · ACC, with its points and leave-one-out error."""

    k_mul: float
    k_add: float
    rel_error_loo: float
    points: tuple[tuple[float, float, int], ...]

    def predict(self, net: QNet) -> float:
        ebops, acc = ir_features(net)
        return self.k_mul * ebops + self.k_add * acc


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x, y, rcond=None)[0]


def calibrate(nets: list[QNet], work_dir: str | Path) -> LutModel:
    """Build and synthesize each network (minutes), then fit and cross-validate the model."""
    from l1forge.firmware.build import BuildOptions, build
    from l1forge.firmware.report import report

    work = Path(work_dir)
    points = []
    for i, net in enumerate(nets):
        fw = work / f"net{i}"
        build(net, fw, BuildOptions(hls=False, lint=False, n_check=200))
        luts = int(report(fw)["resources"]["lut"])
        points.append((*ir_features(net), luts))
        log.info("net %d: EBOPs %.0f, ACC %.0f, LUTs %d", i, *points[-1])
    x = np.array([p[:2] for p in points], dtype=np.float64)
    y = np.array([p[2] for p in points], dtype=np.float64)
    errs = []
    for i in range(len(points)):
        keep = np.arange(len(points)) != i
        errs.append(abs(x[i] @ _fit(x[keep], y[keep]) - y[i]) / y[i])
    k_mul, k_add = _fit(x, y)
    return LutModel(float(k_mul), float(k_add), float(np.mean(errs)), tuple(points))


# Calibrated by `benchmarks/codesign.py --lut-nets 8` (yosys 0.23 synth_xilinx -family xcup
# -nodsp on the firmware part's Verilog, 8 networks of 537-6488 LUTs): leave-one-out mean
# relative error 5.9 %. Re-run the benchmark to re-calibrate after firmware changes.
DEFAULT_LUT_MODEL = LutModel(k_mul=0.4290, k_add=0.3144, rel_error_loo=0.0587, points=())
