"""The DQM histograms and their references: booking, the values compared, reference counts.

``book_histograms`` books one lumisection's histograms from the DQM configuration;
``DQMReference`` reads a reference run's totals back from its DQM ROOT file;
``RunningReference`` sums the last good lumisections when no reference file is given.
Imports the DQM configuration and ``l1forge.sim``'s object layout only.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import hist
import numpy as np

from l1forge.errors import DataFormatError
from l1forge.online.dqm.config import PARTICLE_KINDS, DQMConfig
from l1forge.sim.l1objects import EGAMMA, JET, MET, MUON

log = logging.getLogger(__name__)


class _Flow(TypedDict):
    """Flow-bin keywords of a ``hist`` axis."""

    underflow: bool
    overflow: bool


ROWS = {"met": MET, "egamma": EGAMMA, "muon": MUON, "jet": JET}
# Which configuration check and which alarm kind each histogram group uses.
GROUP_KIND = {
    "input": "shifted_input",
    "multiplicity": "shifted_input",
    "score": "score_change",
    "rates": "rate_excursion",
}


def histogram_group(name: str) -> str:
    """The check group of a histogram path (input, multiplicity, occupancy, score, rates...)."""
    top, _, leaf = name.partition("/")
    if top in ROWS and leaf in ("pt", "eta", "phi"):
        return "input"
    if top in ROWS and leaf in ("multiplicity", "occupancy"):
        return leaf
    if top == "score":
        return "score"
    if name == "trigger/rates":
        return "rates"
    if name == "backend/latency":
        return "latency"
    raise KeyError(f"{name!r} is not a DQM histogram")


def signed_log_score(scores: np.ndarray) -> np.ndarray:
    """sign(s) * log10(1 + |s|): anomaly scores (>= 0) and logits share one wide-range axis."""
    s = np.asarray(scores, np.float64)
    return np.sign(s) * np.log10(1.0 + np.abs(s))


def book_histograms(
    config: DQMConfig, n_seeds: int, score_names: Sequence[str] = ("score",)
) -> dict[str, hist.Hist]:
    """Empty histograms of one lumisection, keyed by their path in the DQM file."""
    b = config.binning
    flow: _Flow = {"underflow": True, "overflow": True}
    no_flow: _Flow = {"underflow": False, "overflow": False}
    reg = hist.axis.Regular
    phi = reg(b.phi_bins, -math.pi, math.pi, name="phi", label="phi", **flow)
    hs: dict[str, hist.Hist] = {}
    hs["met/pt"] = hist.Hist(
        reg(
            b.of("pt_bins", "met"),
            0,
            b.of("pt_max_gev", "met"),
            name="pt",
            label="MET [GeV]",
            **flow,
        )
    )
    hs["met/phi"] = hist.Hist(phi)
    for kind in PARTICLE_KINDS:
        eta_max = b.of("eta_max", kind)
        hs[f"{kind}/pt"] = hist.Hist(
            reg(
                b.of("pt_bins", kind),
                0,
                b.of("pt_max_gev", kind),
                name="pt",
                label=f"{kind} pT [GeV]",
                **flow,
            )
        )
        hs[f"{kind}/eta"] = hist.Hist(
            reg(b.of("eta_bins", kind), -eta_max, eta_max, name="eta", label=f"{kind} eta", **flow)
        )
        hs[f"{kind}/phi"] = hist.Hist(phi)
        hs[f"{kind}/occupancy"] = hist.Hist(
            reg(
                b.of("occupancy_eta_bins", kind),
                -eta_max,
                eta_max,
                name="eta",
                label=f"{kind} eta",
                **no_flow,
            ),
            reg(
                b.occupancy_phi_bins, -math.pi, math.pi, name="phi", label=f"{kind} phi", **no_flow
            ),
        )
        n_rows = ROWS[kind].stop - ROWS[kind].start
        hs[f"{kind}/multiplicity"] = hist.Hist(
            reg(n_rows + 1, -0.5, n_rows + 0.5, name="n", label=f"{kind} multiplicity", **flow)
        )
    for model in score_names:
        hs[f"score/{model}"] = hist.Hist(
            reg(
                b.score_bins,
                -b.score_log1p_max,
                b.score_log1p_max,
                name="score",
                label=f"sign(s) log10(1 + |s|), s = {model} output",
                **flow,
            )
        )
    hs["trigger/rates"] = hist.Hist(
        reg(
            max(n_seeds, 1),
            0,
            max(n_seeds, 1),
            name="seed",
            label="trigger seed index (names in the alarm JSON)",
            **no_flow,
        )
    )
    edges = np.geomspace(b.latency_min_s, b.latency_max_s, b.latency_bins + 1)
    hs["backend/latency"] = hist.Hist(
        hist.axis.Variable(edges, name="latency_s", label="backend latency per batch [s]", **flow)
    )
    return hs


def compared_values(h: hist.Hist) -> np.ndarray:
    """The counts compared with the reference: flow bins included on 1D axes that have them."""
    flow = h.ndim == 1 and h.axes[0].traits.underflow
    return np.asarray(h.values(flow=flow), np.float64)


@dataclass(frozen=True)
class DQMReference:
    """Reference counts per histogram (as compared) and the number of events behind them."""

    counts: dict[str, np.ndarray]
    n_events: float

    @classmethod
    def from_root(cls, path: str | Path, template: dict[str, hist.Hist]) -> DQMReference:
        """The run totals of a DQM ROOT file written by ``DQMMonitor.end_run``.

        ``template`` (from ``book_histograms``) says which histograms to read and their flow bins.
        """
        import uproot

        p = Path(path)
        try:
            f = uproot.open(p)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"reference DQM file {p}: cannot open ({exc})") from exc
        with f:
            if "events" not in f:
                raise DataFormatError(f"reference DQM file {p}: no 'events' histogram")
            n_events = float(f["events"].values().sum())
            counts: dict[str, np.ndarray] = {}
            for name, h in template.items():
                if name not in f:
                    log.warning("reference DQM file %s has no %s: not compared", p, name)
                    continue
                flow = h.ndim == 1 and h.axes[0].traits.underflow
                values = np.asarray(f[name].values(flow=flow), np.float64)
                if values.shape != compared_values(h).shape:
                    raise DataFormatError(
                        f"reference DQM file {p}: {name} has shape {values.shape}, this run's "
                        f"binning gives {compared_values(h).shape}; use a reference made with "
                        "the same DQM configuration"
                    )
                counts[name] = values
        return cls(counts=counts, n_events=n_events)


class RunningReference:
    """Sum of the last good lumisections' counts (all of them when window == 0)."""

    def __init__(self, window: int):
        self.window = window
        self.entries: deque[tuple[dict[str, np.ndarray], int]] = deque()
        self.sums: dict[str, np.ndarray] = {}
        self.n_events = 0
        self.n_lumisections = 0

    def add(self, counts: dict[str, np.ndarray], n_events: int) -> None:
        if not self.sums:
            self.sums = {k: np.zeros_like(v) for k, v in counts.items()}
        for k, v in counts.items():
            self.sums[k] += v
        self.n_events += n_events
        self.n_lumisections += 1
        if self.window:
            self.entries.append((counts, n_events))
            if len(self.entries) > self.window:
                old, old_n = self.entries.popleft()
                for k, v in old.items():
                    self.sums[k] -= v
                self.n_events -= old_n
