"""Inference backends of the online daemon: the bit-exact emulator, RTL simulation, a PYNQ board.

Every backend maps integer inputs ``(N, n_in)`` to integer outputs ``int64 (N, n_out)``; the
real value of output column ``j`` is ``int * 2**-frac_bits`` of the IR's output format
(``outputs_float``). The RTL and board backends live in ``l1forge.firmware`` and are imported
only when asked for.
"""

from __future__ import annotations

import inspect
import logging
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.models import qnet
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import QNet
from l1forge.online.config import BACKEND_KINDS
from l1forge.online.datapath.wire import DTYPE_CODES

log = logging.getLogger(__name__)


class ModelSwapError(L1ForgeError, ValueError):
    """A new network cannot replace the running one (different input or output layout)."""


@runtime_checkable
class Backend(Protocol):
    """What a worker needs of a backend."""

    name: str

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Integer inputs ``(N, n_in)`` -> integer outputs ``int64 (N, n_out)``."""
        ...

    def close(self) -> None: ...


def output_formats(net: QNet) -> tuple[Fixed, ...]:
    """The fixed-point format of every output column of ``net`` (outputs concatenated)."""
    return tuple(spec.fixed for spec in net.output_specs for _ in range(spec.size))


def outputs_float(net: QNet, y: np.ndarray) -> np.ndarray:
    """Integer outputs ``(N, n_out)`` of ``net`` -> their exact real values, float64."""
    y = np.asarray(y)
    fmts = output_formats(net)
    if y.ndim != 2 or y.shape[1] != len(fmts):
        raise DataFormatError(f"outputs of {net.name!r} have shape (N, {len(fmts)}), got {y.shape}")
    lsb = np.array([f.lsb for f in fmts], dtype=np.float64)
    return y.astype(np.float64) * lsb


def load_net(net: QNet | str | Path) -> QNet:
    """A QNet, loading (and validating) it when given the path of its IR JSON."""
    return net if isinstance(net, QNet) else qnet.load(net)


def _layout(net: QNet) -> tuple[int, tuple[Fixed, ...]]:
    return net.input_specs[0].size, output_formats(net)


class EmulatorBackend:
    """The qnet emulator as a backend; ``swap`` replaces the network between two batches."""

    name = "emulator"

    def __init__(self, net: QNet | str | Path, *, chunk_size: int = 4096, threads: int = 1):
        self._lock = threading.Lock()
        self._chunk_size = chunk_size
        self._threads = threads
        self._net = load_net(net)
        self._emulator = self._warm(Emulator(self._net, chunk_size=chunk_size, threads=threads))

    def _warm(self, emulator: Emulator) -> Emulator:
        """``emulator`` after one event of each wire dtype: its compiled passes are loaded (and
        specialized for that dtype) now, about 1 s the first time in a process, not during
        the run's first batches."""
        for dtype in DTYPE_CODES.values():
            emulator.run(np.zeros((1, emulator.input_spec.size), dtype))
        return emulator

    @property
    def net(self) -> QNet:
        return self._net

    @property
    def n_inputs(self) -> int:
        return self._net.input_specs[0].size

    @property
    def n_outputs(self) -> int:
        return len(output_formats(self._net))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Integer inputs ``(N, n_in)`` -> integer outputs ``int64 (N, n_out)``."""
        with self._lock:
            return self._emulator.run(np.asarray(x))

    def infer_float(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(integer outputs, real outputs) of one batch, both from the same network."""
        with self._lock:
            y = self._emulator.run(np.asarray(x))
            return y, outputs_float(self._net, y)

    def outputs_float(self, y: np.ndarray) -> np.ndarray:
        """Real values of integer outputs of the current network."""
        return outputs_float(self._net, y)

    def swap(self, net: QNet | str | Path, *, same_layout: bool = True) -> QNet:
        """Replace the network; a batch running now finishes on the old one. Returns the new net.

        With ``same_layout`` the new net must have the same input size and output formats.
        """
        new = load_net(net)
        if same_layout and _layout(new) != _layout(self._net):
            raise ModelSwapError(
                f"network {new.name!r} has inputs/outputs {_layout(new)}, the running "
                f"{self._net.name!r} has {_layout(self._net)}: export it with the same layout "
                "or restart the run"
            )
        emulator = self._warm(Emulator(new, chunk_size=self._chunk_size, threads=self._threads))
        with self._lock:
            old, self._emulator, self._net = self._emulator, emulator, new
        old.close()
        log.info("emulator backend now runs %s", new.name)
        return new

    def close(self) -> None:
        with self._lock:
            self._emulator.close()


def make_backend(kind: str, **kwargs: Any) -> Backend:
    """Construct a backend: ``emulator`` (net=QNet or IR path), ``rtl`` (firmware_dir,
    simulator), ``pynq`` (firmware_dir, bitfile, driver options)."""
    if kind == "emulator":
        if "net" not in kwargs:
            raise ConfigError("backend emulator: give net= (a QNet or the path of its IR JSON)")
        return _construct(EmulatorBackend, kind, kwargs)
    if kind in ("rtl", "pynq") and not kwargs.get("firmware_dir"):
        raise ConfigError(
            f"backend {kind}: firmware_dir is required (from `l1forge firmware build`)"
        )
    if kind == "rtl":
        from l1forge.firmware.rtl_backend import RtlSimBackend

        return _construct(RtlSimBackend, kind, kwargs)
    if kind == "pynq":
        from l1forge.firmware.pynq_driver import PynqBackend

        return _construct(PynqBackend, kind, kwargs)
    raise ConfigError(f"backend kind: {kind!r} is not one of {', '.join(BACKEND_KINDS)}")


def _construct(cls: type, kind: str, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)`` after checking the keywords, so a typo is a ConfigError naming it."""
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"backend {kind}: {exc}") from exc
    return cls(**kwargs)
