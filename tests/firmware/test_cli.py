"""`l1forge firmware build` and `report` end to end on a tiny network (tools run for real)."""

from __future__ import annotations

import json

import pytest

from l1forge.cli import main
from l1forge.models.build import random_mlp
from l1forge.models.qnet import save


@pytest.mark.rtl
def test_build_and_report(tmp_path, capsys):
    ir = save(random_mlp(6, (4,), 2, score=True, seed=3, name="tiny"), tmp_path / "tiny.json")
    out = tmp_path / "fw"
    args = ["firmware", "build", str(ir), "--out", str(out), "--latency-cycles", "1"]
    assert main([*args, "--no-hls", "--check-vectors", "2000"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["latency_cycles"] == 1 and summary["latency_ns"] == 25.0
    manifest = json.loads((out / "manifest.json").read_text())
    for src in manifest["sources"]:
        assert (out / src).is_file()
    assert (out / "packing.json").is_file()
    assert (out / "logs" / "verilator_lint_tiny_axis.log").is_file()

    assert main(["firmware", "report", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    res = report["resources"]
    assert res["lut"] > 0 and res["ff"] > 0 and res["dsp"] == 0  # products forced into LUTs
    assert report["initiation_interval"] == 1
    assert report["target"]["latency_met"] and report["target"]["dsp_met"]
    assert (out / report["yosys"]["log"]).is_file()


def test_build_refuses_a_missing_ir(tmp_path, capsys):
    assert main(["firmware", "build", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.rtl
def test_build_and_report_with_registers(tmp_path, capsys):
    """Thresholds-only bank (the net has no scale op), one-cycle latency: build, lint, report."""
    ir = save(random_mlp(6, (4,), 2, score=True, seed=3, name="tiny"), tmp_path / "tiny.json")
    out = tmp_path / "fw"
    args = ["firmware", "build", str(ir), "--out", str(out), "--latency-cycles", "1"]
    assert main([*args, "--no-hls", "--check-vectors", "500", "--registers", "--seeds", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["latency_cycles"] == 1
    assert summary["registers"]["enabled"] and summary["registers"]["scaling_layers"] == []
    packing = json.loads((out / "packing.json").read_text())
    names = [r["name"] for r in packing["registers"]["registers"]]
    assert "THRESHOLD" in names and "OFFSET" not in names
    assert packing["output"]["tensors"][-1] == {
        "tensor": "seed_bits",
        "size": 3,
        "width": 1,
        "signed": False,
        "frac_bits": 0,
        "offset": packing["output"]["bits"] - 3,
    }
    assert main(["firmware", "report", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    bank = report["register_bank"]
    assert bank["top"] == "tiny_regbank" and bank["resources"]["ff"] > 0
    assert bank["network_resources"]["lut"] == report["resources"]["lut"] - bank["resources"]["lut"]
