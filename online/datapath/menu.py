"""The trigger menu: seeds (a model's score above a threshold, prescaled), calibration, decisions.

A seed fires when its model's real-valued score is strictly above its threshold (the hardware
comparator's ``>``); a zero-bias seed (model ``""``) passes every event. Prescales are
counter-free: seed ``s`` with prescale ``p`` keeps an event with sequence number ``seq`` when
``splitmix64(seq * GOLDEN + crc32(s.name)) % p == 0``. The rule depends only on the event's
sequence number and the seed's name, so a decision never depends on which worker saw the
event, on batch boundaries or on the seed's position in the menu; it keeps 1/p of passing
events on average, spread without the periodic pattern of ``seq % p``.

Rates are per second of ``input_rate_hz`` input (40 MHz bunch crossings by default): a seed
with output rate R and prescale p passes a fraction R * p / input_rate_hz before the prescale.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from l1forge.errors import ConfigError
from l1forge.models.evaluate import LHC_INPUT_RATE_HZ, threshold_for_rate

if TYPE_CHECKING:
    from l1forge.online.config import RunConfig

log = logging.getLogger(__name__)

MAX_SEEDS = 32  # seed_bits is uint32
ZERO_BIAS = ""  # the model name of a seed that passes every event
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class Seed:
    """One trigger bit. ``threshold`` inf = not calibrated yet (fires nothing)."""

    name: str
    model: str
    threshold: float = math.inf
    prescale: int = 1
    target_rate_hz: float | None = None

    def __post_init__(self) -> None:
        where = f"menu seed {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("menu seed name: must be a non-empty string")
        if not isinstance(self.model, str):
            raise ConfigError(f"{where}: model must be a model name or '' for zero bias")
        if isinstance(self.prescale, bool) or not isinstance(self.prescale, int | np.integer):
            raise ConfigError(f"{where}: prescale must be an integer >= 1, got {self.prescale!r}")
        if self.prescale < 1:
            raise ConfigError(f"{where}: prescale must be >= 1, got {self.prescale}")
        t = self.threshold
        if not isinstance(t, int | float) or math.isnan(t) or t == -math.inf:
            raise ConfigError(
                f"{where}: threshold must be a number (inf = not calibrated), got {t!r}; "
                "use a zero-bias seed (model '') to pass every event"
            )
        r = self.target_rate_hz
        if r is not None and (not isinstance(r, int | float) or not math.isfinite(r) or r <= 0):
            raise ConfigError(f"{where}: target_rate_hz must be a positive number, got {r!r}")

    @property
    def zero_bias(self) -> bool:
        return self.model == ZERO_BIAS


def prescale_keep(seqs: np.ndarray, seed_name: str, prescale: int) -> np.ndarray:
    """Which events a prescale of ``prescale`` keeps (bool (N,)), from sequence numbers alone."""
    seqs = np.asarray(seqs, dtype=np.uint64)
    if prescale == 1:
        return np.ones(seqs.shape, dtype=bool)
    with np.errstate(over="ignore"):
        z = seqs * _GOLDEN + np.uint64(zlib.crc32(seed_name.encode()))
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return z % np.uint64(prescale) == 0


@dataclass(frozen=True)
class Menu:
    """An ordered set of seeds: seed ``i`` is bit ``i`` of ``seed_bits``."""

    seeds: tuple[Seed, ...]
    input_rate_hz: float = LHC_INPUT_RATE_HZ

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ConfigError("menu.seeds: a menu needs at least one seed")
        if len(self.seeds) > MAX_SEEDS:
            raise ConfigError(f"menu.seeds: at most {MAX_SEEDS} seeds, got {len(self.seeds)}")
        r = self.input_rate_hz
        if not isinstance(r, int | float) or not math.isfinite(r) or r <= 0:
            raise ConfigError(f"menu.input_rate_hz: must be a positive number, got {r!r}")
        names = [s.name for s in self.seeds]
        for s in self.seeds:
            if not isinstance(s, Seed):
                raise ConfigError(f"menu.seeds: {s!r} is not a Seed")
            if names.count(s.name) > 1:
                raise ConfigError(f"menu seed {s.name!r}: the name is used twice")
            if s.target_rate_hz is not None and s.target_rate_hz * s.prescale >= r:
                raise ConfigError(
                    f"menu seed {s.name!r}: target_rate_hz {s.target_rate_hz} x prescale "
                    f"{s.prescale} is not below the input rate {r} Hz"
                )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.seeds)

    @property
    def models(self) -> tuple[str, ...]:
        """The models the menu reads, in first-use order (zero bias excluded)."""
        return tuple(dict.fromkeys(s.model for s in self.seeds if not s.zero_bias))

    def check_models(self, available: Iterable[str]) -> None:
        """ConfigError naming the first seed whose model is not among ``available``."""
        avail = set(available)
        for s in self.seeds:
            if not s.zero_bias and s.model not in avail:
                raise ConfigError(
                    f"menu seed {s.name!r}: unknown model {s.model!r} "
                    f"(the run has {', '.join(sorted(avail)) or 'no models'})"
                )

    def decide(
        self,
        scores: Mapping[str, np.ndarray],
        seqs: np.ndarray,
        *,
        prescale: bool = True,
        fired_by: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Seed bits uint32 (N,) of events with per-model scores (N,) and sequence numbers.

        ``fired_by`` gives the threshold decision of some seeds (by name, bool (N,)) instead of
        ``score > threshold``: the firmware's seed bits; their prescales still apply here.
        """
        seqs = np.asarray(seqs, dtype=np.uint64)
        self.check_models(scores)
        given = fired_by or {}
        bits = np.zeros(len(seqs), dtype=np.uint32)
        for i, s in enumerate(self.seeds):
            if s.zero_bias:
                fired = np.ones(len(seqs), dtype=bool)
            elif s.name in given:
                fired = np.asarray(given[s.name], dtype=bool).copy()
                if fired.shape != seqs.shape:
                    raise ConfigError(
                        f"menu seed {s.name!r}: given decisions have shape {fired.shape}, "
                        f"sequence numbers {seqs.shape}"
                    )
            else:
                sc = np.asarray(scores[s.model])
                if sc.shape != seqs.shape:
                    raise ConfigError(
                        f"menu seed {s.name!r}: {s.model} scores shape {sc.shape}, "
                        f"sequence numbers {seqs.shape}"
                    )
                fired = sc > s.threshold
            if prescale and s.prescale > 1:
                fired &= prescale_keep(seqs, s.name, s.prescale)
            bits |= fired.astype(np.uint32) << np.uint32(i)
        return bits

    def calibrate(self, zero_bias_scores: Mapping[str, np.ndarray]) -> Menu:
        """A menu whose seeds with a ``target_rate_hz`` get the threshold giving that rate
        (after prescale) on the zero-bias sample; other seeds are kept as they are."""
        seeds = []
        for s in self.seeds:
            if s.target_rate_hz is None or s.zero_bias:
                seeds.append(s)
                continue
            if s.model not in zero_bias_scores:
                raise ConfigError(
                    f"menu seed {s.name!r}: no zero-bias scores of model {s.model!r} to calibrate"
                )
            bg = np.asarray(zero_bias_scores[s.model], dtype=np.float64)
            if len(bg) == 0:
                raise ConfigError(f"menu seed {s.name!r}: the zero-bias sample is empty")
            fpr = s.target_rate_hz * s.prescale / self.input_rate_hz
            if fpr * len(bg) < 10:
                log.warning(
                    "seed %s: %d zero-bias events give fewer than 10 above a %.2g pass fraction;"
                    " its threshold is poorly determined (use >= %d events)",
                    s.name,
                    len(bg),
                    fpr,
                    math.ceil(10 / fpr),
                )
            t, _ = threshold_for_rate(bg, s.target_rate_hz * s.prescale, self.input_rate_hz)
            seeds.append(replace(s, threshold=float(t)))
        return replace(self, seeds=tuple(seeds))

    def counts(self, seed_bits: np.ndarray) -> dict[str, int]:
        """Events fired by each seed (by name) among ``seed_bits``."""
        return dict(zip(self.names, seed_counts(seed_bits, len(self.seeds)).tolist(), strict=True))

    def rates_hz(self, counts: Mapping[str, int], n_events: int) -> dict[str, float]:
        """Output rates at ``input_rate_hz`` input from counts among ``n_events`` events."""
        if n_events <= 0:
            return {k: 0.0 for k in counts}
        return {k: v / n_events * self.input_rate_hz for k, v in counts.items()}

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (threshold null = not calibrated)."""
        return {
            "input_rate_hz": self.input_rate_hz,
            "seeds": [
                {
                    "name": s.name,
                    "model": s.model,
                    "threshold": s.threshold if math.isfinite(s.threshold) else None,
                    "prescale": s.prescale,
                    "target_rate_hz": s.target_rate_hz,
                }
                for s in self.seeds
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | str) -> Menu:
        """The menu of ``to_json`` (a dict or its JSON text); ConfigError names the bad key."""
        if isinstance(doc, str):
            try:
                doc = json.loads(doc)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"menu: not valid JSON ({exc})") from exc
        if not isinstance(doc, Mapping) or not isinstance(doc.get("seeds"), list):
            raise ConfigError("menu: expected an object with a 'seeds' list")
        unknown = set(doc) - {"input_rate_hz", "seeds"}
        if unknown:
            raise ConfigError(f"menu: unknown keys {sorted(unknown)}")
        seeds = []
        for i, d in enumerate(doc["seeds"]):
            if not isinstance(d, Mapping):
                raise ConfigError(f"menu.seeds[{i}]: expected an object")
            keys = {"name", "model", "threshold", "prescale", "target_rate_hz"}
            if set(d) - keys or not {"name", "model"} <= set(d):
                raise ConfigError(
                    f"menu.seeds[{i}] ({d.get('name')!r}): keys must be name, model and any of "
                    f"threshold, prescale, target_rate_hz; got {sorted(d)}"
                )
            t = d.get("threshold")
            seeds.append(
                Seed(
                    name=d["name"],
                    model=d["model"],
                    threshold=math.inf if t is None else t,
                    prescale=d.get("prescale", 1),
                    target_rate_hz=d.get("target_rate_hz"),
                )
            )
        return cls(tuple(seeds), doc.get("input_rate_hz", LHC_INPUT_RATE_HZ))


def seed_counts(seed_bits: np.ndarray, n_seeds: int) -> np.ndarray:
    """int64 (n_seeds,): how many events fired each seed."""
    bits = np.asarray(seed_bits, dtype=np.uint32)
    shifts = np.arange(n_seeds, dtype=np.uint32)
    if bits.size == 0:
        return np.zeros(n_seeds, dtype=np.int64)
    return ((bits[:, None] >> shifts) & np.uint32(1)).sum(axis=0, dtype=np.int64)


AD_SEED_RATES_HZ = {
    "AD_VLoose": 10_000.0,
    "AD_Loose": 5_000.0,
    "AD_Nominal": 2_000.0,
    "AD_Tight": 1_000.0,
    "AD_VTight": 400.0,
}


def default_menu(
    ad_model: str = "ad",
    classifier_model: str | None = "classifier",
    *,
    classifier_rate_hz: float = 1_000.0,
    zero_bias_prescale: int = 1000,
    input_rate_hz: float = LHC_INPUT_RATE_HZ,
) -> Menu:
    """Five anomaly-detector seeds (10 kHz .. 400 Hz), a classifier seed and a prescaled
    zero-bias seed; thresholds are set by ``Menu.calibrate``."""
    seeds = [Seed(n, ad_model, target_rate_hz=r) for n, r in AD_SEED_RATES_HZ.items()]
    if classifier_model:
        seeds.append(Seed("Classifier", classifier_model, target_rate_hz=classifier_rate_hz))
    seeds.append(Seed("ZeroBias", ZERO_BIAS, prescale=zero_bias_prescale))
    return Menu(tuple(seeds), input_rate_hz)


# ---- the menu of a run ----


def zero_bias_scores(models: Mapping[str, str], path: str | Path) -> dict[str, np.ndarray]:
    """Each model's score (its first output, real valued) on the events of an HDF5 file."""
    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator
    from l1forge.online.datapath.backends import outputs_float
    from l1forge.sim.dataset import read_events

    x = read_events(path).inputs
    out = {}
    for name, ir in models.items():
        net = qnet.load(ir)
        with Emulator(net) as emu:
            out[name] = outputs_float(net, emu.run(x))[:, 0]
    return out


def configured_menu(cfg: RunConfig) -> Menu:
    """The run's seeds as configured (or the default menu), thresholds not yet calibrated."""
    models = cfg.backend.models
    if cfg.menu.seeds is None:
        ad = "ad" if "ad" in models else next(iter(models))
        cls = "classifier" if "classifier" in models else None
        return default_menu(ad, cls, input_rate_hz=cfg.menu.input_rate_hz)
    seeds = tuple(
        Seed(
            s.name,
            s.model,
            threshold=math.inf if s.threshold is None else s.threshold,
            prescale=s.prescale,
            target_rate_hz=s.target_rate_hz,
        )
        for s in cfg.menu.seeds
    )
    return Menu(seeds, cfg.menu.input_rate_hz)


def build_menu(cfg: RunConfig) -> Menu:
    """The run's menu: configured seeds (or the default menu), thresholds calibrated from
    `target_rate_hz` on the calibration file (or the replay file) where none is given."""
    models = cfg.backend.models
    menu = configured_menu(cfg)
    menu.check_models(models)
    todo = [s.target_rate_hz is not None and s.threshold == math.inf for s in menu.seeds]
    if not any(todo):
        return menu
    path = cfg.menu.calibration or (cfg.source.paths[0] if cfg.source.paths else None)
    if path is None:
        raise ConfigError(
            "menu.calibration: seeds with target_rate_hz need a zero-bias HDF5 file to set "
            "their thresholds (or give each seed a threshold)"
        )
    calibrated = menu.calibrate(zero_bias_scores(models, path))
    seeds = tuple(c if t else s for s, c, t in zip(menu.seeds, calibrated.seeds, todo, strict=True))
    log.info("menu calibrated on %s", path)
    return replace(menu, seeds=seeds)
