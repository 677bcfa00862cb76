"""Per-lumisection data-quality monitoring: histograms, reference comparisons, the DQM file.

``DQMMonitor.fill`` takes each monitored batch, ``end_lumisection`` closes a lumisection and
returns its alarms, ``end_run`` writes the DQM ROOT file and the JSON alarm summary. Not
thread-safe: one thread drives it (``dqm_service.DQMService`` does, behind a lock).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hist
import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.online.dqm.compare import Alarm, compare_1d, compare_map
from l1forge.online.dqm.config import PARTICLE_KINDS, DQMConfig, load_config
from l1forge.online.dqm.histograms import (
    GROUP_KIND,
    ROWS,
    DQMReference,
    RunningReference,
    book_histograms,
    compared_values,
    histogram_group,
    signed_log_score,
)
from l1forge.sim.l1objects import MET, N_FEATURES, N_OBJECTS

log = logging.getLogger(__name__)

SUMMARY_FORMAT = "l1forge-dqm-alarms"
SUMMARY_VERSION = 1
SEVERITIES = ("warning", "error")


class LumisectionClosedError(DataFormatError):
    """Events arrived for a lumisection that was already ended (its comparison is done)."""


@dataclass(frozen=True)
class DQMRunResult:
    """What ``end_run`` wrote."""

    root_path: Path
    summary_path: Path
    n_lumisections: int
    n_alarms: int
    n_errors: int


class DQMMonitor:
    """Fills per-lumisection histograms, compares them with a reference and collects alarms.

    ``seed_names`` are the menu's seeds (columns of the boolean seed matrix given to ``fill``),
    ``score_names`` the networks whose outputs are monitored (columns of ``scores``).
    """

    def __init__(
        self,
        config: DQMConfig | None = None,
        *,
        seed_names: Sequence[str] = (),
        score_names: Sequence[str] = ("score",),
        run: int = 0,
        reference: DQMReference | None = None,
    ):
        self.config = config or load_config()
        self.seed_names = tuple(seed_names)
        self.score_names = tuple(score_names)
        if not self.score_names or len(set(self.score_names)) != len(self.score_names):
            raise ConfigError(f"score_names: need distinct names, got {self.score_names}")
        self.run = int(run)
        if reference is None and self.config.reference.mode == "file":
            path = self.config.reference.path
            if path is None:
                raise ConfigError("reference.path: mode 'file' needs a reference DQM ROOT file")
            reference = DQMReference.from_root(path, self._book())
        self._file_reference = reference
        self._running = RunningReference(self.config.reference.window_lumisections)
        self._open: dict[int, dict[str, hist.Hist]] = {}
        self._open_events: dict[int, int] = {}
        self._totals = self._book()
        self._closed: dict[int, dict[str, hist.Hist]] = {}
        self._events: dict[int, int] = {}
        self._seed_counts: dict[int, np.ndarray] = {}
        self._compared: dict[int, int] = {}
        self.alarms: list[Alarm] = []

    def _book(self) -> dict[str, hist.Hist]:
        return book_histograms(self.config, len(self.seed_names), self.score_names)

    # ---- filling -------------------------------------------------------------------------
    def fill(
        self,
        lumisection: int,
        objects_phys: np.ndarray,
        scores: np.ndarray,
        seed_bits: np.ndarray,
        latency_s: float | np.ndarray,
    ) -> None:
        """Add one batch: (N, 19, 3) objects (pT GeV, eta, phi), (N,) or (N, models) scores,
        (N, seeds) booleans of the seeds that fired, and the batch's backend latency."""
        x = np.asarray(objects_phys)
        if x.ndim != 3 or x.shape[1:] != (N_OBJECTS, N_FEATURES):
            raise DataFormatError(
                f"objects_phys: expected shape (N, {N_OBJECTS}, {N_FEATURES}), got {x.shape}"
            )
        n = x.shape[0]
        s = np.asarray(scores, np.float64).reshape(n, -1) if n else np.zeros((0, 0))
        if n and s.shape[1] != len(self.score_names):
            raise DataFormatError(
                f"scores: expected {len(self.score_names)} column(s) "
                f"({', '.join(self.score_names)}) for {n} events, got shape {np.shape(scores)}"
            )
        bits = np.asarray(seed_bits, bool)
        if bits.shape != (n, len(self.seed_names)):
            raise DataFormatError(
                f"seed_bits: expected shape ({n}, {len(self.seed_names)}), got {bits.shape}"
            )
        if lumisection in self._closed:
            raise LumisectionClosedError(
                f"lumisection {lumisection} was already ended; its late events are not filled"
            )
        h = self._open.get(lumisection)
        if h is None:
            h = self._open[lumisection] = self._book()
            self._open_events[lumisection] = 0
        met = x[:, MET.start]
        h["met/pt"].fill(met[:, 0])
        h["met/phi"].fill(met[met[:, 0] > 0, 2])
        for kind in PARTICLE_KINDS:
            obj = x[:, ROWS[kind]]
            present = obj[..., 0] > 0
            sel = obj[present]
            h[f"{kind}/pt"].fill(sel[:, 0])
            h[f"{kind}/eta"].fill(sel[:, 1])
            h[f"{kind}/phi"].fill(sel[:, 2])
            h[f"{kind}/occupancy"].fill(sel[:, 1], sel[:, 2])
            h[f"{kind}/multiplicity"].fill(present.sum(axis=1))
        for i, model in enumerate(self.score_names):
            if n:
                h[f"score/{model}"].fill(signed_log_score(s[:, i]))
        if self.seed_names and n:
            h["trigger/rates"].fill(np.nonzero(bits)[1] + 0.5)
        h["backend/latency"].fill(np.asarray(latency_s, np.float64).reshape(-1))
        self._open_events[lumisection] += n

    # ---- comparing -----------------------------------------------------------------------
    def _reference(self) -> tuple[dict[str, np.ndarray], float] | None:
        if self._file_reference is not None:
            return self._file_reference.counts, self._file_reference.n_events
        if self._running.n_lumisections < self.config.reference.warmup_lumisections:
            return None
        return self._running.sums, float(self._running.n_events)

    def _compare(
        self,
        lumisection: int,
        hs: dict[str, hist.Hist],
        n_events: int,
        ref: dict[str, np.ndarray],
        ref_events: float,
    ) -> tuple[list[Alarm], int]:
        """Alarms of one lumisection and the number of histograms compared."""
        alarms: list[Alarm] = []
        n_compared = 0
        for name, h in hs.items():
            group = histogram_group(name)
            if group == "latency" or name not in ref or (group == "rates" and not self.seed_names):
                continue
            counts, r = compared_values(h), ref[name]
            check = self.config.check(group)
            n_compared += 1
            if group == "occupancy":
                ax = h.axes
                alarms += compare_map(lumisection, name, counts, r, check, ax[0].edges, ax[1].edges)
                continue
            trials, ref_trials = (float(n_events), ref_events) if group == "rates" else (None, None)
            edges = h.axes[0].edges
            if h.axes[0].traits.underflow:
                edges = np.concatenate([[-np.inf], edges, [np.inf]])
            alarms += compare_1d(
                lumisection,
                name,
                GROUP_KIND[group],
                counts,
                r,
                check,
                trials,
                ref_trials,
                edges=edges,
            )
        return alarms, n_compared

    def _latency_alarm(self, lumisection: int, h: hist.Hist) -> list[Alarm]:
        v = h.values(flow=True)
        total = v.sum()
        if total <= 0:
            return []
        edges = np.concatenate([h.axes[0].edges, [np.inf]])  # upper edge of each flow-bin
        p99 = float(edges[int(np.searchsorted(np.cumsum(v), 0.99 * total))])
        t = self.config.latency_p99_s
        level = 2 if p99 > t.error else 1 if p99 > t.warning else 0
        if not level:
            return []
        return [
            Alarm(
                lumisection=lumisection,
                histogram="backend/latency",
                kind="latency_excursion",
                severity=("", "warning", "error")[level],
                entries=float(total),
                message=f"backend latency: 99th percentile up to {p99:.3g} s, above the limit",
            )
        ]

    def end_lumisection(self, ls: int) -> list[Alarm]:
        """Close lumisection ``ls``: compare its histograms with the reference, return alarms.

        A lumisection without data alarms of ``reference.exclude`` severity or worse joins the
        running reference.
        """
        if ls in self._closed:
            raise LumisectionClosedError(f"lumisection {ls} was already ended")
        hs = self._open.pop(ls, None) or self._book()
        n_events = self._open_events.pop(ls, 0)
        for name, h in hs.items():
            self._totals[name] += h
        self._closed[ls] = hs
        self._events[ls] = n_events
        self._seed_counts[ls] = hs["trigger/rates"].values()[: len(self.seed_names)].copy()
        alarms = self._latency_alarm(ls, hs["backend/latency"])
        self._compared[ls] = 0
        if n_events < self.config.min_events:
            log.info("lumisection %d: %d events, too few to compare", ls, n_events)
        else:
            ref = self._reference()
            found: list[Alarm] = []
            if ref is not None:
                found, self._compared[ls] = self._compare(ls, hs, n_events, *ref)
                alarms += found
            keep_out = ("error",) if self.config.reference.exclude == "error" else SEVERITIES
            if not any(a.severity in keep_out and a.kind != "latency_excursion" for a in found):
                self._running.add({k: compared_values(h) for k, h in hs.items()}, n_events)
        for a in alarms:
            (log.error if a.severity == "error" else log.warning)("LS %d: %s", ls, a.message)
        self.alarms += alarms
        return alarms

    # ---- views for the dashboard ---------------------------------------------------------
    @property
    def closed_lumisections(self) -> list[int]:
        """Ended lumisections, in order."""
        return sorted(self._closed)

    def open_lumisections(self) -> list[int]:
        """Lumisections with events that are not ended yet."""
        return sorted(self._open)

    def lumisection_histograms(self, ls: int) -> dict[str, hist.Hist]:
        """The histograms of an ended lumisection."""
        return self._closed[ls]

    def lumisection_events(self, ls: int) -> int:
        """Events filled into an ended lumisection."""
        return self._events[ls]

    def histograms_compared(self, ls: int) -> int:
        """How many histograms of an ended lumisection were compared with a reference."""
        return self._compared[ls]

    def reference_counts(self) -> dict[str, np.ndarray]:
        """The current reference counts (flow bins included on 1D histograms); empty if none."""
        ref = self._reference()
        return {} if ref is None else {k: v.copy() for k, v in ref[0].items()}

    def seed_rates(self) -> dict[int, dict[str, float]]:
        """Per ended lumisection, each seed's accepted fraction of the monitored events."""
        return {
            ls: {
                s: float(c[i] / self._events[ls]) if self._events[ls] else 0.0
                for i, s in enumerate(self.seed_names)
            }
            for ls, c in sorted(self._seed_counts.items())
        }

    # ---- end of run ----------------------------------------------------------------------
    def summary(self) -> dict:
        """The alarm summary written beside the DQM ROOT file (JSON-ready)."""
        lss = sorted(self._closed)
        return {
            "format": SUMMARY_FORMAT,
            "version": SUMMARY_VERSION,
            "run": self.run,
            "n_lumisections": len(lss),
            "n_events": int(sum(self._events.values())),
            "events_per_lumisection": {str(ls): self._events[ls] for ls in lss},
            "histograms_compared_per_lumisection": {str(ls): self._compared[ls] for ls in lss},
            "seed_names": list(self.seed_names),
            "score_names": list(self.score_names),
            "reference": {
                "mode": "file" if self._file_reference is not None else "running",
                "path": self.config.reference.path,
            },
            "histograms": sorted(self._totals),
            "n_alarms": len(self.alarms),
            "n_errors": sum(a.severity == "error" for a in self.alarms),
            "n_warnings": sum(a.severity == "warning" for a in self.alarms),
            "alarms_by_kind": {
                k: sum(a.kind == k for a in self.alarms)
                for k in sorted({a.kind for a in self.alarms})
            },
            "lumisections_with_errors": sorted(
                {a.lumisection for a in self.alarms if a.severity == "error"}
            ),
            "alarms": [a.to_dict() for a in self.alarms],
        }

    def end_run(self, out_dir: str | Path) -> DQMRunResult:
        """End open lumisections, write ``dqm_run<run>.root`` and ``dqm_run<run>_alarms.json``."""
        import uproot

        for ls in sorted(self._open):
            self.end_lumisection(ls)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        root_path = out / f"dqm_run{self.run:06d}.root"
        summary_path = out / f"dqm_run{self.run:06d}_alarms.json"
        lss = sorted(self._closed)
        first, last = (lss[0], lss[-1]) if lss else (0, 0)
        ls_axis = hist.axis.Regular(
            last - first + 1, first, last + 1, name="lumisection", underflow=False, overflow=False
        )
        events: hist.Hist = hist.Hist(ls_axis)
        n_seeds = max(len(self.seed_names), 1)
        rates: hist.Hist = hist.Hist(
            ls_axis,
            hist.axis.Regular(n_seeds, 0, n_seeds, name="seed", underflow=False, overflow=False),
        )
        for ls in lss:
            events.fill(ls + 0.5, weight=self._events[ls])
            for i, c in enumerate(self._seed_counts[ls]):
                rates.fill(ls + 0.5, i + 0.5, weight=c)
        with uproot.recreate(root_path) as f:
            for name, h in self._totals.items():
                f[name] = h
            f["events"] = events
            f["trigger/counts_vs_lumisection"] = rates
            if self.config.write_lumisections:
                for ls in lss:
                    for name, h in self._closed[ls].items():
                        f[f"lumisections/ls{ls:05d}/{name}"] = h
        summary = {**self.summary(), "root_file": root_path.name}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        log.info(
            "DQM run %d: %d lumisections, %d alarms -> %s",
            self.run,
            len(lss),
            len(self.alarms),
            root_path,
        )
        return DQMRunResult(
            root_path, summary_path, len(lss), len(self.alarms), summary["n_errors"]
        )
