"""The continual learner's settings: windows, fine-tuning, acceptance and candidate choice.

Validated when made (``ConfigError`` naming the field, by `l1forge.config.check_fields`);
``LearnerConfig.settings`` expands the candidate overrides into the configurations one
adaptation trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from l1forge.config import Real, Section, check_fields, one_of
from l1forge.errors import ConfigError
from l1forge.online.learning.drift import DriftConfig

RUNTIME_KINDS = ("thresholds", "offsets", "scaling")  # see online.learning.runtime

NonNegative = Annotated[Real, Field(ge=0.0)]


@dataclass(frozen=True)
class LearnerConfig(Section):
    """Windows, fine-tuning and acceptance settings of the continual learner."""

    check_events: int = 5000  # zero-bias events per drift-test window
    adapt_events: int = 15000  # events of the new conditions collected before fine-tuning
    # of those, kept out of training for the acceptance checks
    holdout_fraction: Annotated[Real, Field(gt=0.0, lt=0.9)] = 0.2
    replay_capacity: int = 20000  # reservoir of older events
    # share of replayed events in the fine-tuning set
    replay_fraction: Annotated[Real, Field(ge=0.0, lt=1.0)] = 0.5
    epochs: int = 30  # the setting measured in benchmarks/continual.py
    batch_size: int = 512
    learning_rate: float = 1e-3
    beta_kl: float | None = None  # None: the parent's training value (0.5 when unknown)
    seed: int = 0
    max_rate_error: float = 0.10  # relative, or 3 Poisson sigma when that is larger
    max_tpr_loss: float = 0.10  # relative loss of held-out signal efficiency vs the parent
    verify_vectors: int = 20000  # random vectors besides the corners for the bit-exact check
    # input scaling of the fine-tuned firmware: refitted on the "new" events, on the training
    # "mix" (new + replayed), or the parent's ("none")
    refit_scaling: Annotated[str, one_of(("new", "mix", "none"))] = "new"
    # against forgetting: distillation of the parent's latent means (mu) on replayed old events,
    # as a fraction of the parent's mean sum(mu**2) there, and an L2 anchor of the weights to
    # the parent's (relative to the parent's mean squared weight); 0 switches a term off
    distill_weight: NonNegative = 0.0
    anchor_weight: NonNegative = 0.0
    distill_target: Annotated[str, one_of(("mu", "score"))] = (
        "mu"  # "mu": every latent mean; "score": only sum(mu**2)
    )
    reinit: bool = False  # train from fresh weights instead of the parent's (a retraining)
    # held-out signal efficiency on the old conditions (``reference_signal`` at thresholds
    # calibrated on the reference zero bias): relative loss vs the parent allowed
    max_old_tpr_loss: float = 0.10
    old_check_seeds: tuple[str, ...] = ()  # the rate seeds that check; empty: every rate seed
    # several fine-tune settings tried per adaptation (overrides of these fields, e.g.
    # {"seed": 2} or {"reinit": True, "replay_fraction": 0.0}); every one trained is registered.
    # candidate_choice "first": tried in order, the first that passes goes live (the rest are not
    # trained); "best": all are trained, the passing one with the best held-out efficiency wins.
    # Default: the fine-tune, then retrainings on the new events alone (benchmarks/continual.py)
    candidates: tuple[Mapping[str, Any], ...] = (
        {},
        {"reinit": True, "replay_fraction": 0.0},
        {"reinit": True, "replay_fraction": 0.0, "seed": 2},
    )
    candidate_choice: Annotated[str, one_of(("first", "best"))] = "first"
    # before any training, what the firmware changes at run time (``runtime``: thresholds, then
    # input offsets, then offsets and shifts), checked like a candidate; one passes only if its
    # held-out signal efficiency is also at least runtime_min_efficiency x the efficiency the
    # live configuration had on its own conditions. Only when none passes is a new network
    # (a new bitstream) trained.
    runtime_first: bool = True
    # the run-time changes the firmware offers (a bank built without input scaling: thresholds)
    runtime_kinds: tuple[Annotated[str, one_of(RUNTIME_KINDS)], ...] = RUNTIME_KINDS
    runtime_min_efficiency: Annotated[Real, Field(ge=0.0, le=1.0)] = 0.9
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        check_fields(self, "learner")
        if self.check_events < self.drift.min_events:
            raise ConfigError("learner.check_events must be >= drift.min_events")
        if self.adapt_events < self.check_events:
            raise ConfigError("learner.adapt_events must be >= learner.check_events")
        for over in self.candidates:
            bad = set(over) - (_CANDIDATE_FIELDS - {"candidates", "drift", *_RUNTIME_FIELDS})
            if bad:
                raise ConfigError(
                    f"learner.candidates: {sorted(bad)} cannot vary per candidate; use fields "
                    "such as seed, epochs, learning_rate, replay_fraction, distill_weight, reinit"
                )
            dataclasses.replace(self, candidates=(), **over)  # validates the values

    def settings(self) -> list[LearnerConfig]:
        """The fine-tune configurations tried in one adaptation."""
        return [dataclasses.replace(self, candidates=(), **o) for o in self.candidates] or [self]


_CANDIDATE_FIELDS = {f.name for f in dataclasses.fields(LearnerConfig)}
_RUNTIME_FIELDS = {"runtime_first", "runtime_min_efficiency", "runtime_kinds"}
