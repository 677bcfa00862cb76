"""Building and running the generated firmware under cocotb (Icarus or Verilator), no Makefiles.

``build_sim`` compiles a firmware folder's sources once for one simulator and top module;
``run_bench`` runs a cocotb bench module against that build and reads the xUnit results file
itself, so a failing bench raises ``BenchFailed`` the same way inside and outside pytest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l1forge.errors import L1ForgeError, MissingToolError
from l1forge.firmware import wrappers
from l1forge.firmware.build import load_manifest

SIMULATORS = ("icarus", "verilator")


class BenchFailed(L1ForgeError):
    """A cocotb bench reported failing tests (or the simulator crashed)."""


@dataclass(frozen=True)
class SimBuild:
    simulator: str
    firmware_dir: Path
    top: str
    build_dir: Path
    runner: Any = field(default=None, compare=False, repr=False)  # the runner that built it


@dataclass(frozen=True)
class BenchResult:
    tests: int
    failed: int
    results_xml: Path


def _prepare(simulator: str) -> None:
    if simulator not in SIMULATORS:
        raise L1ForgeError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    if simulator == "verilator":
        env = wrappers.verilator_env()
        for key in ("VERILATOR_ROOT", "PATH", "MAKEFLAGS"):
            if key in env:
                os.environ[key] = env[key]


def build_sim(
    firmware_dir: str | Path, simulator: str, top: str = "trigger", build_dir: str | Path = ""
) -> SimBuild:
    """Compile the firmware for ``simulator`` with ``top`` in {"trigger", "axis"}."""
    from cocotb_tools.runner import get_runner

    _prepare(simulator)
    fw = Path(firmware_dir).resolve()
    manifest = load_manifest(fw)
    module = manifest["modules"][top]
    bdir = Path(build_dir or fw / "sim" / f"{simulator}_{top}").resolve()
    runner = get_runner(simulator)
    args = ["-Wno-fatal", "-O3", "--x-assign", "fast"] if simulator == "verilator" else []
    try:
        runner.build(
            sources=[fw / s for s in manifest["sources"]],
            hdl_toplevel=module,
            build_dir=bdir,
            build_args=args,
            timescale=("1ns", "1ps"),
            log_file=bdir.parent / f"{simulator}_{top}_build.log",
        )
    except SystemExit as exc:  # the runner exits when a tool is missing
        raise MissingToolError(f"{simulator} build failed: {exc}") from exc
    return SimBuild(simulator, fw, module, bdir, runner)


def run_bench(
    sim: SimBuild,
    test_module: str,
    env: dict[str, str],
    test_dir: str | Path,
    testcase: str | None = None,
    check: bool = True,
) -> BenchResult:
    """Run cocotb ``test_module`` on a build; with ``check`` raise BenchFailed on any failure."""
    from cocotb_tools.runner import get_results, get_runner

    _prepare(sim.simulator)
    tdir = Path(test_dir).resolve()
    tdir.mkdir(parents=True, exist_ok=True)
    xml = tdir / "results.xml"
    runner = sim.runner or get_runner(sim.simulator)
    exit_code = 0
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=sim.top,
            hdl_toplevel_lang="verilog",
            testcase=testcase,
            build_dir=sim.build_dir,
            test_dir=tdir,
            results_xml=str(xml),
            extra_env=env,
            log_file=tdir / "sim.log",
        )
    except SystemExit as exc:  # raised by the runner under pytest when a test fails
        exit_code = int(exc.code or 1)
    if not xml.is_file():
        raise BenchFailed(f"{sim.simulator} produced no results (exit {exit_code}); see {tdir}")
    tests, failed = get_results(xml)
    result = BenchResult(tests, failed, xml)
    if check and (failed or tests == 0):
        raise BenchFailed(f"{failed} of {tests} cocotb tests failed on {sim.simulator}; see {xml}")
    return result


def read_stats(test_dir: str | Path) -> dict:
    """Statistics a bench wrote to ``stats.json`` in its test folder."""
    return json.loads((Path(test_dir) / "stats.json").read_text())
