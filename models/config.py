"""Network and training configuration: frozen dataclasses read once from YAML and validated.

Bit widths follow QKeras' ``quantized_bits(bits, integer)`` convention: ``integer`` counts the
bits above the binary point *without* the sign bit (ap_fixed<bits, integer + 1>).
``quantized_relu(bits, integer)`` is unsigned: ap_ufixed<bits, integer>.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from l1forge.errors import ConfigError

NETWORK_KINDS = ("ad", "classifier")


@dataclass(frozen=True)
class NetConfig:
    """Layer sizes and bit widths of one network (the encoder for the anomaly detector)."""

    kind: str = "ad"
    n_inputs: int = 57
    input_hw_bits: int = 16  # the signed hardware integer word of each input
    input_bits: int = 14  # the input quantizer after scaling
    input_integer: int = 7
    hidden: tuple[int, ...] = (32, 16)
    latent: int = 3  # AD: latent means; ignored for the classifier (one logit)
    weight_bits: int = 8
    weight_integer: int = 0
    bias_bits: int = 8
    bias_integer: int = 3
    act_bits: int = 8
    act_integer: int = 4
    out_bits: int = 12  # AD: latent means before the score; classifier: the logit
    out_integer: int = 5
    decoder: tuple[int, ...] = (16, 32)  # AD training only

    @property
    def n_outputs(self) -> int:
        return self.latent if self.kind == "ad" else 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 1e-3
    beta_kl: float = 0.5  # weight of the KL term of the VAE loss
    validation_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class Config:
    network: NetConfig = field(default_factory=NetConfig)
    training: TrainConfig = field(default_factory=TrainConfig)


def _check_int(where: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{where}: expected an integer in {lo}..{hi}, got {v!r}")
    return v


def _validate_net(n: NetConfig) -> None:
    if n.kind not in NETWORK_KINDS:
        raise ConfigError(f"network.kind: expected one of {NETWORK_KINDS}, got {n.kind!r}")
    _check_int("network.n_inputs", n.n_inputs, 1, 4096)
    _check_int("network.input_hw_bits", n.input_hw_bits, 2, 32)
    for key in ("input_bits", "weight_bits", "bias_bits", "act_bits", "out_bits"):
        _check_int(f"network.{key}", getattr(n, key), 2, 24)
    for key in ("input_integer", "weight_integer", "bias_integer", "out_integer"):
        bits = getattr(n, key.replace("integer", "bits"))
        _check_int(f"network.{key}", getattr(n, key), -8, bits - 1)
    _check_int("network.act_integer", n.act_integer, -8, n.act_bits)
    _check_int("network.latent", n.latent, 1, 64)
    for key in ("hidden", "decoder"):
        sizes = getattr(n, key)
        if not sizes and key == "hidden":
            raise ConfigError("network.hidden: at least one hidden layer is needed")
        for i, s in enumerate(sizes):
            _check_int(f"network.{key}[{i}]", s, 1, 1024)


def _validate_train(t: TrainConfig) -> None:
    _check_int("training.epochs", t.epochs, 0, 100000)
    _check_int("training.batch_size", t.batch_size, 1, 1 << 20)
    _check_int("training.seed", t.seed, 0, 2**31 - 1)
    for key, lo, hi in (
        ("learning_rate", 0.0, 1.0),
        ("beta_kl", 0.0, 1e3),
        ("validation_fraction", 0.0, 0.9),
    ):
        v = getattr(t, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ConfigError(f"training.{key}: expected a number in [{lo}, {hi}], got {v!r}")
    if t.learning_rate <= 0:
        raise ConfigError("training.learning_rate: must be positive")


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key; known: {sorted(names)}")
        if key in ("hidden", "decoder"):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}.{key}: expected a list of layer sizes, got {value!r}")
            value = tuple(value)
        kw[key] = value
    return cls(**kw)


def make_config(raw: dict[str, Any] | None = None) -> Config:
    """A validated Config from a plain mapping with optional `network` and `training` sections."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("configuration: expected a mapping at the top level")
    unknown = set(raw) - {"network", "training"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section; known: network, training")
    cfg = Config(
        network=_section(NetConfig, raw.get("network"), "network"),
        training=_section(TrainConfig, raw.get("training"), "training"),
    )
    _validate_net(cfg.network)
    _validate_train(cfg.training)
    return cfg


def load_config(path: str | Path | None, kind: str | None = None) -> Config:
    """Read a YAML configuration (or the defaults when ``path`` is None); ``kind`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    cfg = make_config(raw)
    if kind is not None and cfg.network.kind != kind:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, kind=kind))
        _validate_net(cfg.network)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for key in ("hidden", "decoder"):
        d["network"][key] = list(d["network"][key])
    return d
