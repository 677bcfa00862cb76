"""Network and training configuration: frozen dataclasses read once from YAML and validated.

Bit widths follow QKeras' ``quantized_bits(bits, integer)`` convention: ``integer`` counts the
bits above the binary point *without* the sign bit (ap_fixed<bits, integer + 1>).
``quantized_relu(bits, integer)`` is unsigned: ap_ufixed<bits, integer>.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from l1forge.config import Int, KeyedError, Real, Section, one_of, read_yaml, validate
from l1forge.errors import ConfigError

NETWORK_KINDS = ("ad", "classifier")
# The anomaly score that goes to hardware: the sum of squared latent means of the VAE encoder
# (AXOL1TL), or a small student network regressing the VAE's reconstruction error (CICADA-style
# knowledge distillation: the teacher VAE is trained, then the student learns log(MSE)).
AD_SCORES = ("latent_mu2", "student")

Bits = Annotated[Int, Field(ge=2, le=24)]
IntegerBits = Annotated[Int, Field(ge=-8)]  # at most bits - 1: checked by NetConfig
Layers = tuple[Annotated[Int, Field(ge=1, le=1024)], ...]


@dataclass(frozen=True)
class NetConfig(Section):
    """Layer sizes and bit widths of one network (the encoder for the anomaly detector)."""

    kind: Annotated[str, one_of(NETWORK_KINDS)] = "ad"
    n_inputs: Annotated[Int, Field(ge=1, le=4096)] = 57
    # the signed hardware integer word of each input
    input_hw_bits: Annotated[Int, Field(ge=2, le=32)] = 16
    input_bits: Bits = 14  # the input quantizer after scaling
    input_integer: IntegerBits = 7
    hidden: Annotated[Layers, Field(min_length=1)] = (32, 16)
    latent: Annotated[Int, Field(ge=1, le=64)] = 3  # AD: latent means; classifier: one logit
    weight_bits: Bits = 8
    weight_integer: IntegerBits = 0
    bias_bits: Bits = 8
    bias_integer: IntegerBits = 3
    act_bits: Bits = 8
    act_integer: IntegerBits = 4
    out_bits: Bits = 12  # AD: latent means before the score; classifier: the logit
    out_integer: IntegerBits = 5
    decoder: Layers = (16, 32)  # AD training only
    score: Annotated[str, one_of(AD_SCORES)] = "latent_mu2"  # AD only
    student_hidden: Annotated[Layers, Field(min_length=1)] = (16,)  # AD score "student" only

    @property
    def n_outputs(self) -> int:
        return self.latent if self.kind == "ad" else 1

    @model_validator(mode="after")
    def _integer_within_bits(self) -> NetConfig:
        for key in ("input_integer", "weight_integer", "bias_integer", "out_integer"):
            bits = getattr(self, key.replace("integer", "bits"))
            if getattr(self, key) > bits - 1:
                raise KeyedError(key, f"expected at most {bits - 1}, got {getattr(self, key)}")
        if self.act_integer > self.act_bits:
            raise KeyedError("act_integer", f"expected at most {self.act_bits}")
        if self.score != "latent_mu2" and self.kind != "ad":
            raise KeyedError("score", f"a score {self.score!r} needs kind 'ad'")
        return self

    def hardware(self) -> NetConfig:
        """The network that goes to hardware: the encoder, or the student for score "student"."""
        if self.kind == "ad" and self.score == "student":
            return dataclasses.replace(
                self, kind="classifier", hidden=self.student_hidden, score="latent_mu2"
            )
        return self


@dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation settings."""

    epochs: Annotated[Int, Field(ge=0, le=100000)] = 20
    batch_size: Annotated[Int, Field(ge=1, le=1 << 20)] = 1024
    learning_rate: Annotated[Real, Field(gt=0.0, le=1.0)] = 1e-3
    beta_kl: Annotated[Real, Field(ge=0.0, le=1e3)] = 0.5  # weight of the VAE loss's KL term
    # the KL weight rises linearly from 0 to beta_kl over these first epochs (0: constant)
    kl_warmup_epochs: Annotated[Int, Field(ge=0, le=100000)] = 0
    validation_fraction: Annotated[Real, Field(ge=0.0, le=0.9)] = 0.2
    seed: Annotated[Int, Field(ge=0, le=2**31 - 1)] = 0


@dataclass(frozen=True)
class Config(Section):
    network: NetConfig = field(default_factory=NetConfig)
    training: TrainConfig = field(default_factory=TrainConfig)


# What `l1forge train ad` trains without --config (and so the demo): the network measured best
# for hardware in docs/models.md ("score variants for hardware"). The dataclass defaults above
# stay the first-wave Σμ² encoder that the reference encoder and the tests build.
SHIPPED_AD_CONFIG = Path(__file__).with_name("ad_shipped.yaml")


def make_config(raw: dict[str, Any] | None = None) -> Config:
    """A validated Config from a plain mapping with optional `network` and `training` sections."""
    return validate(Config, raw)


def load_config(
    path: str | Path | None, kind: str | None = None, training: dict[str, Any] | None = None
) -> Config:
    """Read a YAML configuration (or the defaults when ``path`` is None); ``kind`` and the
    ``training`` keys given override the file's."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"configuration file not found: {path}")
        raw = read_yaml(path, "configuration") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    if kind is not None or training:
        raw = config_to_dict(make_config(raw))
        raw["network"]["kind"] = kind or raw["network"]["kind"]
        raw["training"].update(training or {})
    return make_config(raw)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for key in ("hidden", "decoder", "student_hidden"):
        d["network"][key] = list(d["network"][key])
    return d
