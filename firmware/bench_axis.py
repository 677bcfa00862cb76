"""cocotb benches of the AXI4-Stream wrapper, driven by cocotbext-axi.

``axis_frames``: sends the vectors of ``L1F_VECTORS`` as DMA-like frames of random lengths
(TLAST on each frame's last beat) with random pauses on both sides (back-pressure from the
sink, gaps from the source) and checks every result and every frame boundary exactly.
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
from cocotb.triggers import RisingEdge
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource


def _pauses(rng: np.random.Generator, prob: float):
    while True:
        yield bool(rng.random() < prob)


async def _setup(dut, pause: float, seed: int):
    cocotb.start_soon(Clock(dut.aclk, 10, unit="ns").start())
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


@cocotb.test()
async def axis_frames(dut) -> None:
    """Random-length frames under random back-pressure; every byte and TLAST checked."""
    data = np.load(os.environ["L1F_VECTORS"])
    in_bytes, expected = data["in_bytes"], data["expected"]
    seed = int(os.environ.get("L1F_SEED", "0"))
    source, sink = await _setup(dut, float(os.environ.get("L1F_PAUSE", "0.3")), seed)
    rng = np.random.default_rng(seed + 1)
    bounds = [0]
    while bounds[-1] < len(in_bytes):
        bounds.append(min(len(in_bytes), bounds[-1] + int(rng.integers(1, 40))))
    frames = list(itertools.pairwise(bounds))

    async def send_all() -> None:
        for a, b in frames:
            await source.send(AxiStreamFrame(in_bytes[a:b].tobytes()))

    t0 = time.perf_counter()
    cocotb.start_soon(send_all())
    mismatches, first_bad = 0, None
    for a, b in frames:
        rx = await sink.recv()
        got = np.frombuffer(bytes(rx.tdata), dtype=np.uint8)
        want = expected[a:b].ravel()
        if got.shape != want.shape:
            mismatches += 1
            first_bad = first_bad or f"frame {a}:{b}: {got.size} bytes, expected {want.size}"
        elif not np.array_equal(got, want):
            rows = np.flatnonzero(np.any(got.reshape(b - a, -1) != expected[a:b], axis=1))
            mismatches += len(rows)
            first_bad = first_bad or f"vector {a + int(rows[0])} differs"
    elapsed = time.perf_counter() - t0
    if "L1F_STATS" in os.environ:
        with open(os.environ["L1F_STATS"], "w") as fh:
            json.dump(
                {
                    "vectors": len(in_bytes),
                    "frames": len(frames),
                    "mismatches": mismatches,
                    "seconds": elapsed,
                },
                fh,
            )
    assert mismatches == 0, f"{mismatches} mismatches; first: {first_bad}"
    assert sink.empty(), "the wrapper sent more data than results expected"


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
