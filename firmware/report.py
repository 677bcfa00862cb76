"""Latency and resources of a firmware folder: yosys ``synth_xilinx`` beside alkaid's estimate.

Resources come from yosys on the trigger wrapper (core plus valid pipeline), flattened and
out of context, for the UltraScale+ family (``-family xcup``; yosys 0.23 maps adders to
CARRY4). By default
DSP inference is off (``-nodsp``), as in the CMS AXOL1TL encoder, so every product lands in LUTs;
``allow_dsp=True`` lets yosys use DSP48E2 blocks. The anchors are the published figures the
design is compared with, as quoted in the project's issue 4.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l1forge.errors import MissingToolError
from l1forge.firmware.build import BuildOptions, build, load_manifest, tool_failed

if TYPE_CHECKING:
    from l1forge.models.qnet import QNet

log = logging.getLogger(__name__)

# Xilinx Virtex UltraScale+ VU9P (xcvu9p) capacity, from the UltraScale+ product table (DS890).
VU9P = {"lut": 1_182_240, "ff": 2_364_480, "dsp": 6_840, "bram36": 2_160}
ANCHORS = [
    {
        "name": "ADC2021 challenge FPGA autoencoders",
        "latency_ns_below": 80,
        "vu9p_fraction_below": 0.03,
        "source": "FPGA autoencoders of the 2021 anomaly-detection challenge, as quoted in issue 4",
    },
    {
        "name": "CMS AXOL1TL Level-1 anomaly-detection encoder",
        "latency_ns": 50,
        "cycles_at_40mhz": 2,
        "dsp": 0,
        "source": "CMS AXOL1TL in the Level-1 Global Trigger, as quoted in issue 4",
    },
]
TARGET = {"latency_ns_max": 50.0, "dsp": 0}

_CELL = re.compile(r"^\s+(\S+)\s+(\d+)\s*$")


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` block of a yosys log."""
    block = text[text.rfind("Number of cells:") :]
    cells: dict[str, int] = {}
    for line in block.splitlines()[1:]:
        m = _CELL.match(line)
        if m:
            cells[m.group(1)] = int(m.group(2))
        elif cells and line.strip() == "":
            break
    return cells


def summarize(cells: dict[str, int]) -> dict[str, int]:
    def total(pattern: str) -> int:
        return sum(v for k, v in cells.items() if re.fullmatch(pattern, k))

    return {
        "lut": total(r"LUT[1-6]|INV"),  # yosys INV cells are LUT1s on the device
        "ff": total(r"FD[RSCP]E(_1)?"),
        "carry": total(r"CARRY[48]"),
        "dsp": total(r"DSP48E[12]?|DSP48E2"),
        "bram": total(r"RAMB(18|36)E[12]"),
        "lutram": total(r"RAM(32|64|128|256)[XM].*"),
        "srl": total(r"SRL(16E|C32E)"),
        "muxf": total(r"MUXF[789]"),
    }


def run_yosys(
    fw: Path, top: str, sources: list[str], allow_dsp: bool, timeout: float
) -> tuple[dict[str, int], float, Path]:
    if shutil.which("yosys") is None:
        raise MissingToolError("yosys not found on PATH: apt-get install yosys (run `make setup`)")
    logs = fw / "logs"
    logs.mkdir(exist_ok=True)
    script = logs / f"yosys_{top}.ys"
    opts = "" if allow_dsp else " -nodsp"
    script.write_text(
        "read_verilog " + " ".join(str(fw / s) for s in sources) + "\n"
        f"synth_xilinx -family xcup -top {top} -flatten -noiopad{opts}\n"
        "stat\n"
    )
    log_path = logs / f"yosys_{top}.log"
    console = logs / f"yosys_{top}.console.log"
    t0 = time.perf_counter()
    try:
        with open(console, "w") as fh:
            proc = subprocess.run(
                ["yosys", "-q", "-l", str(log_path), "-s", str(script)],
                cwd=fw,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired as exc:
        raise tool_failed("yosys", top, log_path, f"timed out after {timeout:g} s") from exc
    if proc.returncode != 0:
        log_file = log_path if log_path.is_file() and log_path.stat().st_size else console
        raise tool_failed("yosys", top, log_file)
    seconds = time.perf_counter() - t0
    return parse_stat(log_path.read_text()), seconds, log_path


def report(fw_dir: str | Path, allow_dsp: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """Synthesize the trigger wrapper with yosys and write ``report.json`` into the folder."""
    fw = Path(fw_dir).resolve()
    man = load_manifest(fw)
    top = man["modules"]["trigger"]
    sources = [s for s in man["sources"] if not s.endswith(f"{man['modules']['axis']}.v")]
    log.info("yosys synth_xilinx on %s (can take minutes)", top)
    cells, seconds, log_path = run_yosys(fw, top, sources, allow_dsp, timeout)
    res = summarize(cells)
    latency_ns = man["latency_cycles"] * 1000.0 / man["clock_mhz"]
    period_ns = 1000.0 / man["clock_mhz"]
    worst_stage_ns = max(man["alkaid"]["stage_delay_ns"], default=0.0)
    out = {
        "network": man["network"],
        "top": top,
        "latency_cycles": man["latency_cycles"],
        "clock_mhz": man["clock_mhz"],
        "latency_ns": latency_ns,
        "initiation_interval": man["initiation_interval"],
        "resources": res,
        "cells": cells,
        "vu9p_fraction": {
            "lut": res["lut"] / VU9P["lut"],
            "ff": res["ff"] / VU9P["ff"],
            "dsp": res["dsp"] / VU9P["dsp"],
        },
        "alkaid_estimate": man["alkaid"],
        "timing_estimate": {
            "period_ns": period_ns,
            "worst_stage_delay_ns": worst_stage_ns,
            "met": worst_stage_ns <= period_ns,
            "note": "alkaid's delay model, not a vendor timing closure",
        },
        "yosys": {
            "command": f"synth_xilinx -family xcup -top {top} -flatten -noiopad"
            + ("" if allow_dsp else " -nodsp"),
            "dsp_allowed": allow_dsp,
            "seconds": seconds,
            "log": str(log_path.relative_to(fw)),
        },
        "anchors": ANCHORS,
        "target": TARGET
        | {
            "latency_met": latency_ns <= TARGET["latency_ns_max"],
            "dsp_met": res["dsp"] == TARGET["dsp"],
            "timing_estimate_met": worst_stage_ns <= period_ns,
            "within_challenge_envelope": latency_ns < 80 and res["lut"] / VU9P["lut"] < 0.03,
        },
    }
    bank = man["modules"].get("regbank")
    if bank:
        bank_src = [s for s in man["sources"] if s.endswith(f"/{bank}.v")]
        log.info("yosys synth_xilinx on %s (the register bank alone)", bank)
        bank_cells, bank_s, bank_log = run_yosys(fw, bank, bank_src, allow_dsp, timeout)
        bank_res = summarize(bank_cells)
        out["register_bank"] = {
            "top": bank,
            "resources": bank_res,
            "network_resources": {k: res[k] - bank_res[k] for k in res},
            "contents": "AXI4-Lite slave, shadow and active parameter sets, commit logic, "
            "input scaling stage, seed comparators",
            "note": "the bank synthesized alone (same yosys command); network_resources = "
            "the trigger wrapper's total minus the bank",
            "seconds": bank_s,
            "log": str(bank_log.relative_to(fw)),
        }
    (fw / "report.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def build_and_size(net: QNet, fw: Path, cycles: int, clock_mhz: float = 40.0) -> dict[str, Any]:
    """``build`` at ``cycles`` / ``clock_mhz`` (no hls4ml project) and its ``report``, as the
    flat fields the benchmarks print."""
    t0 = time.perf_counter()
    manifest = build(net, fw, BuildOptions(latency_cycles=cycles, clock_mhz=clock_mhz, hls=False))
    build_s = time.perf_counter() - t0
    rep = report(fw)
    res = rep["resources"]
    return {
        "latency_cycles": manifest["latency_cycles"],
        "clock_mhz": manifest["clock_mhz"],
        "latency_ns": manifest["latency_ns"],
        "initiation_interval": manifest["initiation_interval"],
        "lut": res["lut"],
        "ff": res["ff"],
        "carry": res["carry"],
        "dsp": res["dsp"],
        "bram": res["bram"],
        "vu9p_lut_fraction": rep["vu9p_fraction"]["lut"],
        "stage_delay_ns": manifest["alkaid"]["stage_delay_ns"],
        "worst_stage_delay_ns": rep["timing_estimate"]["worst_stage_delay_ns"],
        "period_ns": rep["timing_estimate"]["period_ns"],
        "timing_estimate_met": rep["timing_estimate"]["met"],
        "alkaid_cost_estimate": manifest["alkaid"]["cost"],
        "interpreter_vectors_checked": manifest["alkaid"]["interpreter_vectors_checked"],
        "yosys_s": rep["yosys"]["seconds"],
        "firmware_build_s": build_s,
        "target_met": rep["target"],
    }
