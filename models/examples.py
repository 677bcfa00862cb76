"""Example user models for the import checks: the hls4ml tutorial's jet tagger, as written there.

16 inputs -> QDense 64 -> 32 -> 32 -> 5, ``quantized_bits(6, 0, alpha=1)`` weights and biases,
``quantized_relu(6)`` activations, a linear 5-logit head (the tutorial's softmax dropped: a
trigger cuts on a score), trained briefly on random data so the weights are not the
initializer's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

JET_TAGGER_INPUT_FORMAT = "ap_fixed<16,6>"  # hls4ml's default precision, the tutorial's input


def jet_tagger(
    seed: int = 0, epochs: int = 2, functional: bool = False, softmax: bool = False
) -> Any:
    """The tutorial jet tagger (Sequential, or the same layers through the functional API)."""
    import tensorflow as tf
    from qkeras import QActivation, QDense, quantized_bits, quantized_relu

    tf.keras.utils.set_random_seed(seed)

    def qdense(n: int, name: str) -> QDense:
        return QDense(
            n,
            kernel_quantizer=quantized_bits(6, 0, alpha=1),
            bias_quantizer=quantized_bits(6, 0, alpha=1),
            kernel_initializer="lecun_uniform",
            kernel_regularizer=tf.keras.regularizers.l1(1e-4),
            name=name,
        )

    layers: list[Any] = []
    for i, n in enumerate((64, 32, 32)):
        layers += [qdense(n, f"fc{i + 1}"), QActivation(quantized_relu(6), name=f"relu{i + 1}")]
    layers.append(qdense(5, "output"))
    if softmax:
        layers.append(tf.keras.layers.Activation("softmax", name="softmax"))
    inp = tf.keras.Input((16,), name="input_1")
    if functional:
        h = inp
        for lay in layers:
            h = lay(h)
        model = tf.keras.Model(inp, h, name="jet_tagger_functional")
    else:
        model = tf.keras.Sequential([inp, *layers], name="jet_tagger")
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (2048, 16)).astype(np.float32)
    y = tf.keras.utils.to_categorical(rng.integers(0, 5, 2048), 5)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-2),
        loss=tf.keras.losses.CategoricalCrossentropy(from_logits=not softmax),
    )
    model.fit(x, y, epochs=epochs, batch_size=256, verbose=0)
    return model


def batchnorm_mlp(seed: int = 4) -> Any:
    """10 -> QDense 16 -> BatchNormalization -> quantized_relu(6, 0) -> QDense 5, a batch norm
    as a Keras user leaves it: float gamma/beta/mean/var, scales of both signs, none a power
    of two (set from ``seed``, not trained). The import takes it as the IR's affine op."""
    import tensorflow as tf
    from qkeras import QActivation, QDense, quantized_bits, quantized_relu

    tf.keras.utils.set_random_seed(seed)

    def qdense(n: int, name: str) -> QDense:
        return QDense(
            n,
            kernel_quantizer=quantized_bits(6, 0, alpha=1),
            bias_quantizer=quantized_bits(6, 0, alpha=1),
            name=name,
        )

    bn = tf.keras.layers.BatchNormalization(name="bn")
    model = tf.keras.Sequential(
        [
            tf.keras.Input((10,)),
            qdense(16, "fc1"),
            bn,
            QActivation(quantized_relu(6, 0), name="relu1"),
            qdense(5, "out"),
        ],
        name="bn_net",
    )
    rng = np.random.default_rng(seed - 3)
    gamma = rng.uniform(0.3, 2.0, 16) * np.where(np.arange(16) % 5 == 0, -1.0, 1.0)
    bn.set_weights(
        [gamma, rng.normal(0, 0.5, 16), rng.normal(0, 0.3, 16), rng.uniform(0.2, 3.0, 16)]
    )
    return model
