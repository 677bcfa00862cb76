"""Session fixtures: small trained QKeras networks, their qnet IRs and compiled hls4ml models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from .configs import BIT_CONFIGS, SHIPPED


@dataclass(frozen=True)
class Built:
    cfg: Any
    deploy: Any
    net: Any
    hls: Any


def _train_a_few_steps(cfg, scaling, x, seed):
    import tensorflow as tf

    from l1forge.models import networks

    tf.keras.utils.set_random_seed(seed)
    if cfg.kind == "ad":
        models = networks.vae_models(cfg, scaling, beta_kl=0.5)
        models.vae.compile(optimizer=tf.keras.optimizers.Adam(3e-2))
        models.vae.fit(x.astype(np.float32), epochs=1, batch_size=128, verbose=0)
        return models.hardware
    model = networks.hardware_model(cfg, scaling)
    y = (np.abs(x[:, :3]).sum(axis=1) > np.median(np.abs(x[:, :3]).sum(axis=1))).astype(np.float32)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(3e-2),
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model.fit(x.astype(np.float32), y, epochs=1, batch_size=128, verbose=0)
    return model


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(config name, kind) -> Built, each trained for a few steps and compiled once per session."""
    from l1forge.models import hls, networks
    from l1forge.models.config import SHIPPED_AD_CONFIG, NetConfig, load_config
    from l1forge.models.export import export_qnet

    cache: dict[tuple[str, str], Built] = {}

    def get(config_name: str, kind: str) -> Built:
        key = (config_name, kind)
        if key not in cache:
            if config_name == SHIPPED:
                cfg = load_config(SHIPPED_AD_CONFIG).network.hardware()
                assert cfg.kind == kind, f"the shipped hardware network is a {cfg.kind}"
            else:
                cfg = dataclasses.replace(NetConfig(kind=kind), **BIT_CONFIGS[config_name])
            rng = np.random.default_rng(7)
            x = np.rint(
                rng.normal(0, 200, (1536, cfg.n_inputs)) + rng.integers(-50, 50, cfg.n_inputs)
            )
            scaling = networks.fit_input_scaling(x)
            trained = _train_a_few_steps(cfg, scaling, x, seed=3)
            deploy = networks.deploy_model(cfg, scaling, trained)
            net = export_qnet(deploy, name=f"{kind}_{config_name}")
            out = tmp_path_factory.mktemp(f"hls_{kind}_{config_name}")
            hm = hls.compile_csim(
                hls.convert(deploy, out, project_name=f"net_{kind}_{config_name}")
            )
            cache[key] = Built(cfg, deploy, net, hm)
        return cache[key]

    return get
