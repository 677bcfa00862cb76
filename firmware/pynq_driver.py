"""PYNQ board driver: streams packed batches through the AXI-stream firmware with AXI DMA.

``pynq`` is imported only when a board overlay is opened (an optional extra); on a machine
without it a ``MissingToolError`` says what to install. The class implements the online
daemon's backend interface (``name``, ``infer``, ``close``). It was exercised here only
against the generated RTL in simulation, through a simulated DMA engine (``simdma.py``):
no board exists on this machine. A build with registers is retuned through ``registers``
(``set_thresholds``, ``set_scaling``), MMIO writes to the register bank's AXI4-Lite IP at the
addresses of ``packing.json``'s register map; ``infer`` then returns the network's outputs and
keeps the firmware's seed bits of the last batch in ``last_seed_bits``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import ConfigError, DataFormatError, MissingToolError
from l1forge.firmware import packing
from l1forge.firmware.registers import RegisterBus, RegisterClient, RegisterMap

log = logging.getLogger(__name__)


def _import_pynq() -> Any:
    try:
        import pynq
    except ImportError as exc:
        raise MissingToolError(
            "the PYNQ driver needs the `pynq` package on the board: pip install 'l1forge[board]'"
        ) from exc
    return pynq


def _sync(buffer: Any, method: str) -> None:
    """Cache maintenance of PYNQ buffers (flush before DMA reads, invalidate after writes)."""
    fn = getattr(buffer, method, None)
    if fn is not None:
        fn()


class PynqBackend:
    """Runs batches on the board: pack -> DMA to the AXI-stream wrapper -> DMA back -> unpack.

    ``overlay_kwargs`` go to ``pynq.Overlay`` unchanged. ``overlay`` and ``allocate`` may be
    given instead (an overlay already loaded, or a simulated one in tests). With registers,
    ``regs_name`` names the overlay IP of the register bank (its ``read``/``write`` are MMIO), or
    ``mmio`` gives the register port directly.
    """

    name = "pynq"

    def __init__(
        self,
        firmware_dir: str | Path,
        bitfile: str | Path | None = None,
        *,
        dma_name: str = "axi_dma_0",
        max_batch: int = 1024,
        overlay: Any = None,
        allocate: Callable[..., Any] | None = None,
        regs_name: str = "l1forge_regs",
        mmio: RegisterBus | None = None,
        **overlay_kwargs: Any,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self.spec = packing.load(Path(firmware_dir) / "packing.json")
        if overlay is None or allocate is None:
            pynq = _import_pynq()
            if overlay is None:
                if bitfile is None:
                    raise ConfigError("bitfile: the overlay .bit file is required on a board")
                overlay = pynq.Overlay(str(bitfile), **overlay_kwargs)
            allocate = allocate or pynq.allocate
        self.overlay = overlay
        try:
            self.dma = getattr(overlay, dma_name)
        except AttributeError as exc:
            raise ConfigError(f"dma_name: the overlay has no IP named {dma_name!r}") from exc
        self.max_batch = max_batch
        self.in_bytes = self.spec.input.bytes_for(self.spec.beat_bits)
        self.out_bytes = self.spec.output.bytes_for(self.spec.beat_bits)
        # Allocated once: every batch reuses the same physically contiguous buffers.
        self._in = allocate(shape=(max_batch * self.in_bytes,), dtype=np.uint8)
        self._out = allocate(shape=(max_batch * self.out_bytes,), dtype=np.uint8)
        self.registers: RegisterClient | None = None
        if self.spec.registers is not None:
            if mmio is None:
                try:
                    mmio = getattr(overlay, regs_name)
                except AttributeError as exc:
                    raise ConfigError(
                        f"regs_name: the overlay has no register bank IP named {regs_name!r}"
                    ) from exc
            self.registers = RegisterClient(RegisterMap.from_json(self.spec.registers), mmio)
        self.last_seed_bits = np.empty((0, self.spec.n_seed_bits), dtype=np.int64)

    @property
    def n_inputs(self) -> int:
        return self.spec.input.n_values

    @property
    def n_outputs(self) -> int:
        return self.spec.n_net_outputs

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Integer inputs ``(N, n_in)`` -> integer outputs ``int64 (N, n_out)``."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise DataFormatError(f"infer expects shape (N, {self.n_inputs}), got {x.shape}")
        out = np.empty((len(x), self.spec.output.n_values), dtype=np.int64)
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            n = len(chunk)
            n_in, n_out = n * self.in_bytes, n * self.out_bytes
            self._in[:n_in] = packing.pack(chunk, self.spec.input, self.in_bytes).reshape(-1)
            _sync(self._in, "flush")
            self.dma.recvchannel.transfer(self._out, 0, n_out)
            self.dma.sendchannel.transfer(self._in, 0, n_in)
            self.dma.sendchannel.wait()
            self.dma.recvchannel.wait()
            _sync(self._out, "invalidate")
            raw = np.asarray(self._out[:n_out], dtype=np.uint8).reshape(n, self.out_bytes)
            out[start : start + n] = packing.unpack(raw, self.spec.output)
        self.last_seed_bits = out[:, self.n_outputs :]
        return out[:, : self.n_outputs]

    def close(self) -> None:
        for buf in (self._in, self._out):
            _sync(buf, "freebuffer")
