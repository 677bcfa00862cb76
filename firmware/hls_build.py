"""Vendor HLS synthesis of a firmware folder's hls4ml project, where AMD Vitis HLS is installed.

The project (``hls/``, written by ``l1forge firmware build``) is synthesized with the project's
own ``build_prj.tcl`` (C simulation and C synthesis, no co-simulation, no export), the log kept
in ``logs/``, and hls4ml's parse of the synthesis reports copied into ``report.json`` under
``hls4ml_synthesis``. Without the tool this exits with one line naming it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from l1forge.errors import DataFormatError, L1ForgeError, MissingToolError

log = logging.getLogger(__name__)

# hls4ml 1.3's Vitis backend drives `vitis-run --mode hls` (Vitis >= 2024.1); older releases
# ship `vitis_hls`. Either runs the same build_prj.tcl.
TOOLS = {
    "vitis-run": ["vitis-run", "--tcl", "build_prj.tcl", "--mode", "hls"],
    "vitis_hls": ["vitis_hls", "-f", "build_prj.tcl"],
}
BUILD_OPTIONS = {
    "reset": 0,
    "csim": 1,
    "synth": 1,
    "cosim": 0,
    "validation": 0,
    "export": 0,
    "vsynth": 0,
    "fifo_opt": 0,
}


class HlsBuildError(L1ForgeError, RuntimeError):
    """The vendor HLS run failed; the message points at its log."""


def find_project(path: str | Path) -> tuple[Path, Path]:
    """(firmware folder, hls4ml project folder) for a firmware folder or its ``hls/``."""
    p = Path(path)
    if (p / "build_prj.tcl").is_file():
        return p.parent, p
    if (p / "hls" / "build_prj.tcl").is_file():
        return p, p / "hls"
    raise DataFormatError(
        f"{p} holds no hls4ml project (no build_prj.tcl in it or in hls/): "
        "run `l1forge firmware build` without --no-hls first"
    )


def hls_tool() -> list[str]:
    """The command that runs build_prj.tcl; MissingToolError when no Vitis HLS is on PATH."""
    for name, cmd in TOOLS.items():
        if shutil.which(name):
            return cmd
    raise MissingToolError(
        "firmware hls-build needs AMD Vitis HLS: neither vitis-run nor vitis_hls is on PATH "
        "(source the Vitis settings64.sh)"
    )


def hls_build(path: str | Path, timeout: float = 4 * 3600.0) -> dict[str, Any]:
    """Synthesize the project and merge hls4ml's report into ``report.json``; returns it."""
    fw, prj = find_project(path)
    cmd = hls_tool()
    opts = "".join(f"    {k:<10} {v}\n" for k, v in BUILD_OPTIONS.items())
    (prj / "build_opt.tcl").write_text(f"array set opt {{\n{opts}}}\n")
    logs = fw / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / "hls_build.log"
    log.info("running %s in %s (log: %s)", " ".join(cmd), prj, log_path)
    with open(log_path, "w") as fh:
        try:
            proc = subprocess.run(
                cmd, cwd=prj, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            msg = f"{cmd[0]} did not finish in {timeout:.0f} s: see {log_path}"
            raise HlsBuildError(msg) from exc
    if proc.returncode != 0:
        raise HlsBuildError(f"{cmd[0]} exited with {proc.returncode}: see {log_path}")
    from hls4ml.report import parse_vivado_report

    parsed = parse_vivado_report(str(prj))
    if not parsed:
        raise HlsBuildError(f"{cmd[0]} wrote no synthesis report under {prj}: see {log_path}")
    report_path = fw / "report.json"
    doc = json.loads(report_path.read_text()) if report_path.is_file() else {}
    doc["hls4ml_synthesis"] = {"tool": cmd[0], "log": str(log_path.relative_to(fw)), **parsed}
    report_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return doc["hls4ml_synthesis"]
