"""`firmware build` writes the hls4ml project of any IR; the jet tagger's verification chain.

QKeras float64 predict == emulator == hls4ml C-sim (of the project written from the IR) ==
RTL on Icarus and Verilator, then `firmware report`; `firmware hls-build` without Vitis.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.cli import main
from l1forge.firmware.sim import build_sim, read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.emulator import Emulator
from l1forge.models.qkeras_import import reference_model, reference_predict
from l1forge.models.qnet import save

from .benches import build_ir_with_cli, trigger_env, write_vectors

LATENCY = 2


@pytest.fixture(scope="session")
def jet_firmware(jet_tagger_ir, tmp_path_factory):
    """The jet tagger IR built by the CLI, hls4ml project and its C-sim check included."""
    return build_ir_with_cli(jet_tagger_ir, tmp_path_factory.mktemp("jet_fw"), "jet", LATENCY)


def test_build_writes_the_hls4ml_project_and_checks_its_csim(jet_firmware, jet_tagger_ir):
    manifest = json.loads((jet_firmware / "manifest.json").read_text())
    h = manifest["hls"]
    assert h["written"] and h["path"] == "hls" and h["types_equal_ir"]
    assert h["backend"] == "Vitis" and h["io_type"] == "io_parallel"
    assert h["csim_vectors_checked"] >= 1500
    assert h["clock_period_ns"] == 25.0  # the build's clock (40 MHz)
    assert h["nodes_type_checked"] == len(jet_tagger_ir.layers) + 1
    prj = jet_firmware / "hls"
    assert (prj / "build_prj.tcl").is_file()
    assert (prj / "firmware" / f"{h['project_name']}.cpp").is_file()


def test_no_hls_says_so(tmp_path, jet_tagger_ir, capsys):
    ir = save(jet_tagger_ir, tmp_path / "jet.qnet.json")
    args = ["firmware", "build", str(ir), "--out", str(tmp_path / "fw"), "--no-hls", "--no-lint"]
    assert main([*args, "--check-vectors", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["hls"] == {"written": False, "reason": "--no-hls"}


def test_hls_build_without_vitis_exits_2_naming_the_tool(
    jet_firmware, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vitis-run, no vitis_hls
    assert main(["firmware", "hls-build", str(jet_firmware)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "vitis-run" in err and "vitis_hls" in err
    assert main(["firmware", "hls-build", str(tmp_path)]) == 2  # not a project
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no hls4ml project" in err


@pytest.mark.rtl
# Verilator compiles the 16-64-32-32-5 core for over 15 minutes on this shared machine, Icarus
# about 2 minutes: both run in `make validate`. `make test` checks the same network's QKeras,
# emulator and C simulation in tests/models/test_hls4ml_import.py.
@pytest.mark.slow
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_jet_tagger_qkeras_emulator_csim_rtl(
    simulator, jet_firmware, jet_tagger_ir, jet_tagger_models, tmp_path
):
    net = jet_tagger_ir
    x = bench_vectors(net, 400, seed=17)
    y = Emulator(net).run_float(x)
    model = jet_tagger_models["sequential"]
    assert_array_equal(
        reference_predict(reference_model(model), net.input_specs[0].fixed.to_float(x)), y
    )
    vec = write_vectors(net, x, tmp_path / "v.npz")
    sim = build_sim(jet_firmware, simulator, "trigger", tmp_path / "build")
    env = trigger_env(vec, tmp_path / "stats.json", latency=LATENCY, seed=1)
    run_bench(sim, "l1forge.firmware.bench_trigger", env, tmp_path)
    stats = read_stats(tmp_path)
    assert stats["compared"] == len(x) and stats["mismatches"] == 0
    assert len(np.unique(y)) > 20


@pytest.mark.rtl
@pytest.mark.slow
def test_jet_tagger_report(jet_firmware):
    assert main(["firmware", "report", str(jet_firmware)]) == 0
    report = json.loads((jet_firmware / "report.json").read_text())
    assert report["resources"]["lut"] > 0 and report["initiation_interval"] == 1
