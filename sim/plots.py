"""Plots of Level-1 objects: pT, eta, phi per object type and multiplicities, per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l1forge.sim.dataset import EventSet
from l1forge.sim.l1objects import OBJECT_SLICES


def plot_objects(events: EventSet, folder: str | Path, stem: str) -> list[Path]:
    """Write one figure per object type (pT, eta, phi; multiplicity) and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    ranges = {"pT [GeV]": (0, 300), "eta": (-5, 5), "phi [rad]": (-np.pi, np.pi)}
    for kind, sl in OBJECT_SLICES.items():
        fig, axes = plt.subplots(1, 4, figsize=(28, 6))
        for i, name in enumerate(events.processes):
            obj = events.objects_phys[events.label == i][:, sl]
            present = obj[..., 0] > 0
            for k, (label, rng) in enumerate(ranges.items()):
                if kind == "met" and k == 1:
                    continue
                axes[k].hist(
                    obj[..., k][present],
                    bins=50,
                    range=rng,
                    histtype="step",
                    density=True,
                    label=name,
                )
                axes[k].set_xlabel(f"{kind} {label}")
            axes[3].hist(
                present.sum(axis=1),
                bins=np.arange(sl.stop - sl.start + 2) - 0.5,
                histtype="step",
                density=True,
                label=name,
            )
        axes[0].set_yscale("log")
        axes[3].set_xlabel(f"{kind} multiplicity")
        axes[0].legend(fontsize="small")
        path = folder / f"{stem}_{kind}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=60)
        plt.close(fig)
        paths.append(path)
    return paths
