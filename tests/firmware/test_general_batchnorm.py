"""An imported QKeras model with a general (non-power-of-two) batch norm, through firmware build.

QKeras float64 predict (with the batch norm's rounded constants) == emulator == hls4ml C-sim of
the project written from the IR == RTL on Icarus and Verilator, the affine op included.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.firmware.sim import read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.emulator import Emulator
from l1forge.models.qkeras_import import reference_model, reference_predict

from .benches import build_ir_with_cli, trigger_env, write_vectors

LATENCY = 2


@pytest.fixture(scope="module")
def bn_firmware(general_bn_ir, tmp_path_factory):
    """The general batch-norm IR built by the CLI, hls4ml project and its C-sim check included."""
    return build_ir_with_cli(general_bn_ir, tmp_path_factory.mktemp("bn_fw"), "bn", LATENCY)


def test_build_checks_the_affine_csim(bn_firmware, general_bn_ir):
    h = json.loads((bn_firmware / "manifest.json").read_text())["hls"]
    assert h["written"] and h["types_equal_ir"] and h["csim_vectors_checked"] >= 1500
    assert h["nodes_type_checked"] == len(general_bn_ir.layers) + 1
    assert "affine" in [lay.op for lay in general_bn_ir.layers]


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_general_batchnorm_qkeras_emulator_rtl(
    simulator, bn_firmware, general_bn_ir, general_bn_model, sim_build, tmp_path
):
    net = general_bn_ir
    x = bench_vectors(net, 2000, seed=17)
    y = Emulator(net).run_float(x)
    ref = reference_predict(reference_model(general_bn_model), net.input_specs[0].fixed.to_float(x))
    assert_array_equal(ref, y)
    vec = write_vectors(net, x, tmp_path / "v.npz")
    env = trigger_env(vec, tmp_path / "stats.json", latency=LATENCY, seed=1)
    run_bench(sim_build(bn_firmware, simulator), "l1forge.firmware.bench_trigger", env, tmp_path)
    stats = read_stats(tmp_path)
    assert stats["compared"] == len(x) and stats["mismatches"] == 0
    assert len(np.unique(y)) > 20
