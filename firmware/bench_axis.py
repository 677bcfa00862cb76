"""cocotb benches of the AXI4-Stream wrapper, driven by cocotbext-axi.

``axis_frames``: sends the vectors of ``L1F_VECTORS`` as DMA-like frames of random lengths
(TLAST on each frame's last beat) with random pauses on both sides (back-pressure from the
sink, gaps from the source) and checks every result and every frame boundary exactly, with
its own cycle-exact driver and monitor so that 10,000 events take seconds.
``axis_driver``: runs the PYNQ driver's own ``infer`` in a thread bridged into the
simulation, with a simulated DMA engine standing in for ``axi_dma`` (see ``simdma.py``), and
checks its results against the expected outputs.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge
from cocotb.triggers import FallingEdge, RisingEdge
from cocotbext.axi import AxiStreamBus, AxiStreamSink, AxiStreamSource


def _pauses(rng: np.random.Generator, prob: float):
    while True:
        yield bool(rng.random() < prob)


async def _setup(dut, pause: float, seed: int):
    Clock(dut.aclk, 10, unit="ns").start()  # cocotb 2: start() schedules the clock task itself
    source = AxiStreamSource(
        AxiStreamBus.from_prefix(dut, "s_axis"), dut.aclk, dut.aresetn, reset_active_level=False
    )
    sink = AxiStreamSink(
        AxiStreamBus.from_prefix(dut, "m_axis"), dut.aclk, dut.aresetn, reset_active_level=False
    )
    source.log.setLevel("WARNING")
    sink.log.setLevel("WARNING")
    if pause > 0:
        rng = np.random.default_rng(seed)
        source.set_pause_generator(_pauses(rng, pause))
        sink.set_pause_generator(_pauses(rng, pause))
    dut.aresetn.value = 0
    for _ in range(4):
        await RisingEdge(dut.aclk)
    dut.aresetn.value = 1
    await RisingEdge(dut.aclk)
    return source, sink


def _beats(rows: np.ndarray, beat_bytes: int) -> list[int]:
    """Byte rows (one event each, whole beats) -> beat integers, least significant beat first."""
    flat = np.ascontiguousarray(rows).reshape(-1, beat_bytes)
    return [int.from_bytes(b.tobytes(), "little") for b in flat]


@cocotb.test()
async def axis_frames(dut) -> None:
    """Random-length frames under random back-pressure; every beat, TKEEP and TLAST checked.

    A lean, cycle-exact AXI4-Stream driver and monitor (not cocotbext-axi, whose per-cycle cost
    made 10,000 events take minutes; the ``axis_driver`` bench keeps it as the independent model).
    Every wrapper output is a register, so the outputs read at a falling edge are the ones the
    next rising edge sees: a transfer happens there iff TVALID and TREADY are both high. The
    source holds a presented beat until it is taken, as AXI4-Stream requires; pauses start only
    between beats. The sink's TREADY is random on every cycle.
    """
    data = np.load(os.environ["L1F_VECTORS"])
    in_bytes, expected = data["in_bytes"], data["expected"]
    seed = int(os.environ.get("L1F_SEED", "0"))
    pause = float(os.environ.get("L1F_PAUSE", "0.3"))
    beat_bytes = len(dut.s_axis_tdata) // 8
    keep_all = (1 << (beat_bytes)) - 1
    n = len(in_bytes)
    rng = np.random.default_rng(seed + 1)
    bounds = [0]
    while bounds[-1] < n:
        bounds.append(min(n, bounds[-1] + int(rng.integers(1, 40))))
    frames = list(itertools.pairwise(bounds))
    in_beats = _beats(in_bytes, beat_bytes)
    per_in = len(in_beats) // max(n, 1)
    want = _beats(expected, beat_bytes)
    per_out = len(want) // max(n, 1)
    in_last = np.zeros(len(in_beats), dtype=bool)
    out_last = np.zeros(len(want), dtype=bool)
    for _a, b in frames:
        in_last[b * per_in - 1] = True
        out_last[b * per_out - 1] = True

    Clock(dut.aclk, 10, unit="ns").start()  # cocotb 2: start() schedules the clock task itself
    fall = FallingEdge(dut.aclk)
    dut.aresetn.value = 0
    dut.s_axis_tvalid.value = 0
    dut.s_axis_tdata.value = 0
    dut.s_axis_tlast.value = 0
    dut.m_axis_tready.value = 0
    for _ in range(4):
        await fall
    dut.aresetn.value = 1
    await fall

    limit = 20 * (len(in_beats) + len(want)) + 1000
    src_pause = rng.random(limit) < pause
    sink_pause = rng.random(limit) < pause
    got: list[int] = []
    got_last: list[bool] = []
    bad_keep = 0
    i_in, pending, valid_now, ready_now, cycle = 0, False, 0, 0, 0
    t0 = time.perf_counter()
    while len(got) < len(want) and cycle < limit:
        s_ready = int(dut.s_axis_tready.value)
        m_valid = int(dut.m_axis_tvalid.value)
        if not pending and i_in < len(in_beats) and not src_pause[cycle]:
            dut.s_axis_tdata.value = in_beats[i_in]
            dut.s_axis_tlast.value = int(in_last[i_in])
            pending = True
        if int(pending) != valid_now:
            valid_now = int(pending)
            dut.s_axis_tvalid.value = valid_now
        ready = int(not sink_pause[cycle])
        if ready != ready_now:
            ready_now = ready
            dut.m_axis_tready.value = ready
        if pending and s_ready:
            i_in += 1
            pending = False
        if ready and m_valid:
            got.append(dut.m_axis_tdata.value.to_unsigned())
            got_last.append(bool(int(dut.m_axis_tlast.value)))
            bad_keep += dut.m_axis_tkeep.value.to_unsigned() != keep_all
        cycle += 1
        await fall
    elapsed = time.perf_counter() - t0
    dut.s_axis_tvalid.value = 0
    dut.m_axis_tready.value = 1
    extra = 0
    for _ in range(16):  # nothing may follow the last expected result
        await fall
        extra += int(dut.m_axis_tvalid.value)
        if extra:
            break

    mismatches, first_bad = 0, None
    if len(got) != len(want):
        mismatches += 1
        first_bad = f"{len(got)} result beats after {cycle} cycles, expected {len(want)}"
    got_rows = np.array(got[: len(want)] + [-1] * (len(want) - len(got)), dtype=object)
    want_rows = np.array(want, dtype=object)
    last_rows = np.array(got_last[: len(want)] + [False] * (len(want) - len(got)))
    differs = (got_rows != want_rows) | (last_rows != out_last)
    bad_events = np.flatnonzero(differs.reshape(n, per_out).any(axis=1)) if n else np.empty(0, int)
    mismatches += len(bad_events)
    if len(bad_events):
        first_bad = first_bad or f"vector {int(bad_events[0])} differs (data or TLAST)"
    if "L1F_STATS" in os.environ:
        with open(os.environ["L1F_STATS"], "w") as fh:
            json.dump(
                {
                    "vectors": n,
                    "frames": len(frames),
                    "mismatches": mismatches,
                    "in_beats": i_in,
                    "out_beats": len(got),
                    "cycles": cycle,
                    "seconds": elapsed,
                    "vectors_per_s": n / elapsed if elapsed > 0 else 0.0,
                },
                fh,
            )
    assert mismatches == 0, f"{mismatches} mismatches; first: {first_bad}"
    assert bad_keep == 0, f"TKEEP not all ones on {bad_keep} result beats"
    assert extra == 0, "the wrapper sent more data than results expected"


@cocotb.test()
async def axis_driver(dut) -> None:
    """The PYNQ driver's infer() against the RTL, through a simulated DMA engine."""
    from l1forge.firmware.pynq_driver import PynqBackend
    from l1forge.firmware.simdma import SimOverlay, sim_allocate

    data = np.load(os.environ["L1F_VECTORS"])
    x, want = data["x"], data["expected_int"]
    source, sink = await _setup(dut, float(os.environ.get("L1F_PAUSE", "0.3")), 7)
    overlay = SimOverlay(source, sink)
    batch = int(os.environ.get("L1F_BATCH", "64"))

    @bridge
    def run_driver() -> np.ndarray:
        backend = PynqBackend(
            os.environ["L1F_FIRMWARE"], overlay=overlay, allocate=sim_allocate, max_batch=batch
        )
        try:
            return backend.infer(x)
        finally:
            backend.close()

    got = await run_driver()
    np.testing.assert_array_equal(got, want)
    assert overlay.axi_dma_0.transfers >= -(-len(x) // batch)
