"""`l1forge firmware build|report|hls-build`: firmware folders from a qnet IR, their reports."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("firmware", help="Verilog, wrappers and reports from a qnet IR")
    sub = parser.add_subparsers(dest="firmware_command", required=True)

    b = sub.add_parser("build", help="write Verilog, wrappers, packing and manifest into DIR")
    b.add_argument("qnet", help="qnet IR JSON file")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument(
        "--latency-cycles",
        type=int,
        default=None,
        help="pipeline depth in clocks (default: fewest that fit the clock)",
    )
    b.add_argument("--clock-mhz", type=float, default=40.0, help="clock frequency (MHz)")
    b.add_argument("--axis-beat-bits", type=int, default=64, help="AXI-stream TDATA width")
    b.add_argument("--no-hls", action="store_true", help="do not write the hls4ml project")
    b.add_argument(
        "--hls-csim-vectors",
        type=int,
        default=2000,
        help="vectors for the hls4ml C-sim vs emulator check (0: write the project only)",
    )
    b.add_argument("--part", default=None, help="FPGA part of the hls4ml project")
    b.add_argument("--no-lint", action="store_true", help="skip Verilator/Icarus checks")
    b.add_argument(
        "--check-vectors",
        type=int,
        default=20000,
        help="random vectors for the alkaid-vs-emulator check",
    )
    b.set_defaults(func=_build)

    r = sub.add_parser("report", help="latency and yosys resources of a firmware folder")
    r.add_argument("dir", help="folder written by `l1forge firmware build`")
    r.add_argument("--allow-dsp", action="store_true", help="let yosys infer DSP48E2 blocks")
    r.add_argument("--timeout", type=float, default=3600.0, help="yosys timeout (s)")
    r.set_defaults(func=_report)

    h = sub.add_parser("hls-build", help="run Vitis HLS synthesis of DIR's hls4ml project")
    h.add_argument("dir", help="folder written by `l1forge firmware build` (or its hls/)")
    h.add_argument("--timeout", type=float, default=4 * 3600.0, help="synthesis timeout (s)")
    h.set_defaults(func=_hls_build)


def _build(args: argparse.Namespace) -> int:
    from l1forge.firmware.build import BuildOptions, build
    from l1forge.models.qnet import load

    from l1forge.errors import ConfigError

    if args.check_vectors < 0:
        raise ConfigError("--check-vectors must be >= 0")
    if args.hls_csim_vectors < 0:
        raise ConfigError("--hls-csim-vectors must be >= 0")
    part = {"part": args.part} if args.part else {}
    net = load(args.qnet)
    manifest = build(
        net,
        args.out,
        BuildOptions(
            latency_cycles=args.latency_cycles,
            clock_mhz=args.clock_mhz,
            beat_bits=args.axis_beat_bits,
            hls=not args.no_hls,
            lint=not args.no_lint,
            n_check=args.check_vectors,
            hls_csim_vectors=args.hls_csim_vectors,
            **part,
        ),
    )
    keys = ("name", "latency_cycles", "clock_mhz", "latency_ns", "initiation_interval", "hls")
    print(json.dumps({k: manifest[k] for k in keys} | {"out": str(args.out)}))
    return 0


def _report(args: argparse.Namespace) -> int:
    from l1forge.firmware.report import report

    out = report(args.dir, allow_dsp=args.allow_dsp, timeout=args.timeout)
    keys = ("latency_cycles", "latency_ns", "clock_mhz", "initiation_interval", "resources")
    print(json.dumps({k: out[k] for k in keys} | {"target": out["target"]}))
    return 0


def _hls_build(args: argparse.Namespace) -> int:
    from l1forge.firmware.hls_build import hls_build

    out = hls_build(args.dir, timeout=args.timeout)
    print(json.dumps(out))
    return 0
