"""The QKeras networks: an AXOL1TL-style VAE anomaly detector and a small supervised classifier.

Both share the hardware part: the signed hardware input word, the firmware's input scaling
``(x - offset) * 2**-shift`` per feature (a frozen BatchNormalization whose scale is a power of
two, which hls4ml and the qnet IR both take exactly), an input quantizer, and QDense +
quantized_relu layers. The anomaly score is sum(mu**2) of the quantized latent means.

Training models compute in float32 with straight-through quantizers; ``deploy_model`` rebuilds
the same network in float64 with the quantizers' exact forward pass, the reference for the
bit-exact comparisons (float32 cannot hold a 28-bit accumulator).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from qkeras import QActivation, QDense, quantized_bits, quantized_relu

from l1forge.errors import ConfigError
from l1forge.models.config import NetConfig

# Keras' BatchNormalization wants epsilon > 0; this one vanishes next to the unit variance in
# float32 and float64, so the layer's scale is exactly gamma.
_BN_EPSILON = 1e-30


@dataclass(frozen=True)
class InputScaling:
    """Per-feature integer offset and right shift applied to hardware integers in firmware."""

    offset: np.ndarray
    shift: np.ndarray

    def apply(self, x_hw: np.ndarray) -> np.ndarray:
        """Scaled real values (exact in float64)."""
        return (np.asarray(x_hw, np.float64) - self.offset) * 2.0 ** (-self.shift.astype(float))


def fit_input_scaling(x_hw: np.ndarray, max_shift: int = 12) -> InputScaling:
    """Offset = rounded mean, shift = ceil(log2(std)) >= 0, so scaled features have std <= 1."""
    x = np.asarray(x_hw, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"input scaling needs a non-empty (N, features) array, got {x.shape}")
    offset = np.rint(x.mean(axis=0)).astype(np.int64)
    std = x.std(axis=0)
    shift = np.ceil(np.log2(np.maximum(std, 1.0))).astype(np.int64)
    return InputScaling(offset=offset, shift=np.clip(shift, 0, max_shift))


@contextlib.contextmanager
def floatx(dtype: str) -> Iterator[None]:
    """Build Keras layers with ``dtype`` as the default float type, restoring it afterwards."""
    old = tf.keras.backend.floatx()
    tf.keras.backend.set_floatx(dtype)
    try:
        yield
    finally:
        tf.keras.backend.set_floatx(old)


def set_input_scaling(scale: Any, scaling: InputScaling) -> None:
    """Give the fixed batch-norm layer ``scale`` the firmware's offsets and shifts."""
    gamma = 2.0 ** (-scaling.shift.astype(np.float64))
    n = len(gamma)
    scale.set_weights([gamma, -scaling.offset * gamma, np.zeros(n), np.ones(n)])


def _qbits(bits: int, integer: int) -> quantized_bits:
    return quantized_bits(bits, integer, keep_negative=True, alpha=1)


def _hardware_trunk(cfg: NetConfig, scaling: InputScaling, exact: bool):
    """Input -> hardware word -> scaling -> input quantizer -> hidden QDense/ReLU layers."""
    x_in = tf.keras.Input((cfg.n_inputs,), name="x")
    h = QActivation(_qbits(cfg.input_hw_bits, cfg.input_hw_bits - 1), name="x_hw")(x_in)
    scale = tf.keras.layers.BatchNormalization(epsilon=_BN_EPSILON, trainable=False, name="scale")
    h = scale(h)
    set_input_scaling(scale, scaling)
    x_q = QActivation(_qbits(cfg.input_bits, cfg.input_integer), name="x_q")(h)
    h = x_q
    for i, n in enumerate(cfg.hidden):
        h = _qdense(cfg, n, f"dense{i}")(h)
        relu = quantized_relu(cfg.act_bits, cfg.act_integer, use_ste=not exact)
        h = QActivation(relu, name=f"relu{i}")(h)
    return x_in, x_q, h


def _qdense(cfg: NetConfig, n: int, name: str) -> QDense:
    return QDense(
        n,
        kernel_quantizer=_qbits(cfg.weight_bits, cfg.weight_integer),
        bias_quantizer=_qbits(cfg.bias_bits, cfg.bias_integer),
        kernel_initializer="lecun_uniform",
        name=name,
    )


def _head(cfg: NetConfig, h):
    """AD: quantized latent means (mu); classifier: the quantized logit."""
    name = "mu" if cfg.kind == "ad" else "logit"
    out = _qdense(cfg, cfg.n_outputs, f"{name}_dense")(h)
    return QActivation(_qbits(cfg.out_bits, cfg.out_integer), name=name)(out)


def hardware_model(cfg: NetConfig, scaling: InputScaling, exact: bool = False) -> tf.keras.Model:
    """The network that goes to hardware: raw hardware integers in, one score out."""
    x_in, _, h = _hardware_trunk(cfg, scaling, exact)
    head = _head(cfg, h)
    if cfg.kind == "ad":
        score = tf.keras.layers.Dot(axes=1, name="score")([head, head])
        return tf.keras.Model(x_in, score, name="ad_encoder")
    return tf.keras.Model(x_in, head, name="classifier")


class _Sampling(tf.keras.layers.Layer):
    """z = mu + exp(logvar / 2) * N(0, 1): the VAE's reparametrisation."""

    def call(self, inputs):
        mu, logvar = inputs
        eps = tf.random.normal(tf.shape(mu), dtype=mu.dtype)
        return mu + tf.exp(0.5 * logvar) * eps


class _Untracked:
    """Holds a variable out of Keras' weight tracking (plain objects are not traversed)."""

    __slots__ = ("var",)

    def __init__(self, var: tf.Variable) -> None:
        self.var = var


class _KLWeight(tf.keras.layers.Layer):
    """beta * KL with beta a variable a warm-up callback can change. beta is not a layer weight,
    so VAE weight files keep their layout (older files load, a fine-tune keeps its own beta)."""

    def __init__(self, beta_kl: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta_kl = float(beta_kl)
        self._holder = _Untracked(tf.Variable(self.beta_kl, trainable=False, dtype=tf.float32))

    @property
    def beta(self) -> tf.Variable:
        return self._holder.var

    def call(self, kl):
        return tf.cast(self.beta, kl.dtype) * kl


class KLWarmup(tf.keras.callbacks.Callback):
    """Linear KL warm-up: beta = beta_kl * min(1, epoch / epochs) at the start of each epoch."""

    def __init__(self, kl_weight: _KLWeight, beta_kl: float, epochs: int) -> None:
        super().__init__()
        self.kl_weight, self.beta_kl, self.epochs = kl_weight, float(beta_kl), int(epochs)

    def beta_at(self, epoch: int) -> float:
        return self.beta_kl * min(1.0, epoch / self.epochs) if self.epochs else self.beta_kl

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.kl_weight.beta.assign(self.beta_at(epoch))


@dataclass(frozen=True)
class VAEModels:
    """The VAE training graph and the models sharing its layers."""

    vae: tf.keras.Model  # x -> reconstruction; losses attached (recon MSE + beta * KL)
    hardware: tf.keras.Model  # x -> sum(mu**2), the hardware encoder + score
    recon_score: tf.keras.Model  # x -> reconstruction MSE from mu (alternative score)
    kl_weight: _KLWeight | None = None  # holds beta; KLWarmup changes it during training

    def warmup(self, epochs: int) -> KLWarmup:
        """The callback raising beta linearly from 0 over the first ``epochs`` epochs."""
        if self.kl_weight is None:
            raise ConfigError("this VAE has no KL weight to warm up")
        return KLWarmup(self.kl_weight, self.kl_weight.beta_kl, epochs)


def vae_models(cfg: NetConfig, scaling: InputScaling, beta_kl: float) -> VAEModels:
    """Build the float32 training VAE; the encoder is the hardware network."""
    if cfg.kind != "ad":
        raise ConfigError("network.kind: a VAE is built for kind 'ad' only")
    x_in, x_q, h = _hardware_trunk(cfg, scaling, exact=False)
    mu = _head(cfg, h)
    logvar = tf.keras.layers.Dense(cfg.latent, name="logvar")(h)
    z = _Sampling(name="sampling")([mu, logvar])
    decoder = [
        tf.keras.layers.Dense(n, activation="relu", name=f"dec{i}")
        for i, n in enumerate(cfg.decoder)
    ]
    decoder.append(tf.keras.layers.Dense(cfg.n_inputs, name="recon"))

    def decode(t):
        for layer in decoder:
            t = layer(t)
        return t

    recon = decode(z)
    target = tf.stop_gradient(x_q)
    vae = tf.keras.Model(x_in, recon, name="vae")
    recon_loss = tf.reduce_mean(tf.square(recon - target))
    kl = -0.5 * tf.reduce_mean(tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar), axis=1))
    kl_weight = _KLWeight(beta_kl, name="beta_kl")
    vae.add_loss(recon_loss + kl_weight(kl))
    vae.add_metric(recon_loss, name="recon")
    vae.add_metric(kl, name="kl")
    score = tf.keras.layers.Dot(axes=1, name="score")([mu, mu])
    hardware = tf.keras.Model(x_in, score, name="ad_encoder")
    mse = tf.reduce_mean(tf.square(decode(mu) - x_q), axis=1, keepdims=True)
    return VAEModels(vae, hardware, tf.keras.Model(x_in, mse, name="recon_score"), kl_weight)


def deploy_model(cfg: NetConfig, scaling: InputScaling, trained: tf.keras.Model) -> tf.keras.Model:
    """The hardware network in float64 with exact quantizers, weights copied by layer name."""
    with floatx("float64"):
        model = hardware_model(cfg, scaling, exact=True)
    src = {layer.name: layer for layer in trained.layers}
    for layer in model.layers:
        if layer.weights and layer.name != "scale":
            if layer.name not in src:
                raise ConfigError(f"trained model has no layer {layer.name!r} to deploy")
            layer.set_weights([np.asarray(w, np.float64) for w in src[layer.name].get_weights()])
    return model


def exact_predict(model: tf.keras.Model, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """QKeras predict of a deploy model in float64 (quantizers read the float type at call time)."""
    with floatx("float64"):
        y = model.predict(np.asarray(x, np.float64), batch_size=batch_size, verbose=0)
    return np.asarray(y, np.float64).reshape(len(x), -1)
