"""Fine-tuning of a trained VAE anomaly detector, and the bit-exactness check of its export.

What the continual learner (``l1forge.online.learning``) runs when conditions drift:
quantization-aware training from a parent's weights (optionally on refitted input scaling, with
distillation and a weight anchor against forgetting), export of the encoder to the qnet IR and
a check that the IR reproduces QKeras bit for bit. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from l1forge.errors import ConfigError, L1ForgeError
from l1forge.models.emulator import Emulator
from l1forge.models.qnet import QNet

if TYPE_CHECKING:
    from l1forge.models.config import NetConfig
    from l1forge.models.networks import InputScaling, VAEModels


class VerificationError(L1ForgeError, RuntimeError):
    """An exported IR does not reproduce its QKeras model bit for bit: it must not be deployed."""


class FineTuneOptions(Protocol):
    """The training settings ``fine_tune`` reads (``online.learning.LearnerConfig`` has them)."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def reinit(self) -> bool: ...
    @property
    def distill_weight(self) -> float: ...
    @property
    def distill_target(self) -> str: ...
    @property
    def anchor_weight(self) -> float: ...


def flat_inputs(objects_hw: np.ndarray) -> np.ndarray:
    """Hardware events (N, 19, 3) or (N, 57) as int64 network inputs (N, 57)."""
    x = np.asarray(objects_hw)
    return x.reshape(len(x), -1).astype(np.int64, copy=False)


def scaling_of(net: QNet) -> InputScaling:
    """The input scaling (offsets, shifts) of an IR's ``scale`` layer."""
    from l1forge.models.networks import InputScaling

    lay = net.layer("scale")
    return InputScaling(offset=lay.arrays["offset"].copy(), shift=lay.arrays["shift"].copy())


@dataclass(frozen=True)
class FineTuned:
    """A fine-tuned network: its float64 deploy model, exported IR and saved weights."""

    deploy: Any
    net: QNet
    weights: Path


def rescaled_vae(
    net_cfg: NetConfig, old: InputScaling, new: InputScaling, parent: VAEModels, beta_kl: float
) -> VAEModels:
    """A VAE on input scaling ``new`` computing what ``parent`` (on ``old``) computes.

    Scaled inputs relate by x_old = x_new * 2**(s_new - s_old) + (o_new - o_old) * 2**-s_old,
    so the first dense layer takes W * 2**(s_new - s_old) and b + W^T (o_new - o_old) 2**-s_old
    (exact before quantization; quantization-aware training then settles the rest).
    """
    from l1forge.models import networks

    m = networks.vae_models(net_cfg, new, beta_kl)
    src = {layer.name: layer for layer in parent.vae.layers}
    for layer in m.vae.layers:
        if layer.weights and layer.name != "scale":
            layer.set_weights(src[layer.name].get_weights())
    dense = m.vae.get_layer("dense0")
    w, b = (np.asarray(a, np.float64) for a in dense.get_weights())
    s_old, s_new = old.shift.astype(np.float64), new.shift.astype(np.float64)
    delta = (new.offset - old.offset).astype(np.float64) * 2.0**-s_old
    dense.set_weights([w * (2.0 ** (s_new - s_old))[:, None], b + delta @ w])
    return m


def fine_tune(
    net_cfg: NetConfig,
    parent_net: QNet,
    parent_weights: Path,
    x_train: np.ndarray,
    cfg: FineTuneOptions,
    out_weights: Path,
    beta_kl: float = 0.5,
    scaling_events: np.ndarray | None = None,
    old_events: np.ndarray | None = None,
) -> FineTuned:
    """QAT of the VAE from the parent's weights on ``x_train``; export its encoder to the IR.

    With ``scaling_events`` the firmware's input offsets and shifts are refitted on them (the
    new conditions) and the first layer is rewritten to match before training. ``old_events``
    (older conditions) carry the distillation term when ``cfg.distill_weight`` > 0.
    """
    import tensorflow as tf

    from l1forge.models import networks
    from l1forge.models.config import Config, TrainConfig, config_to_dict
    from l1forge.models.export import export_qnet

    if net_cfg.kind != "ad":
        raise ConfigError("continual fine-tuning is implemented for the VAE anomaly detector only")
    scaling = scaling_of(parent_net)
    tf.keras.utils.set_random_seed(cfg.seed)
    m = networks.vae_models(net_cfg, scaling, beta_kl)
    m.vae.load_weights(str(parent_weights))
    # the IR's scaling, not the weights file's: a run-time register change of the scaling keeps
    # the weights file of the version it changed
    networks.set_input_scaling(m.vae.get_layer("scale"), scaling)
    m_parent = m
    if scaling_events is not None:
        new = networks.fit_input_scaling(flat_inputs(scaling_events))
        m = rescaled_vae(net_cfg, scaling, new, m, beta_kl)
        scaling = new
    if cfg.reinit:  # a retraining from freshly initialised weights (seeded), same architecture
        m = networks.vae_models(net_cfg, scaling, beta_kl)
    parent_mu = None
    if cfg.distill_weight > 0.0:
        if old_events is None or len(old_events) == 0:
            raise ConfigError("learner.distill_weight > 0 needs replayed old events to distil on")
        parent_mu = _latent_means(m_parent, old_events)
    _train(m, x_train, cfg, old_events, parent_mu)
    m.vae.save_weights(str(out_weights))
    deploy = networks.deploy_model(net_cfg, scaling, m.hardware)
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        beta_kl=beta_kl,
        seed=cfg.seed,
    )
    config = config_to_dict(Config(network=net_cfg, training=train_cfg))
    net = export_qnet(deploy, name=parent_net.name, config=config)
    return FineTuned(deploy, net, out_weights)


def _latent_means(m: VAEModels, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Quantized latent means (the ``mu`` layer) of a VAE for hardware events (N, features)."""
    import tensorflow as tf

    mu = tf.keras.Model(m.vae.input, m.vae.get_layer("mu").output)
    return np.asarray(mu.predict(flat_inputs(x).astype(np.float32), batch_size, verbose=0))


_ENCODER_PREFIXES = ("dense", "mu_dense")


def _train(
    m: VAEModels, x_train: np.ndarray, cfg: FineTuneOptions, x_old: np.ndarray | None, mu_old: Any
) -> None:
    """Adam on the VAE loss over ``x_train`` plus the anti-forgetting terms of ``cfg``.

    Distillation: mean over a batch of old events of sum((mu - mu_parent)**2), divided by the
    parent's mean sum(mu**2) on them. Anchor: sum((w - w_parent)**2) / sum(w_parent**2) over the
    hardware encoder's weights (the weights the training starts from).
    """
    import tensorflow as tf

    rng = np.random.default_rng(cfg.seed)
    x_train = np.asarray(x_train, np.float32)
    variables = m.vae.trainable_variables
    optimizer = tf.keras.optimizers.Adam(cfg.learning_rate)
    mu_model = tf.keras.Model(m.vae.input, m.vae.get_layer("mu").output)
    anchored = [
        v
        for layer in m.vae.layers
        if layer.name.startswith(_ENCODER_PREFIXES)
        for v in layer.trainable_weights
    ]
    anchors = [tf.constant(v.numpy()) for v in anchored]
    anchor_norm = float(sum(np.sum(np.square(a.numpy())) for a in anchors)) or 1.0
    old: tuple[np.ndarray, np.ndarray] | None = None  # (old events, distillation targets)
    distill_norm = 1.0
    if cfg.distill_weight > 0.0 and mu_old is not None and x_old is not None:
        targets = np.asarray(mu_old, np.float32)
        distill_norm = float(np.mean(np.sum(np.square(targets), axis=1))) or 1.0
        if cfg.distill_target == "score":
            targets = np.sum(np.square(targets), axis=1, keepdims=True)
            distill_norm = float(np.mean(np.square(targets))) or 1.0
        old = (np.asarray(flat_inputs(x_old), np.float32), targets)
    distill = old is not None

    @tf.function
    def step(xb, ob, tb):
        with tf.GradientTape() as tape:
            m.vae(xb, training=True)
            loss = tf.add_n(m.vae.losses)
            if distill:
                mu_b = mu_model(ob, training=True)
                if cfg.distill_target == "score":
                    mu_b = tf.reduce_sum(tf.square(mu_b), axis=1, keepdims=True)
                diff = mu_b - tb
                d = tf.reduce_mean(tf.reduce_sum(tf.square(diff), axis=1)) / distill_norm
                loss = loss + cfg.distill_weight * d
            if cfg.anchor_weight > 0.0:
                a = tf.add_n(
                    [
                        tf.reduce_sum(tf.square(v - c))
                        for v, c in zip(anchored, anchors, strict=True)
                    ]
                )
                loss = loss + cfg.anchor_weight * a / anchor_norm
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    n, bs = len(x_train), cfg.batch_size
    empty = np.zeros((0, x_train.shape[1]), np.float32)
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        old_order = rng.permutation(len(old[0])) if old is not None else None
        for k, i in enumerate(range(0, n, bs)):
            xb = x_train[order[i : i + bs]]
            if old is not None and old_order is not None:
                j = np.take(old_order, np.arange(k * bs, k * bs + len(xb)), mode="wrap")
                ob, tb = old[0][j], old[1][j]
            else:
                ob, tb = empty, np.zeros((0, 1), np.float32)
            step(xb, ob, tb)


def verify_bitexact(deploy: Any, net: QNet, n_random: int, seed: int = 0) -> int:
    """QKeras exact predict == emulator on the corners plus ``n_random`` vectors; returns count."""
    from l1forge.models.networks import exact_predict
    from l1forge.models.vectors import bitexact_vectors

    x = bitexact_vectors(net, n_random, seed=seed)
    y_keras = exact_predict(deploy, x)
    with Emulator(net) as emu:
        y_emu = emu.run_float(x)
    if y_keras.shape != y_emu.shape or not np.array_equal(y_keras, y_emu):
        bad = int(np.count_nonzero(np.any(y_keras != y_emu, axis=1)))
        raise VerificationError(
            f"exported IR {net.name!r} differs from its QKeras model on {bad} of {len(x)} "
            "vectors: not deployed (report this network's config as an exporter bug)"
        )
    return len(x)
