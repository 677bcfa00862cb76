"""One firmware build folder from one qnet IR: Verilog, wrappers, packing spec, manifest.

Layout of ``DIR``: ``rtl/`` (every Verilog source, compile order in the manifest),
``packing.json``, ``manifest.json``, ``logs/`` (tool logs), ``alkaid/`` (alkaid's own project:
model dumps, constraints, its C++ emulator sources) and ``hls/`` when an hls4ml project was
written.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from l1forge import __version__
from l1forge.errors import ConfigError, L1ForgeError
from l1forge.firmware import packing, regbank, registers, verilog, wrappers
from l1forge.models.hls import DEFAULT_PART, HlsProject, write_hls_project
from l1forge.models.qnet import QNet

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class ToolFailedError(L1ForgeError):
    """An external tool (yosys, Verilator, Icarus) failed; the message names it and its log."""


ERROR_MARKERS = ("%Error", "%Warning", "error", "ERROR")


def first_error_line(log_path: Path, markers: tuple[str, ...] = ERROR_MARKERS) -> str:
    """The first line of a tool log that reports an error (or its last non-empty line)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    hits = [ln for ln in lines if any(m in ln for m in markers)]
    text = (hits or lines or [""])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def tool_failed(tool: str, what: str, log_path: Path, detail: str = "") -> ToolFailedError:
    """A one-line error: which tool failed on what, its first error line, and where its log is."""
    first = detail or first_error_line(log_path)
    return ToolFailedError(f"{tool} failed on {what}: {first or 'no output'} (log: {log_path})")


def _check_hdl(out: Path, sources: list[str], name: str) -> None:
    """Verilator -Wall lint and Icarus -g2005 compile of both tops, logs in ``logs/``."""
    paths = [out / s for s in sources]
    for top in (f"{name}_trigger", f"{name}_axis"):
        for tool, check, log_path in (
            ("verilator --lint-only", wrappers.lint_verilator, f"verilator_lint_{top}.log"),
            ("iverilog", wrappers.compile_icarus, f"iverilog_{top}.log"),
        ):
            log_file = out / "logs" / log_path
            try:
                check(paths, top, log_file)
            except wrappers.HdlCheckError as exc:
                raise tool_failed(tool, top, log_file) from exc
            except subprocess.TimeoutExpired as exc:
                raise tool_failed(
                    tool, top, log_file, f"timed out after {exc.timeout:g} s"
                ) from exc


class FirmwareModules(TypedDict):
    """The Verilog top modules of a build."""

    core: str  # the network with the packed IR buses
    trigger: str  # valid/ready trigger wrapper
    axis: str  # AXI-stream wrapper
    regbank: NotRequired[str]  # the register bank (with ``BuildOptions.registers``)


class AlkaidReport(TypedDict):
    stage_delay_ns: list[float]  # estimated combinational delay per pipeline stage
    cost: float  # LUT-equivalent estimate
    reg_bits: int
    interpreter_vectors_checked: int


class LintReport(TypedDict):
    verilator_wall: bool
    icarus_g2005: bool


class HlsBuilt(HlsProject):
    path: str  # the project folder, relative to the build folder


class HlsSkipped(TypedDict):
    written: Literal[False]
    reason: str


class RegisterInfo(TypedDict):
    """The run-time register bank of a build (``BuildOptions.registers``)."""

    enabled: bool
    seeds: int  # threshold registers, seed bits on the output bus
    scaling_layers: list[str]  # IR layers computed by the wrapper's scaling stage
    core_latency_cycles: int
    map: str | None  # where the register map is


class FirmwareManifest(TypedDict):
    """``manifest.json`` of a firmware build folder (what ``build`` returns)."""

    format: str  # "l1forge-firmware"
    version: int
    l1forge: str
    network: str
    name: str
    modules: FirmwareModules
    sources: list[str]  # relative to the build folder, in compile order
    latency_cycles: int
    clock_mhz: float
    latency_ns: float
    initiation_interval: int
    axis_initiation_interval: int
    axis_fifo_depth: int
    packing: str  # the packing spec's file name
    alkaid: AlkaidReport
    registers: RegisterInfo
    lint: LintReport
    hls: HlsBuilt | HlsSkipped
    provenance: dict[str, Any]  # the IR's


@dataclass(frozen=True)
class BuildOptions:
    latency_cycles: int | None = 2
    clock_mhz: float = 40.0
    beat_bits: int = packing.DEFAULT_BEAT_BITS
    hls: bool = True
    lint: bool = True
    n_check: int = 20000
    hls_csim_vectors: int = 2000
    part: str = DEFAULT_PART
    registers: bool = False  # AXI4-Lite register bank: seed thresholds and input scaling
    seeds: int = 8  # threshold registers (seed bits on the output bus) with ``registers``


def build(net: QNet, out_dir: str | Path, opts: BuildOptions = BuildOptions()) -> FirmwareManifest:
    """Write the firmware folder for ``net`` and return its manifest."""
    out = Path(out_dir).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    name = verilog._identifier(net.name)
    scaling, core_net = registers.split_scaling(net) if opts.registers else (None, net)
    stage = int(scaling is not None)  # the run-time scaling stage is one pipeline stage
    core_cycles = opts.latency_cycles
    if core_cycles is not None and stage:
        if core_cycles < 2:
            raise ConfigError(
                "--latency-cycles must be at least 2 with run-time input scaling "
                "(one cycle for the scaling stage, one or more for the core)"
            )
        core_cycles -= stage
    rtl = verilog.write_verilog(
        core_net, out, core_cycles, opts.clock_mhz, opts.beat_bits, opts.n_check, name
    )
    latency = rtl.latency_cycles + stage
    spec = packing.packing_from_qnet(net, opts.beat_bits)
    extra: list[str] = []
    axil = ("", "")
    if opts.registers:
        rmap = registers.register_map(net, opts.seeds, latency, scaling)
        spec = packing.with_seed_bits(spec, rmap.n_seeds, rmap.to_json())
        core_spec = packing.packing_from_qnet(core_net, opts.beat_bits)
        (out / "rtl" / f"{name}_regbank.v").write_text(
            regbank.regbank_verilog(name, rmap, scaling, spec.input.bits)
        )
        trigger = regbank.trigger_wrapper_regs(
            name, rmap, spec.input.bits, core_spec.input.bits, core_spec.output.bits, latency
        )
        extra = [f"rtl/{name}_regbank.v"]
        axil = regbank.axis_passthrough()
    else:
        trigger = wrappers.trigger_wrapper(name, spec, latency)
    spec.save(out / "packing.json")
    (out / "rtl" / f"{name}_trigger.v").write_text(trigger)
    (out / "rtl" / f"{name}_axis.v").write_text(wrappers.axis_wrapper(name, spec, latency, axil))
    sources = [*rtl.sources, *extra, f"rtl/{name}_trigger.v", f"rtl/{name}_axis.v"]
    if opts.lint:
        _check_hdl(out, sources, name)
        log.info("Verilator -Wall lint and Icarus -g2005 compile clean")
    modules: FirmwareModules = {
        "core": rtl.top,
        "trigger": f"{name}_trigger",
        "axis": f"{name}_axis",
    }
    if opts.registers:
        modules["regbank"] = f"{name}_regbank"
    manifest: FirmwareManifest = {
        "format": "l1forge-firmware",
        "version": 1,
        "l1forge": __version__,
        "network": net.name,
        "name": name,
        "modules": modules,
        "sources": sources,
        "latency_cycles": latency,
        "clock_mhz": rtl.clock_mhz,
        "latency_ns": latency * 1000.0 / rtl.clock_mhz,
        "initiation_interval": 1,
        "axis_initiation_interval": max(spec.beats_per_input, spec.beats_per_output),
        "axis_fifo_depth": wrappers.fifo_depth(latency),
        "packing": "packing.json",
        "alkaid": {
            "stage_delay_ns": list(rtl.stage_delay_ns),
            "cost": rtl.alkaid_cost,
            "reg_bits": rtl.reg_bits,
            "interpreter_vectors_checked": rtl.vectors_checked,
        },
        "registers": {
            "enabled": opts.registers,
            "seeds": opts.seeds if opts.registers else 0,
            "scaling_layers": list(scaling.layer_names) if scaling else [],
            "core_latency_cycles": rtl.latency_cycles,
            "map": "packing.json#registers" if opts.registers else None,
        },
        "lint": {"verilator_wall": opts.lint, "icarus_g2005": opts.lint},
        "hls": _write_hls(net, out, opts, rtl.clock_mhz)
        if opts.hls
        else {"written": False, "reason": "--no-hls"},
        "provenance": net.provenance,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_hls(net: QNet, out: Path, opts: BuildOptions, clock_mhz: float) -> HlsBuilt:
    """The hls4ml project of ``net`` in ``hls/``, its C-sim compared with the emulator."""
    from l1forge.models.vectors import bitexact_vectors

    x = bitexact_vectors(net, opts.hls_csim_vectors, seed=3) if opts.hls_csim_vectors else None
    entry = write_hls_project(
        net, out / "hls", part=opts.part, clock_period_ns=1000.0 / clock_mhz, csim_vectors=x
    )
    return {**entry, "path": "hls"}


def load_manifest(out_dir: str | Path) -> FirmwareManifest:
    """The manifest of a firmware folder written by ``build``."""
    from l1forge.errors import DataFormatError

    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataFormatError(f"{path} not found: run `l1forge firmware build` first")
    return json.loads(path.read_text())
