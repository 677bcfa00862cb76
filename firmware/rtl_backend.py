"""An online-daemon backend that runs batches on the trigger wrapper in RTL simulation.

Same interface as the emulator and board backends (``name``, ``infer``, ``close``); each
``infer`` call streams the batch back to back through the compiled simulation (Verilator by
default) and returns the outputs read from the RTL. Slow next to the emulator: for CI runs
that want the firmware itself in the loop. A build with registers is programmed through the
same register map as the board (``registers``: ``set_thresholds``, ``set_scaling``): each
simulation starts from reset, so the committed writes are replayed over the simulated
AXI4-Lite bus (cocotbext-axi) before every batch; ``infer`` returns the network's outputs and
keeps the seed bits of the last batch in ``last_seed_bits``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.firmware import packing
from l1forge.firmware.build import load_manifest
from l1forge.firmware.registers import RecordingBus, RegisterClient, RegisterMap
from l1forge.firmware.sim import SimBuild, build_sim, run_bench


class RtlSimBackend:
    """``infer`` through the trigger wrapper's RTL on a simulator; built once at construction."""

    def __init__(
        self, firmware_dir: str | Path, simulator: str = "verilator", *, sim: SimBuild | None = None
    ) -> None:
        self.firmware_dir = Path(firmware_dir)
        self.spec = packing.load(self.firmware_dir / "packing.json")
        self.latency_cycles = int(load_manifest(self.firmware_dir)["latency_cycles"])
        self.sim = sim or build_sim(self.firmware_dir, simulator, "trigger")
        self.name = f"rtl-{self.sim.simulator}"
        self._work = Path(tempfile.mkdtemp(prefix="l1forge-rtl-"))
        self._calls = 0
        self.registers: RegisterClient | None = None
        self._bus: RecordingBus | None = None
        if self.spec.registers is not None:
            rmap = RegisterMap.from_json(self.spec.registers)
            self._bus = RecordingBus(rmap)
            self.registers = RegisterClient(rmap, self._bus)
        self.last_seed_bits = np.empty((0, self.spec.n_seed_bits), dtype=np.int64)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Integer inputs ``(N, n_in)`` -> integer outputs ``int64 (N, n_out)`` from the RTL."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.spec.input.n_values:
            raise DataFormatError(
                f"infer expects shape (N, {self.spec.input.n_values}), got {x.shape}"
            )
        if len(x) == 0:
            return np.empty((0, self.spec.n_net_outputs), dtype=np.int64)
        self._calls += 1
        run_dir = self._work / f"call{self._calls}"
        run_dir.mkdir()
        out_bytes = -(-self.spec.output.bits // 8)
        np.savez(
            run_dir / "in.npz",
            in_bytes=packing.pack(x, self.spec.input),
            out_bytes=out_bytes,
        )
        env = {
            "L1F_VECTORS": str(run_dir / "in.npz"),
            "L1F_LATENCY": str(self.latency_cycles),
            "L1F_PATTERN": "back_to_back",
            "L1F_OUT": str(run_dir / "out.npz"),
        }
        if self._bus is not None and self._bus.replay():
            (run_dir / "writes.json").write_text(json.dumps(self._bus.replay()))
            env["L1F_REG_WRITES"] = str(run_dir / "writes.json")
        run_bench(self.sim, "l1forge.firmware.bench_trigger", env, run_dir)
        with np.load(run_dir / "out.npz") as z:
            y = packing.unpack(z["out_bytes"], self.spec.output)
        shutil.rmtree(run_dir, ignore_errors=True)
        self.last_seed_bits = y[:, self.spec.n_net_outputs :]
        return y[:, : self.spec.n_net_outputs]

    def close(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)
