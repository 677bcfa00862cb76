"""QKeras model -> qnet IR: integer weights and every tensor's exact fixed-point format.

QKeras quantizers round half to even and saturate (RND_CONV, SAT), as hls4ml types them.
Weights take the narrowest format that holds their quantized values (hls4ml's bit-exact flow
does the same), so the inferred layer outputs equal hls4ml's result precisions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from l1forge.errors import DataFormatError
from l1forge.models.build import NetBuilder
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import QNet

QKERAS_ROUNDING = "RND_CONV"  # tf.round: half to even
QKERAS_OVERFLOW = "SAT"  # clip to the representable range


def minimal_fixed(values: np.ndarray) -> tuple[Fixed, np.ndarray]:
    """The narrowest format holding real ``values`` exactly, and their integers in it."""
    v = np.asarray(values, dtype=np.float64)
    frac = 0
    nz = v[v != 0]
    if nz.size:
        frac = -32
        while np.any(nz * 2.0**frac != np.round(nz * 2.0**frac)):
            frac += 1
            if frac > 52:
                raise DataFormatError("weights are not fixed-point numbers (> 52 fractional bits)")
    q = np.round(v * 2.0**frac).astype(np.int64)
    return Fixed.covering(int(q.min()), int(q.max()), frac), q


def _quantizer(layer: Any, attr: str) -> Any:
    q = getattr(layer, attr)
    return q[0] if isinstance(q, list) else q


def _bits_format(q: Any, where: str) -> Fixed:
    name = type(q).__name__
    if name != "quantized_bits":
        raise DataFormatError(f"{where}: quantizer {name} is not supported (quantized_bits only)")
    if q.alpha not in (1, 1.0) or not q.keep_negative or q.symmetric:
        raise DataFormatError(f"{where}: quantized_bits needs alpha=1, keep_negative, asymmetric")
    return Fixed(True, int(q.bits), int(q.integer) + 1)


def _relu_format(q: Any, where: str) -> Fixed:
    if q.negative_slope != 0 or q.use_sigmoid or q.relu_upper_bound is not None:
        raise DataFormatError(f"{where}: only a plain quantized_relu is supported")
    return Fixed(False, int(q.bits), int(q.integer))


def _scale_arrays(layer: tf.keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in layer.get_weights())
    scale = gamma / np.sqrt(var + layer.epsilon)
    shift = -np.log2(scale)
    if np.any(shift != np.round(shift)):
        raise DataFormatError(f"{layer.name}: input scaling must multiply by powers of two")
    offset = mean - beta / scale
    if np.any(offset != np.round(offset)):
        raise DataFormatError(f"{layer.name}: input scaling offsets must be integers")
    return np.round(offset).astype(np.int64), np.round(shift).astype(np.int64)


def export_qnet(model: tf.keras.Model, name: str | None = None, **provenance: Any) -> QNet:
    """Translate a chain of l1forge QKeras layers into a qnet IR with exact formats."""
    layers = [lay for lay in model.layers if not isinstance(lay, tf.keras.layers.InputLayer)]
    if not layers or type(layers[0]).__name__ != "QActivation":
        raise DataFormatError("the model must start with a quantized_bits QActivation on its input")
    first = layers[0]
    in_fmt = _bits_format(_quantizer(first, "quantizer"), first.name)
    if in_fmt.frac_bits != 0:
        raise DataFormatError(f"{first.name}: hardware inputs must be integers (0 fraction bits)")
    b = NetBuilder(name or model.name, int(model.input_shape[-1]), in_fmt, model.input_names[0])
    for lay in layers[1:]:
        kind = type(lay).__name__
        where = f"layer {lay.name!r}"
        if kind == "BatchNormalization":
            offset, shift = _scale_arrays(lay)
            o_fmt = Fixed.covering(int(offset.min()), int(offset.max()), 0)
            b.scale(lay.name, offset, o_fmt, shift)
        elif kind == "QActivation":
            q = _quantizer(lay, "quantizer")
            if type(q).__name__ == "quantized_relu":
                b.relu(lay.name, _relu_format(q, where), QKERAS_ROUNDING, QKERAS_OVERFLOW)
            else:
                b.quantize(lay.name, _bits_format(q, where), QKERAS_ROUNDING, QKERAS_OVERFLOW)
        elif kind == "QDense":
            if lay.activation.__name__ != "linear":
                raise DataFormatError(f"{where}: put activations in their own QActivation layer")
            kernel = lay.kernel_quantizer_internal(lay.kernel).numpy()
            bias = lay.bias_quantizer_internal(lay.bias).numpy()
            w_fmt, w = minimal_fixed(kernel)
            b_fmt, bq = minimal_fixed(bias)
            b.dense(lay.name, w, w_fmt, bq, b_fmt)
        elif kind == "Dot":
            srcs = {t.name for t in lay.input} if isinstance(lay.input, list) else set()
            if len(srcs) != 1:
                raise DataFormatError(f"{where}: only the dot product of a tensor with itself")
            b.sum_squares(lay.name)
        else:
            raise DataFormatError(f"{where}: layer type {kind} has no qnet IR op")
    prov = {"producer": "l1forge.models.export", "keras_model": model.name, **provenance}
    return b.build(provenance=prov)
