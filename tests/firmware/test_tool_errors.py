"""A failing external tool is a one-line error naming the tool and its log, exit code 2."""

from __future__ import annotations

import pytest

from l1forge.cli import main
from l1forge.firmware import wrappers
from l1forge.firmware.build import ToolFailedError
from l1forge.firmware.sim import build_sim
from l1forge.models.build import random_mlp
from l1forge.models.qnet import save

BROKEN = "module broken (input wire a;\nendmodule\n"


@pytest.fixture
def tiny_fw(tmp_path):
    """A firmware folder of a tiny network, written without lint (fast)."""
    ir = save(random_mlp(6, (4,), 2, seed=3, name="tiny"), tmp_path / "tiny.json")
    out = tmp_path / "fw"
    args = ["firmware", "build", str(ir), "--out", str(out), "--latency-cycles", "1"]
    assert main([*args, "--no-hls", "--no-lint", "--check-vectors", "200"]) == 0
    return ir, out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if ln.startswith("l1forge: error:")]
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "CalledProcessError" not in err[0]
    return err[0]


@pytest.mark.rtl
def test_report_yosys_failure_names_tool_and_log(tiny_fw, capsys):
    _, out = tiny_fw
    (out / "rtl" / "tiny_core.v").write_text(BROKEN)
    capsys.readouterr()
    assert main(["firmware", "report", str(out)]) == 2
    line = _one_line_error(capsys)
    assert "yosys failed on tiny_trigger" in line
    log = out / "logs" / "yosys_tiny_trigger.log"
    assert f"(log: {log})" in line and log.is_file()
    assert "ERROR" in line  # yosys's own first error line


def test_report_without_yosys_on_path(tiny_fw, capsys, monkeypatch, tmp_path):
    _, out = tiny_fw
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    capsys.readouterr()
    assert main(["firmware", "report", str(out)]) == 2
    assert "yosys not found" in _one_line_error(capsys)


@pytest.mark.rtl
def test_build_lint_failure_names_tool_and_log(tiny_fw, capsys, monkeypatch):
    ir, out = tiny_fw
    monkeypatch.setattr(wrappers, "axis_wrapper", lambda *a: BROKEN.replace("broken", "tiny_axis"))
    capsys.readouterr()
    args = ["firmware", "build", str(ir), "--out", str(out), "--latency-cycles", "1"]
    assert main([*args, "--no-hls", "--check-vectors", "200"]) == 2
    line = _one_line_error(capsys)
    log = out / "logs" / "verilator_lint_tiny_trigger.log"
    assert line.startswith("l1forge: error: verilator --lint-only failed on tiny_trigger")
    assert f"(log: {log})" in line and log.is_file()


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_simulator_build_failure_names_tool_and_log(simulator, tiny_fw, tmp_path):
    _, out = tiny_fw
    (out / "rtl" / "tiny_core.v").write_text(BROKEN)
    with pytest.raises(ToolFailedError, match=rf"^{simulator} failed on the tiny_trigger build"):
        build_sim(out, simulator, "trigger", tmp_path / "b" / "build")
    assert (tmp_path / "b" / f"{simulator}_trigger_build.log").is_file()
