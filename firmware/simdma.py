"""A simulated AXI DMA engine with PYNQ's channel interface, over cocotbext-axi stream models.

Lets ``PynqBackend`` run unchanged against the generated AXI-stream RTL inside a cocotb
simulation: its blocking ``transfer``/``wait`` calls are bridged into the simulator
(``cocotb.task.resume``), MM2S becomes an ``AxiStreamSource`` frame and S2MM an
``AxiStreamSink`` frame whose length must equal the bytes the driver asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cocotb.task import resume
from cocotbext.axi import AxiStreamFrame

from l1forge.errors import DataFormatError


@resume
async def _send(source: Any, data: bytes) -> None:
    await source.send(AxiStreamFrame(data))


@resume
async def _wait_sent(source: Any) -> None:
    await source.wait()


@resume
async def _receive(sink: Any) -> bytes:
    frame = await sink.recv()
    return bytes(frame.tdata)


class _SendChannel:
    def __init__(self, dma: SimDma, source: Any):
        self._dma, self._source = dma, source

    def transfer(self, array: np.ndarray, start: int = 0, nbytes: int = 0) -> None:
        view = np.asarray(array, dtype=np.uint8)
        stop = start + nbytes if nbytes else view.size
        self._dma.transfers += 1
        _send(self._source, view[start:stop].tobytes())

    def wait(self) -> None:
        _wait_sent(self._source)


class _RecvChannel:
    def __init__(self, sink: Any):
        self._sink = sink
        self._target: tuple[np.ndarray, int, int] | None = None

    def transfer(self, array: np.ndarray, start: int = 0, nbytes: int = 0) -> None:
        self._target = (array, start, nbytes or len(array) - start)

    def wait(self) -> None:
        if self._target is None:
            raise DataFormatError("S2MM wait() without a transfer()")
        array, start, nbytes = self._target
        data = _receive(self._sink)
        if len(data) != nbytes:
            raise DataFormatError(f"S2MM frame of {len(data)} bytes, driver expected {nbytes}")
        array[start : start + nbytes] = np.frombuffer(data, dtype=np.uint8)
        self._target = None


class SimDma:
    """``sendchannel``/``recvchannel`` like ``pynq.lib.dma.DMA``, counting MM2S transfers."""

    def __init__(self, source: Any, sink: Any):
        self.transfers = 0
        self.sendchannel = _SendChannel(self, source)
        self.recvchannel = _RecvChannel(sink)


class SimOverlay:
    """Stands in for a loaded overlay exposing one DMA named ``axi_dma_0``."""

    def __init__(self, source: Any, sink: Any):
        self.axi_dma_0 = SimDma(source, sink)


def sim_allocate(shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
    """``pynq.allocate`` stand-in: plain host memory."""
    return np.zeros(shape, dtype=dtype)
