"""Pythia 8 event generation reduced to Level-1 objects, sharded, on dask.distributed.

Each shard is an independent Pythia instance with its own seed derived from the user's seed,
the process name and the shard index, so a dataset depends on (seed, n, shard size) only and
not on how many workers ran it. Pile-up is overlaid from a premixed library of minimum-bias
events generated once per dataset (as experiments premix pile-up), each overlay drawn with a
random azimuthal rotation and a random z-reflection.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from l1forge import __version__
from l1forge.errors import ConfigError, L1ForgeError
from l1forge.sim.dataset import EventSet, concat_events, write_events
from l1forge.sim.l1objects import DetectorResponse, kinematics, reduce_event, to_hardware
from l1forge.sim.processes import SIGNALS_2021, Process, get_process, load_processes

log = logging.getLogger(__name__)

SQRT_S_GEV = 13600.0
DEFAULT_PILEUP = 20.0
DEFAULT_SHARD_EVENTS = 1000
PILEUP_LIBRARY_EVENTS = 400
CLUSTER_BATCH = 200
MB_TO_PB = 1e9
QUIET = (
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowProcess = 0",
    "Next:numberShowInfo = 0",
)


class GenerationError(L1ForgeError, RuntimeError):
    """Pythia failed to initialize or to produce events."""


@dataclass(frozen=True)
class ShardSpec:
    """Everything one shard needs; plain values so it travels to any dask worker."""

    process: Process
    n: int
    index: int
    seed: int
    pileup_mean: float
    response: DetectorResponse
    pileup: PileupLibrary | None = None


@dataclass(frozen=True)
class ShardResult:
    objects_phys: np.ndarray  # float32 (n, 19, 3)
    bin_index: np.ndarray  # int16 (n,): the pT-hat bin of each event (0 without bins)
    sigma_pb: tuple[float, ...]  # generated cross section per bin
    counts: tuple[int, ...]  # events per bin
    pythia_seeds: tuple[int, ...]
    failures: int


def _seed_sequence(seed: int, process: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(process.encode()), index])


def _pythia_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1)[0] % 900_000_000) + 1  # Pythia accepts 1..900,000,000


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C++ writes to stdout (Pythia and FastJet banners) so JSON output stays clean."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _cache_dir() -> Path:
    root = os.environ.get("L1FORGE_CACHE") or Path.home() / ".cache" / "l1forge"
    return Path(root) / "pythia"


def _pythia_with(settings: tuple[str, ...]):
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for s in (f"Beams:eCM = {SQRT_S_GEV}", *QUIET, *settings):
        if not pythia.readString(s):
            raise ConfigError(f"Pythia rejected the setting {s!r}")
    return pythia


def _mpi_init_file(settings: tuple[str, ...]) -> Path:
    """Pythia's multiparton-interaction initialization for these settings, made once.

    The initialization integrates with random numbers and takes seconds for soft QCD; every
    generator instance reads the same file (made with a fixed seed), so a run's events do not
    depend on whether the cache existed before it.
    """
    key = hashlib.sha256("\n".join((str(SQRT_S_GEV), *settings)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"mpi-{key}.dat"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    init = (
        "Random:setSeed = on",
        "Random:seed = 1",
        "MultipartonInteractions:reuseInit = 1",
        f"MultipartonInteractions:initFile = {tmp}",
    )
    with _quiet_stdout():
        ok = _pythia_with((*settings, *init)).init()
    if not ok or not tmp.is_file():
        raise GenerationError(f"Pythia failed to initialize with settings {list(settings)}")
    tmp.replace(path)
    return path


def _make_pythia(settings: tuple[str, ...], seed: int, extra: tuple[str, ...] = ()):
    all_settings = (*settings, *extra)
    init_file = _mpi_init_file(all_settings)
    run = (
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        "MultipartonInteractions:reuseInit = 2",
        f"MultipartonInteractions:initFile = {init_file}",
    )
    with _quiet_stdout():
        pythia = _pythia_with((*all_settings, *run))
        ok = pythia.init()
    if not ok:
        raise GenerationError(f"Pythia failed to initialize with settings {list(settings)}")
    return pythia


def _final_particles(pythia, pt_min: float) -> np.ndarray:
    """Final-state particles other than neutrinos as rows (id, px, py, pz), float64."""
    rows = [
        (p.id(), p.px(), p.py(), p.pz())
        for p in pythia.event
        if p.isFinal() and p.idAbs() not in (12, 14, 16) and p.pT() > pt_min
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _next_event(pythia, max_failures: int, state: dict[str, int]) -> None:
    while not pythia.next():
        state["failures"] += 1
        if state["failures"] > max_failures:
            raise GenerationError(f"Pythia failed {state['failures']} times in one shard")


class PileupLibrary:
    """A pool of minimum-bias events to overlay; overlays rotate in phi and flip in z."""

    def __init__(self, events: tuple[np.ndarray, ...]):
        self.events = events

    @classmethod
    def generate(cls, seed: int, n_events: int, response: DetectorResponse) -> PileupLibrary:
        pythia = _make_pythia(get_process("minbias").settings, seed)
        state = {"failures": 0}
        events = []
        for _ in range(n_events):
            _next_event(pythia, n_events, state)
            events.append(_final_particles(pythia, response.particle_pt_min))
        return cls(tuple(events))

    def overlay(self, k: int, rng: np.random.Generator) -> np.ndarray:
        if k == 0:
            return np.zeros((0, 4))
        picks = [self.events[i] for i in rng.integers(0, len(self.events), k)]
        out = np.concatenate(picks)
        sizes = [len(p) for p in picks]
        angle = np.repeat(rng.uniform(-math.pi, math.pi, k), sizes)
        flip = np.repeat(rng.choice([-1.0, 1.0], k), sizes)
        c, s = np.cos(angle), np.sin(angle)
        px, py = out[:, 1].copy(), out[:, 2].copy()
        out[:, 1], out[:, 2], out[:, 3] = c * px - s * py, s * px + c * py, out[:, 3] * flip
        return out


def cluster_jets(events: list[np.ndarray], response: DetectorResponse) -> list[np.ndarray]:
    """Anti-kT jets (pt, eta, phi) of each event's calorimeter particles, with FastJet."""
    import awkward as ak
    import fastjet

    sel = []
    for p in events:
        pid = np.abs(p[:, 0])
        pt, eta, _ = kinematics(p[:, 1], p[:, 2], p[:, 3])
        sel.append(p[(pid != 13) & (np.abs(eta) < response.calo_eta_max)])
    counts = [len(p) for p in sel]
    flat = np.concatenate(sel) if sel else np.zeros((0, 4))
    e = np.sqrt((flat[:, 1:4] ** 2).sum(axis=1))  # massless calorimeter deposits
    arr = ak.unflatten(
        ak.zip({"px": flat[:, 1], "py": flat[:, 2], "pz": flat[:, 3], "E": e}), counts
    )
    jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, response.jet_radius)
    with _quiet_stdout():
        jets = fastjet.ClusterSequence(arr, jetdef).inclusive_jets(min_pt=5.0)
    n_jets = ak.to_numpy(ak.num(jets))
    px, py, pz = (ak.to_numpy(ak.flatten(jets[c])).astype(np.float64) for c in ("px", "py", "pz"))
    pt, eta, phi = kinematics(px, py, pz)
    return np.split(np.column_stack([pt, eta, phi]), np.cumsum(n_jets)[:-1])


def generate_shard(spec: ShardSpec, progress: bool = False) -> ShardResult:
    """Generate one shard: Pythia events with pile-up, reduced to Level-1 objects."""
    from tqdm import tqdm

    ss = _seed_sequence(spec.seed, spec.process.name, spec.index)
    ss_hard, ss_rng = ss.spawn(2)
    rng = np.random.default_rng(ss_rng)
    library = spec.pileup if spec.pileup_mean > 0 else None
    bins = spec.process.pthat_bins or ((-1.0, -1.0),)
    per_bin = [spec.n // len(bins) + (1 if i < spec.n % len(bins) else 0) for i in range(len(bins))]
    bin_seqs = ss_hard.spawn(len(bins))
    seeds, sigmas, objects, bin_index = [], [], [], []
    state = {"failures": 0}
    bar = tqdm(
        total=spec.n,
        desc=f"{spec.process.name}[{spec.index}]",
        disable=not progress,
        unit="ev",
        leave=False,
    )
    for b, ((lo, hi), n_bin) in enumerate(zip(bins, per_bin, strict=True)):
        if n_bin == 0:
            sigmas.append(0.0)
            continue
        seed = _pythia_seed(bin_seqs[b])
        extra = () if lo < 0 else (f"PhaseSpace:pTHatMin = {lo}", f"PhaseSpace:pTHatMax = {hi}")
        pythia = _make_pythia(spec.process.settings, seed, extra)
        seeds.append(seed)
        done = 0
        while done < n_bin:
            batch = []
            for _ in range(min(CLUSTER_BATCH, n_bin - done)):
                _next_event(pythia, max(100, spec.n), state)
                parts = _final_particles(pythia, spec.response.particle_pt_min)
                if library is not None:
                    parts = np.concatenate(
                        [parts, library.overlay(rng.poisson(spec.pileup_mean), rng)]
                    )
                batch.append(parts)
            for parts, jets in zip(batch, cluster_jets(batch, spec.response), strict=True):
                objects.append(reduce_event(parts, jets, spec.response, rng))
            bin_index += [b] * len(batch)
            done += len(batch)
            bar.update(len(batch))
        sigmas.append(pythia.infoPython().sigmaGen() * MB_TO_PB)
    bar.close()
    return ShardResult(
        objects_phys=np.asarray(objects, dtype=np.float32).reshape(-1, 19, 3),
        bin_index=np.asarray(bin_index, dtype=np.int16),
        sigma_pb=tuple(sigmas),
        counts=tuple(per_bin),
        pythia_seeds=tuple(seeds),
        failures=state["failures"],
    )


def _run_shards(
    specs: list[ShardSpec], n_workers: int, scheduler: str | None, progress: bool
) -> list[ShardResult]:
    from tqdm import tqdm

    if scheduler is None and n_workers == 1:
        return [generate_shard(s, progress=progress) for s in specs]
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(generate_shard, s, pure=False) for s in specs]
            for _ in tqdm(
                as_completed(futures), total=len(futures), desc="shards", disable=not progress
            ):
                pass
            return [f.result() for f in futures]
    except OSError as exc:
        raise L1ForgeError(f"cannot reach dask scheduler {scheduler!r}: {exc}") from exc
    finally:
        if cluster is not None:
            cluster.close()


def _versions() -> dict[str, str]:
    out = {"l1forge": __version__}
    for pkg in ("pythia8mc", "fastjet", "numpy", "h5py"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def generate_events(
    process: str,
    n: int,
    seed: int,
    pileup_mean: float = DEFAULT_PILEUP,
    n_workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    *,
    run: int = 1,
    shard_events: int = DEFAULT_SHARD_EVENTS,
    response: DetectorResponse | None = None,
    catalogue: str | Path | None = None,
) -> EventSet:
    """Generate ``n`` events of ``process`` reduced to Level-1 objects (reproducible by seed)."""
    if not isinstance(n, int) or n <= 0:
        raise ConfigError(f"n: the number of events must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(pileup_mean) and 0 <= pileup_mean <= 300):
        raise ConfigError(f"pileup_mean: must be in [0, 300], got {pileup_mean!r}")
    if n_workers < 1 or shard_events < 1:
        raise ConfigError("n_workers and shard_events must be >= 1")
    proc = get_process(process, load_processes(catalogue) if catalogue else None)
    response = response or DetectorResponse()
    sizes = [min(shard_events, n - i) for i in range(0, n, shard_events)]
    pileup = None
    if pileup_mean > 0:
        pu_seed = _pythia_seed(_seed_sequence(seed, "pileup-library", 0))
        pileup = PileupLibrary.generate(pu_seed, PILEUP_LIBRARY_EVENTS, response)
    specs = [
        ShardSpec(proc, k, i, seed, float(pileup_mean), response, pileup)
        for i, k in enumerate(sizes)
    ]
    results = _run_shards(specs, n_workers, scheduler, progress)
    objects = np.concatenate([r.objects_phys for r in results])
    bin_index = np.concatenate([r.bin_index for r in results])
    # cross section per bin: the event-weighted mean of the shards' estimates
    n_bins = max(1, len(proc.pthat_bins))
    weight = np.zeros(n, dtype=np.float32)
    sigma_bins = []
    for b in range(n_bins):
        cnt = np.array([r.counts[b] for r in results], dtype=float)
        sig = np.array([r.sigma_pb[b] for r in results], dtype=float)
        total = cnt.sum()
        sigma = float((cnt * sig).sum() / total) if total else 0.0
        sigma_bins.append(sigma)
        weight[bin_index == b] = sigma / total if total else 0.0
    provenance = {
        "generator": "pythia8",
        "sqrt_s_gev": SQRT_S_GEV,
        "process": asdict(proc),
        "n": n,
        "seed": seed,
        "shard_events": shard_events,
        "pythia_seeds": [list(r.pythia_seeds) for r in results],
        "pileup": {
            "mean": pileup_mean,
            "method": "premixed minbias library, one per dataset",
            "library_events": PILEUP_LIBRARY_EVENTS,
        },
        "sigma_pb_per_bin": sigma_bins,
        "failed_pythia_events": sum(r.failures for r in results),
        "detector_response": asdict(response),
        "versions": _versions(),
    }
    return EventSet(
        objects_phys=objects,
        objects_hw=to_hardware(objects),
        run=np.full(n, run, dtype=np.uint64),
        event=np.arange(1, n + 1, dtype=np.uint64),
        label=np.zeros(n, dtype=np.int16),
        weight=weight,
        processes=(proc.name,),
        provenance=provenance,
    )


def demo_dataset(
    out_dir: str | Path,
    n_background: int,
    n_signal: int,
    seed: int,
    pileup_mean: float = DEFAULT_PILEUP,
    n_workers: int = 1,
) -> Path:
    """A small study: ``background.h5`` (minbias) and ``signals.h5`` (the four 2021 signals).

    Returns the folder holding both; existing files made with the same arguments are reused.
    """
    out = Path(out_dir)
    bg, sig = out / "background.h5", out / "signals.h5"
    stamp = out / "demo_dataset.json"
    args = {
        "n_background": n_background,
        "n_signal": n_signal,
        "seed": seed,
        "pileup_mean": pileup_mean,
    }
    import json

    if bg.is_file() and sig.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == args:
        return out
    write_events(bg, generate_events("minbias", n_background, seed, pileup_mean, n_workers))
    sets = [
        generate_events(p, n_signal, seed + 1 + i, pileup_mean, n_workers)
        for i, p in enumerate(SIGNALS_2021)
    ]
    write_events(sig, concat_events(sets))
    stamp.write_text(json.dumps(args))
    return out


def describe(events: EventSet) -> dict[str, Any]:
    """Counts and mean object multiplicities per process (for summaries)."""
    from l1forge.sim.l1objects import OBJECT_SLICES

    out: dict[str, Any] = {}
    for i, name in enumerate(events.processes):
        sel = events.objects_phys[events.label == i]
        mult = {
            t: float((sel[:, s, 0] > 0).sum(axis=1).mean()) if len(sel) else 0.0
            for t, s in OBJECT_SLICES.items()
            if t != "met"
        }
        out[name] = {
            "events": len(sel),
            "mean_multiplicity": mult,
            "mean_met_gev": float(sel[:, 0, 0].mean()) if len(sel) else 0.0,
            "sigma_pb": float(events.weight[events.label == i].sum()),
        }
    return out
