"""Synthetic events for the continual-learning tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l1forge.sim.l1objects import to_hardware, to_physical


def zero_bias_like(n: int, seed: int) -> np.ndarray:
    """Hardware-unit events (N, 19, 3) with falling pT spectra and random multiplicities."""
    rng = np.random.default_rng(seed)
    phys = np.zeros((n, 19, 3), dtype=np.float32)
    phys[:, 0, 0] = rng.exponential(15.0, n)  # MET
    phys[:, 0, 2] = rng.uniform(-np.pi, np.pi, n)
    for sl, mean, pt_min in (
        (slice(1, 5), 8.0, 5.0),
        (slice(5, 9), 6.0, 3.0),
        (slice(9, 19), 20.0, 15.0),
    ):
        k = sl.stop - sl.start
        pt = pt_min + rng.exponential(mean, (n, k))
        keep = rng.random((n, k)) < np.linspace(0.6, 0.05, k)
        pt = -np.sort(-(pt * keep), axis=1)
        phys[:, sl, 0] = pt
        phys[:, sl, 1] = np.where(pt > 0, rng.uniform(-2.5, 2.5, (n, k)), 0)
        phys[:, sl, 2] = np.where(pt > 0, rng.uniform(-np.pi, np.pi, (n, k)), 0)
    return to_hardware(phys).astype(np.int64)


def signal_like(n: int, seed: int) -> np.ndarray:
    """Anomalous events: the zero-bias shape with every pT four times higher."""
    ev = zero_bias_like(n, seed).copy()
    ev[..., 0] = np.minimum(ev[..., 0] * 4, 4095)
    return ev


def event_file(path: Path, objects_hw: np.ndarray) -> Path:
    """An event HDF5 file (``sim.dataset``) of hardware-unit events, one process."""
    from l1forge.sim.dataset import EventSet, write_events

    n = len(objects_hw)
    ev = EventSet(
        objects_phys=to_physical(objects_hw).astype(np.float32),
        objects_hw=objects_hw.astype(np.int32),
        run=np.ones(n, dtype=np.uint64),
        event=np.arange(1, n + 1, dtype=np.uint64),
        label=np.zeros(n, dtype=np.int16),
        weight=np.ones(n, dtype=np.float32),
        processes=("zero_bias_like",),
        provenance={"producer": "tests/online/learning/events.py"},
    )
    return write_events(path, ev)
