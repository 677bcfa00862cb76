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
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from l1forge import __version__
from l1forge.errors import ConfigError, L1ForgeError
from l1forge.sim.dataset import EventSet, concat_events, write_events
from l1forge.sim.l1objects import DetectorResponse, reduce_events, to_hardware
from l1forge.sim.processes import SIGNALS_2021, Process, get_process, load_processes

log = logging.getLogger(__name__)

SQRT_S_GEV = 13600.0
DEFAULT_PILEUP = 20.0
DEFAULT_SHARD_EVENTS = 5000
PILEUP_LIBRARY_EVENTS = 50_000
REDUCE_BATCH = 250  # events reduced to Level-1 objects together (numpy over the batch)
# Bump when the events made from the same arguments change (cached libraries and datasets
# made by an older version are then not reused): 2 = L1 tower jets, one shared library.
GENERATOR_VERSION = 2
PILEUP_LIBRARY_SEED = 20_000  # fixed: one library serves every dataset
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


def _final_particles(pythia, n: int, pt_min: float, max_failures: int, state: dict[str, int]):
    """The next ``n`` events' final-state particles other than neutrinos above ``pt_min``.

    Pythia's batch interface (``nextBatch``, an awkward array) translates the records in C++;
    returns (event index, rows of (id, px, py, pz)) as numpy, float64.
    """
    import awkward as ak

    got = []
    while n > 0:
        batch = pythia.nextBatch(n, "none")  # failed events come back as None
        ok = ~ak.to_numpy(ak.is_none(batch, axis=0))
        state["failures"] += int((~ok).sum())
        if state["failures"] > max_failures:
            raise GenerationError(f"Pythia failed {state['failures']} times in one shard")
        good = batch[ok]
        got.append(good.prt)
        n -= len(good)
    prt = got[0] if len(got) == 1 else ak.concatenate(got)
    pid = np.abs(prt.id)
    p = prt.p
    keep = (prt.status > 0) & (pid != 12) & (pid != 14) & (pid != 16)
    keep = keep & (p.px * p.px + p.py * p.py > pt_min * pt_min)
    sel = prt[keep]
    counts = ak.to_numpy(ak.num(sel, axis=1))
    rows = np.column_stack(
        [
            ak.to_numpy(ak.flatten(x)).astype(np.float64)
            for x in (sel.id, sel.p.px, sel.p.py, sel.p.pz)
        ]
    ).reshape(-1, 4)
    return np.repeat(np.arange(len(counts)), counts), rows


class PileupLibrary:
    """A pool of minimum-bias events to overlay; overlays rotate in phi and flip in z.

    Stored flat: ``particles`` float32 rows of (id, px, py, pz) and ``offsets`` (n_events + 1)
    delimiting each event; ``sha256`` identifies the content (recorded in provenance).
    """

    def __init__(self, particles: np.ndarray, offsets: np.ndarray):
        self.particles = np.ascontiguousarray(particles, dtype=np.float32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.particles) or len(self) < 1:
            raise GenerationError("pile-up library: offsets do not delimit its particles")
        h = hashlib.sha256(self.particles.tobytes())
        h.update(self.offsets.tobytes())
        self.sha256 = h.hexdigest()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def generate(cls, seed: int, n_events: int, response: DetectorResponse) -> PileupLibrary:
        pythia = _make_pythia(get_process("minbias").settings, seed)
        event, rows = _final_particles(
            pythia, n_events, response.particle_pt_min, n_events, {"failures": 0}
        )
        offsets = np.searchsorted(event, np.arange(n_events + 1))
        return cls(rows, offsets)

    @classmethod
    def cached(cls, seed: int, n_events: int, response: DetectorResponse) -> PileupLibrary:
        """The library for (settings, seed, size), generated once and kept as ``.npz``."""
        key_text = json.dumps(
            {
                "settings": [str(SQRT_S_GEV), *get_process("minbias").settings],
                "seed": seed,
                "events": n_events,
                "particle_pt_min": response.particle_pt_min,
                "generator_version": GENERATOR_VERSION,
                "pythia8mc": _versions().get("pythia8mc", ""),
            },
            sort_keys=True,
        )
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        path = _cache_dir() / f"pileup-{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    return cls(f["particles"], f["offsets"])
            except (OSError, ValueError, KeyError, GenerationError) as exc:
                log.warning("pile-up library %s unreadable (%s): generating it again", path, exc)
        log.info("generating a pile-up library of %d minimum-bias events", n_events)
        lib = cls.generate(seed, n_events, response)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, particles=lib.particles, offsets=lib.offsets)
        tmp.replace(path)
        return lib

    def overlay(
        self, counts: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``counts[i]`` random library events for each event i: (event index, rows)."""
        k = int(counts.sum())
        picks = rng.integers(0, len(self), k)
        angle = rng.uniform(-math.pi, math.pi, k)
        flip = rng.choice([-1.0, 1.0], k)
        sizes = self.offsets[picks + 1] - self.offsets[picks]
        total = int(sizes.sum())
        ramp = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        out = self.particles[np.repeat(self.offsets[picks], sizes) + ramp].astype(np.float64)
        angle, flip = np.repeat(angle, sizes), np.repeat(flip, sizes)
        c, s = np.cos(angle), np.sin(angle)
        px, py = out[:, 1].copy(), out[:, 2].copy()
        out[:, 1], out[:, 2], out[:, 3] = c * px - s * py, s * px + c * py, out[:, 3] * flip
        event = np.repeat(np.repeat(np.arange(len(counts)), counts), sizes)
        return event, out


def generate_shard(spec: ShardSpec, progress: bool = False) -> ShardResult:
    """Generate one shard: Pythia events with pile-up, reduced to Level-1 objects."""
    from tqdm import tqdm

    ss = _seed_sequence(spec.seed, spec.process.name, spec.index)
    ss_hard, ss_rng = ss.spawn(2)
    rng = np.random.default_rng(ss_rng)
    library = spec.pileup if spec.pileup_mean > 0 else None
    if spec.pileup_mean > 0 and library is None:
        raise GenerationError("a shard with pile-up needs its pile-up library")
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
            k = min(REDUCE_BATCH, n_bin - done)
            event, parts = _final_particles(
                pythia, k, spec.response.particle_pt_min, max(100, spec.n), state
            )
            if library is not None:
                pu_event, pu = library.overlay(rng.poisson(spec.pileup_mean, k), rng)
                event = np.concatenate([event, pu_event])
                parts = np.concatenate([parts, pu])
                order = np.argsort(event, kind="stable")
                event, parts = event[order], parts[order]
            objects.append(reduce_events(event, parts, k, spec.response, rng))
            bin_index += [b] * k
            done += k
            bar.update(k)
        sigmas.append(pythia.infoPython().sigmaGen() * MB_TO_PB)
    bar.close()
    return ShardResult(
        objects_phys=np.concatenate(objects).astype(np.float32).reshape(-1, 19, 3),
        bin_index=np.asarray(bin_index, dtype=np.int16),
        sigma_pb=tuple(sigmas),
        counts=tuple(per_bin),
        pythia_seeds=tuple(seeds),
        failures=state["failures"],
    )


def _shard_with_library(spec: ShardSpec, library: PileupLibrary | None) -> ShardResult:
    """Dask task: the library arrives once per worker (scattered), not with every shard."""
    return generate_shard(replace(spec, pileup=library))


def _worker_environ() -> dict[str, Any]:
    """dask's environment for the local workers, without its ``MALLOC_TRIM_THRESHOLD_``.

    dask sets the trim threshold to 64 kB, so glibc hands every large numpy temporary of the
    pile-up overlay and the Level-1 reduction back to the kernel and faults it in again: measured
    here, a shard ran at 262-279 events/s in such a worker against 308 events/s in-process
    (7 % of it from the variable alone); without it, 285-315 events/s.
    """
    import dask
    import distributed  # noqa: F401  (loads distributed's configuration defaults)

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def local_cluster(n_workers: int):
    """The LocalCluster the generation starts: one single-threaded process per worker, started
    with ``_worker_environ``."""
    import dask
    from dask.distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}):
        return LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )


def _run_shards(
    specs: list[ShardSpec], n_workers: int, scheduler: str | None, progress: bool
) -> list[ShardResult]:
    from tqdm import tqdm

    if scheduler is None and n_workers == 1:
        return [generate_shard(s, progress=progress) for s in specs]
    from dask.distributed import Client, as_completed

    cluster = local_cluster(n_workers) if scheduler is None else None
    try:
        with Client(scheduler or cluster) as client:
            library = specs[0].pileup if specs else None
            lib_ref = client.scatter(library, broadcast=True) if library is not None else None
            futures = [
                client.submit(_shard_with_library, replace(s, pileup=None), lib_ref, pure=False)
                for s in specs
            ]
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
    for pkg in ("pythia8mc", "awkward", "numpy", "scipy", "h5py"):
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
    pileup_library_events: int = PILEUP_LIBRARY_EVENTS,
    pileup_library_seed: int = PILEUP_LIBRARY_SEED,
) -> EventSet:
    """Generate ``n`` events of ``process`` reduced to Level-1 objects (reproducible by seed).

    Pile-up comes from one shared library of ``pileup_library_events`` minimum-bias events
    (made once per size and seed, cached on disk), the same for every dataset and worker.
    """
    if not isinstance(n, int) or n <= 0:
        raise ConfigError(f"n: the number of events must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(pileup_mean) and 0 <= pileup_mean <= 300):
        raise ConfigError(f"pileup_mean: must be in [0, 300], got {pileup_mean!r}")
    if n_workers < 1 or shard_events < 1:
        raise ConfigError("n_workers and shard_events must be >= 1")
    if not isinstance(pileup_library_events, int) or pileup_library_events < 1:
        raise ConfigError(
            f"pileup_library_events: must be a positive integer, got {pileup_library_events!r}"
        )
    proc = get_process(process, load_processes(catalogue) if catalogue else None)
    response = response or DetectorResponse()
    sizes = [min(shard_events, n - i) for i in range(0, n, shard_events)]
    pileup = None
    if pileup_mean > 0:
        pileup = PileupLibrary.cached(pileup_library_seed, pileup_library_events, response)
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
            "method": "premixed minbias library, shared by datasets and workers",
            "library_events": pileup_library_events if pileup else 0,
            "library_seed": pileup_library_seed if pileup else None,
            "library_sha256": pileup.sha256 if pileup else None,
        },
        "generator_version": GENERATOR_VERSION,
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
        "generator_version": GENERATOR_VERSION,
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
