"""cocotb bench of the trigger wrapper: drives packed vectors, checks every output exactly.

Configured by environment (set by ``l1forge.firmware.sim.run_bench`` callers):
``L1F_VECTORS`` npz with ``in_bytes`` (and ``expected``, the emulator's packed outputs, when
checking), ``L1F_LATENCY`` (clock cycles), ``L1F_PATTERN`` (``back_to_back``, ``gaps`` or
``reset``), ``L1F_SEED``, optional ``L1F_OUT`` (npz written with the outputs in input order)
and ``L1F_STATS`` (JSON of counts and speed). A cycle-level reference of the wrapper (a
valid shift register cleared by reset) predicts, for every clock, whether out_valid must be
high and which input's result out_data must carry; events dropped by a reset are re-sent.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from typing import Any

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from l1forge.firmware import packing


def has_registers(dut: Any) -> bool:
    """Whether the wrapper has the AXI4-Lite register bank (``firmware build --registers``)."""
    return hasattr(dut, "axil_aresetn")


async def start_and_reset(dut) -> FallingEdge:
    """Start the 100 MHz bench clock and hold reset for two cycles with the input idle (and
    the register bank's reset, if any); returns the falling-edge trigger the drivers step on."""
    Clock(dut.clk, 10, unit="ns").start()  # cocotb 2: start() schedules the clock task itself
    fall = FallingEdge(dut.clk)
    regs = has_registers(dut)
    dut.rst.value = 1
    dut.in_valid.value = 0
    dut.in_data.value = 0
    if regs:
        dut.axil_aresetn.value = 0
        for port in ("awvalid", "wvalid", "bready", "arvalid", "rready"):
            getattr(dut, f"s_axil_{port}").value = 0
    for _ in range(2):
        await fall
    dut.rst.value = 0
    if regs:
        dut.axil_aresetn.value = 1
    return fall


def axil_master(dut: Any) -> Any:
    """cocotbext-axi's ``AxiLiteMaster`` on the wrapper's ``s_axil_*`` ports."""
    from cocotbext.axi import AxiLiteBus, AxiLiteMaster

    master = AxiLiteMaster(
        AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.axil_aresetn, reset_active_level=False
    )
    master.write_if.log.setLevel("WARNING")
    master.read_if.log.setLevel("WARNING")
    return master


async def program_registers(master: Any, writes: list[tuple[int, int]]) -> None:
    """Perform register writes (byte address, 32-bit word) in order; any error response fails."""
    for addr, word in writes:
        resp = await master.write(addr, int(word).to_bytes(4, "little"))
        assert int(resp.resp) == 0, f"register write {addr:#x} <- {word:#x}: response {resp.resp}"


@cocotb.test()
async def trigger_stream(dut) -> None:
    """Stream every vector through the wrapper and compare each output with the expectation."""
    data = np.load(os.environ["L1F_VECTORS"])
    ins = packing.to_ints(data["in_bytes"])
    expected = packing.to_ints(data["expected"]) if "expected" in data.files else None
    n_out_bytes = int(data["out_bytes"])
    latency = int(os.environ["L1F_LATENCY"])
    pattern = os.environ.get("L1F_PATTERN", "back_to_back")
    rng = np.random.default_rng(int(os.environ.get("L1F_SEED", "0")))
    n = len(ins)

    fall = await start_and_reset(dut)
    if "L1F_REG_WRITES" in os.environ:  # the RTL backend's register writes (simulated bus)
        with open(os.environ["L1F_REG_WRITES"]) as fh:
            await program_registers(axil_master(dut), [tuple(w) for w in json.load(fh)])
        for _ in range(latency + 1):  # let a commit's threshold switch complete
            await fall

    queue = deque(range(n))
    pipe: list[int | None] = [None] * latency
    results: list[int | None] = [None] * n
    reset_cycles = set(range(n // 2, n // 2 + 2)) if pattern == "reset" else set()
    gaps = rng.random(4 * n + 16) < 0.3 if pattern == "gaps" else None
    mismatches, first_bad, compared, resets_seen = 0, None, 0, 0
    cycle = 0
    t0 = time.perf_counter()
    while queue or any(p is not None for p in pipe):
        in_reset = cycle in reset_cycles
        idle = gaps is not None and cycle < len(gaps) and gaps[cycle]
        current = None
        if queue and not idle:
            dut.in_valid.value = 1
            dut.in_data.value = ins[queue[0]]
            if not in_reset:
                current = queue.popleft()
        else:
            dut.in_valid.value = 0
        dut.rst.value = int(in_reset)
        await fall  # the rising edge in between captured the inputs
        if in_reset:
            resets_seen += 1
            # pipe[-1] left the pipeline (and was checked) before this edge; the rest is
            # dropped by the reset and sent again.
            queue.extend(p for p in pipe[:-1] if p is not None)
            pipe = [None] * latency
        else:
            pipe = [current, *pipe[:-1]]
        want = pipe[-1]
        valid = int(dut.out_valid.value)
        if valid != int(want is not None):
            mismatches += 1
            first_bad = (
                first_bad or f"cycle {cycle}: out_valid={valid}, expected {want is not None}"
            )
        elif want is not None:
            value = dut.out_data.value.to_unsigned()
            results[want] = value
            compared += 1
            if expected is not None and value != expected[want]:
                mismatches += 1
                first_bad = first_bad or (
                    f"vector {want}: out_data={value:#x}, emulator {expected[want]:#x}"
                )
        cycle += 1
    elapsed = time.perf_counter() - t0
    dut.in_valid.value = 0

    stats = {
        "vectors": n,
        "compared": compared,
        "mismatches": mismatches,
        "cycles": cycle,
        "resets": resets_seen,
        "seconds": elapsed,
        "vectors_per_s": compared / elapsed if elapsed > 0 else 0.0,
    }
    if "L1F_STATS" in os.environ:
        with open(os.environ["L1F_STATS"], "w") as fh:
            json.dump(stats, fh)
    received = [r for r in results if r is not None]
    if "L1F_OUT" in os.environ and len(received) == len(results):
        np.savez(os.environ["L1F_OUT"], out_bytes=packing.from_ints(received, n_out_bytes))
    assert mismatches == 0, f"{mismatches} mismatches; first: {first_bad}"
    assert compared == n, f"compared {compared} outputs for {n} inputs"
    if pattern == "reset":
        assert resets_seen == len(reset_cycles)
