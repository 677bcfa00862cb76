"""Building and running the generated firmware under cocotb (Icarus or Verilator), no Makefiles.

``build_sim`` compiles a firmware folder's sources once for one simulator and top module;
``run_bench`` runs a cocotb bench module against that build and reads the xUnit results file
itself, so a failing bench raises ``BenchFailed`` the same way inside and outside pytest;
``run_benches`` runs several on one build at once, one simulator process each (a long vector
set split across cores: Icarus evaluates the generated netlists on one core only).
Verilator builds make only the top module's signals visible to VPI (cocotb's runner asks for
``--public-flat-rw`` on every signal, which for a full-size encoder yields a 10 MB model header
that takes the C++ compiler many minutes); the benches touch nothing below the top ports.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from l1forge.errors import L1ForgeError, MissingToolError
from l1forge.firmware import wrappers
from l1forge.firmware.build import load_manifest, tool_failed

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
    firmware_dir: str | Path,
    simulator: str,
    top: Literal["trigger", "axis"] = "trigger",
    build_dir: str | Path = "",
) -> SimBuild:
    """Compile the firmware for ``simulator`` with ``top`` in {"trigger", "axis"}."""
    from cocotb_tools.runner import get_runner

    _prepare(simulator)
    fw = Path(firmware_dir).resolve()
    manifest = load_manifest(fw)
    module = manifest["modules"][top]
    bdir = Path(build_dir or fw / "sim" / f"{simulator}_{top}").resolve()
    runner = get_runner(simulator)
    sources = [fw / s for s in manifest["sources"]]
    args: list[str] = []
    if simulator == "verilator":
        bdir.mkdir(parents=True, exist_ok=True)
        vlt = bdir / "l1forge_public.vlt"
        vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{module}" -var "*"\n')
        sources.append(vlt)
        args = ["-Wno-fatal", "-O3", "--x-assign", "fast", "--no-public-flat-rw"]
    log_file = bdir.parent / f"{simulator}_{top}_build.log"
    try:
        runner.build(
            sources=sources,
            hdl_toplevel=module,
            build_dir=bdir,
            build_args=args,
            timescale=("1ns", "1ps"),
            log_file=log_file,
        )
    except SystemExit as exc:  # the runner exits when a tool is missing
        raise MissingToolError(f"{simulator} build failed: {exc}") from exc
    except RuntimeError as exc:  # the runner's "Command failed with return code"
        raise tool_failed(simulator, f"the {module} build", log_file) from exc
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


def run_benches(
    sim: SimBuild,
    test_module: str,
    jobs: Sequence[tuple[dict[str, str], str | Path]],
    testcase: str | None = None,
    check: bool = True,
) -> list[BenchResult]:
    """Run ``test_module`` once per (env, test_dir) job, all at once, one simulator each."""
    fresh = dataclasses.replace(sim, runner=None)  # a runner object per thread

    def one(job: tuple[dict[str, str], str | Path]) -> BenchResult:
        return run_bench(fresh, test_module, job[0], job[1], testcase, check)

    with ThreadPoolExecutor(max(1, len(jobs)), thread_name_prefix="l1f-bench") as pool:
        return list(pool.map(one, jobs))


def read_stats(test_dir: str | Path) -> dict:
    """Statistics a bench wrote to ``stats.json`` in its test folder."""
    return json.loads((Path(test_dir) / "stats.json").read_text())
