"""The reference encoder: the default anomaly detector trained on a fixed-seed Pythia sample.

Benchmarks and slow tests measure this network unless told otherwise, so every figure they
print describes the network the project ships. It is built once (events, training, export)
and cached under ``out/reference/``; a change of the recipe or of the default configuration
builds it again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1forge.errors import L1ForgeError

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("out/reference")
RECIPE_VERSION = 3  # bump when the way the encoder is built changes
NETWORK_SOURCES = ("trained", "random")


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the reference encoder is made: sample sizes, seed and pile-up of the Pythia sample."""

    n_background: int = 20_000
    n_signal: int = 2_000
    seed: int = 2024
    pileup_mean: float = 20.0


@dataclass(frozen=True)
class ReferenceEncoder:
    """Paths of the cached reference encoder and the sample it was trained on."""

    qnet_path: Path
    data_dir: Path
    summary_path: Path
    recipe: ReferenceRecipe
    network_source: str = "trained"

    @property
    def background_path(self) -> Path:
        return self.data_dir / "background.h5"

    @property
    def signals_path(self) -> Path:
        return self.data_dir / "signals.h5"

    def describe(self) -> str:
        r = self.recipe
        return (
            f"reference encoder: default config trained on {r.n_background} Pythia minimum-bias "
            f"events (seed {r.seed}, pile-up {r.pileup_mean:g}), {self.qnet_path}"
        )


def _stamp(recipe: ReferenceRecipe) -> dict[str, Any]:
    from l1forge.models.config import Config, config_to_dict

    cfg = config_to_dict(Config())
    recipe_d = dataclasses.asdict(recipe) | {"version": RECIPE_VERSION}
    key = json.dumps({"recipe": recipe_d, "config": cfg}, sort_keys=True)
    return {
        "recipe": recipe_d,
        "config": cfg,
        "key": hashlib.sha256(key.encode()).hexdigest(),
    }


def reference_encoder(
    cache: str | Path = DEFAULT_CACHE,
    recipe: ReferenceRecipe | None = None,
    n_workers: int = 2,
) -> ReferenceEncoder:
    """The cached reference encoder, generating its sample and training it on first use.

    First use takes a few minutes on 2 cores (about 28,000 Pythia events, then training).
    """
    from l1forge.models import qnet

    recipe = recipe or ReferenceRecipe()
    cache = Path(cache)
    ref = ReferenceEncoder(
        qnet_path=cache / "ad" / "encoder.qnet.json",
        data_dir=cache / "data",
        summary_path=cache / "ad" / "summary.json",
        recipe=recipe,
    )
    stamp_path = cache / "reference.json"
    want = _stamp(recipe)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = (cache / ".lock").open("w")
    except OSError as exc:
        raise L1ForgeError(f"reference encoder: cannot use the cache {cache}: {exc}") from exc
    with lock:
        # one builder at a time: a second caller (another benchmark) waits, then reuses it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ref.qnet_path.is_file() and stamp_path.is_file():
            if json.loads(stamp_path.read_text()).get("key") == want["key"]:
                qnet.load(ref.qnet_path)  # validates the cached IR (checksum, formats)
                return ref
            log.info("reference encoder: recipe or default config changed, building it again")
        _build(ref, n_workers)
        stamp_path.write_text(json.dumps(want, indent=1) + "\n")
    return ref


def reference_deploy_model(ref: ReferenceEncoder | None = None):
    """The reference encoder as its QKeras deploy network (checked bit-exact against the IR)."""
    from l1forge.models.train import load_deploy_model

    ref = ref or reference_encoder()
    return load_deploy_model(ref.qnet_path.parent)


def _build(ref: ReferenceEncoder, n_workers: int) -> None:
    from l1forge.models.config import Config
    from l1forge.models.train import Inputs, read_inputs, train
    from l1forge.sim.generate import demo_dataset

    r = ref.recipe
    log.info("building the %s", ref.describe())
    ref.data_dir.mkdir(parents=True, exist_ok=True)
    demo_dataset(ref.data_dir, r.n_background, r.n_signal, r.seed, r.pileup_mean, n_workers)
    cfg = Config()
    bits = cfg.network.input_hw_bits
    bg = read_inputs(ref.background_path, bits)
    sig = read_inputs(ref.signals_path, bits)
    train(cfg, bg, Inputs(sig.by_process), ref.qnet_path.parent)
