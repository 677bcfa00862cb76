"""QKeras models as people write them -> qnet IR, exactly, or a one-line refusal.

Accepted: Sequential or functional chains of ``QDense`` (``quantized_bits`` kernel and bias
quantizers with alpha 1 or a fixed power of two; an inline ``quantized_relu``,
``quantized_bits``, relu or linear activation), ``QActivation``, ``Activation`` relu/linear,
``Dropout`` (inference identity), ``BatchNormalization`` (a power-of-two scale with an exact
offset is taken exactly as the IR's scaling op; any other becomes the IR's per-feature
``affine`` op x * mult + add with mult and add rounded to a stated fixed-point format, by
default hls4ml's ``ap_fixed<16,6>``), and the self dot product of the l1forge anomaly score.
Float inputs need a stated input format (``ap_fixed<16,6>``, the hls4ml convention) unless the
model starts with a ``quantized_bits`` QActivation, which then is the input format.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError, UnsupportedModelError
from l1forge.models.build import NetBuilder
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import QNet

QKERAS_ROUNDING = "RND_CONV"  # tf.round: half to even
QKERAS_OVERFLOW = "SAT"  # clip to the representable range
MAX_WEIGHT_BITS = 32  # a weight or bias format wider than this is not a quantized weight
SUPPORTED = (
    "QDense, QActivation, Activation(relu|linear), Dropout, BatchNormalization (power-of-two "
    "scales exactly, other scales as fixed-point x * mult + add), Dot(x, x)"
)
# hls4ml's default precision, used for a general batch normalization's mult and add
BN_FORMAT = Fixed(True, 16, 6)
BN_ROUNDING = "RND_CONV"  # mult and add are rounded to nearest (ties to even) into BN_FORMAT
ACTIVATIONS = "linear, relu, quantized_relu, quantized_bits"
TRIGGER_SCORE_HINT = (
    "drop it and cut on the logits (the trigger decision is a threshold on a monotonic score)"
)


def parse_format(text: str, what: str = "input format") -> Fixed:
    """``ap_fixed<W,I>`` / ``ap_ufixed<W,I>`` (hls4ml's notation, modes ignored) -> Fixed."""
    m = re.fullmatch(r"\s*(ap_u?fixed|u?fixed)\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,[^>]*)?>\s*", text)
    if not m:
        raise DataFormatError(f"{what} {text!r}: expected ap_fixed<W,I> or ap_ufixed<W,I>")
    return Fixed("ufixed" not in m.group(1), int(m.group(2)), int(m.group(3)))


def _refuse(layer: Any, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}): {what}")


def exact_fixed(values: np.ndarray, where: str) -> tuple[Fixed, np.ndarray]:
    """The narrowest format holding real ``values`` exactly, and their integers in it."""
    v = np.asarray(values, dtype=np.float64)
    nz = v[v != 0]
    frac = 0
    if nz.size:
        _, exp = np.frexp(nz)
        frac = -int(exp.max())  # start above the largest value's binary point
        while np.any(nz * 2.0**frac != np.round(nz * 2.0**frac)):
            frac += 1
            if frac > 60:
                raise UnsupportedModelError(f"{where}: values are not fixed-point numbers")
    q = np.round(v * 2.0**frac).astype(np.int64)
    fmt = Fixed.covering(int(q.min(initial=0)), int(q.max(initial=0)), frac)
    if fmt.width > MAX_WEIGHT_BITS:
        raise UnsupportedModelError(
            f"{where}: values need {fmt.hls_type()} (> {MAX_WEIGHT_BITS} bits); quantize them "
            "with quantized_bits (alpha=1 or a power of two)"
        )
    return fmt, q


def _quantizer_name(q: Any) -> str:
    if q is None:
        return "linear"
    if callable(q) and hasattr(q, "__name__"):
        return q.__name__  # a Keras activation function
    return type(q).__name__


def _bits_format(layer: Any, q: Any) -> Fixed:
    """Output format of an activation ``quantized_bits`` (alpha 1)."""
    if q.alpha not in (None, 1, 1.0) or q.symmetric:
        raise _refuse(
            layer,
            f"activation quantized_bits(alpha={q.alpha!r}, symmetric={q.symmetric}): "
            "supported alpha=1, symmetric=0 on activations",
        )
    if q.keep_negative:
        return Fixed(True, int(q.bits), int(q.integer) + 1)
    return Fixed(False, int(q.bits), int(q.integer))


def _relu_format(layer: Any, q: Any) -> Fixed:
    if q.negative_slope != 0 or q.use_sigmoid or q.relu_upper_bound is not None:
        raise _refuse(layer, "quantized_relu with a slope, sigmoid or upper bound: plain only")
    return Fixed(False, int(q.bits), int(q.integer))


def _activation(b: NetBuilder, layer: Any, q: Any, name: str) -> None:
    """Append the IR op of an activation (a quantizer object or a Keras function)."""
    kind = _quantizer_name(q)
    if kind == "linear":
        return
    if kind == "quantized_relu":
        b.relu(name, _relu_format(layer, q), QKERAS_ROUNDING, QKERAS_OVERFLOW)
    elif kind == "quantized_bits":
        b.quantize(name, _bits_format(layer, q), QKERAS_ROUNDING, QKERAS_OVERFLOW)
    elif kind == "relu":
        src = b.last_spec.fixed
        b.relu(name, Fixed.covering(0, max(src.max_int, 0), src.frac_bits))
    elif kind in ("softmax", "sigmoid", "quantized_sigmoid", "quantized_softmax"):
        raise _refuse(layer, f"activation {kind} is not imported: {TRIGGER_SCORE_HINT}")
    else:
        raise _refuse(layer, f"activation {kind}: supported {ACTIVATIONS}")


def _weights(layer: Any, attr: str, values: Any) -> np.ndarray:
    q = getattr(layer, f"{attr}_quantizer_internal", None)
    if q is None:
        return np.asarray(values, dtype=np.float64)
    if _quantizer_name(q) != "quantized_bits":
        raise _refuse(layer, f"{attr} quantizer {_quantizer_name(q)}: supported quantized_bits")
    if isinstance(q.alpha, str):
        raise _refuse(
            layer,
            f"{attr} quantizer alpha={q.alpha!r} is fitted to the weights at run time "
            "(and QKeras computes it in float32 only); supported: alpha=1 or a power of two",
        )
    if q.alpha not in (None, 1, 1.0) and not isinstance(q.alpha, str):
        a = np.asarray(q.alpha, np.float64)
        if np.any(np.exp2(np.round(np.log2(np.abs(a)))) != np.abs(a)):
            raise _refuse(layer, f"{attr} quantizer alpha {q.alpha!r}: powers of two only")
    from l1forge.models.networks import floatx

    exact = copy.copy(q)
    exact.use_ste = False  # the forward value itself (see reference_model)
    with floatx("float64"):
        return np.asarray(exact(np.asarray(values, np.float64)), dtype=np.float64)


def _dense(b: NetBuilder, layer: Any) -> None:
    kernel = _weights(layer, "kernel", layer.kernel)
    if layer.use_bias:
        bias = _weights(layer, "bias", layer.bias)
    else:
        bias = np.zeros(kernel.shape[1])
    w_fmt, w = exact_fixed(kernel, f"layer {layer.name!r} (QDense) kernel")
    b_fmt, bq = exact_fixed(bias, f"layer {layer.name!r} (QDense) bias")
    act = _quantizer_name(layer.activation)
    b.dense(layer.name if act == "linear" else f"{layer.name}_linear", w, w_fmt, bq, b_fmt)
    _activation(b, layer, layer.activation, layer.name)


def _bn_scale(layer: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale gamma/sqrt(var+eps), mean, beta) of a batch normalization, in float64."""
    weights = {
        w.name.split("/")[-1].split(":")[0]: np.asarray(w, np.float64) for w in layer.weights
    }
    mean, var = weights["moving_mean"], weights["moving_variance"]
    n = mean.shape[0]
    gamma = weights.get("gamma", np.ones(n))
    beta = weights.get("beta", np.zeros(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        return gamma / np.sqrt(var + layer.epsilon), mean, beta


def _power_of_two_scale(layer: Any) -> tuple[Fixed, np.ndarray, np.ndarray] | None:
    """(offset format, offset, shift) when the scale is a positive power of two and the offset
    mean - beta/scale is an exact fixed-point number; None otherwise."""
    scale, mean, beta = _bn_scale(layer)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = -np.log2(np.abs(scale))
    if not np.all(np.isfinite(shift)) or np.any(scale <= 0) or np.any(shift != np.round(shift)):
        return None
    try:
        o_fmt, offset = exact_fixed(mean - beta / scale, f"layer {layer.name!r} offset")
    except UnsupportedModelError:
        return None
    return o_fmt, offset, np.round(shift).astype(np.int64)


def batchnorm_constants(layer: Any, fmt: Fixed = BN_FORMAT) -> tuple[np.ndarray, np.ndarray]:
    """Integers (in ``fmt``) of a batch normalization's mult = gamma/sqrt(var+eps) and
    add = beta - mean*mult, rounded to nearest; a value outside ``fmt`` is refused."""
    mult, mean, beta = _bn_scale(layer)
    with np.errstate(invalid="ignore"):
        add = beta - mean * mult
    ints = []
    for what, v in (("scale gamma/sqrt(var+eps)", mult), ("bias beta-mean*scale", add)):
        if not np.all(np.isfinite(v)):
            raise _refuse(layer, f"{what} is not finite (zero variance and epsilon?)")
        q = np.rint(v * 2.0**fmt.frac_bits)
        if q.min() < fmt.min_int or q.max() > fmt.max_int:
            i = int(np.argmax((q < fmt.min_int) | (q > fmt.max_int)))
            raise _refuse(
                layer,
                f"{what} of feature {i} is {v[i]:.6g}, outside {fmt.hls_type()}; "
                "give a wider batch-norm format (--bn-format)",
            )
        ints.append(q.astype(np.int64))
    return ints[0], ints[1]


def _batchnorm(b: NetBuilder, layer: Any, fmt: Fixed) -> None:
    """A power-of-two scale with an exact offset: the IR's exact scaling op; any other: the
    IR's affine op with mult and add rounded into ``fmt``."""
    po2 = _power_of_two_scale(layer)
    if po2 is not None:
        o_fmt, offset, shift = po2
        b.scale(layer.name, offset, o_fmt, shift)
        return
    mult, add = batchnorm_constants(layer, fmt)
    b.affine(layer.name, mult, fmt, add, fmt)


def _inbound(layer: Any) -> list[Any]:
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    inb = nodes[-1].inbound_layers
    return list(inb) if isinstance(inb, list | tuple) else [inb]


def import_qkeras(
    model: Any,
    input_format: Fixed | None = None,
    name: str | None = None,
    bn_format: Fixed = BN_FORMAT,
    **provenance: Any,
) -> QNet:
    """The qnet IR of a QKeras model; UnsupportedModelError names what cannot be imported.

    ``bn_format`` is the fixed-point format of mult and add of a batch normalization that is
    not an exact power-of-two scale (see ``reference_model`` for what the IR then equals)."""
    import tensorflow as tf

    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 2:
        raise UnsupportedModelError(
            f"model {model.name!r}: input shape {shape}: one flat input (batch, features) only"
        )
    layers = [lay for lay in model.layers if not isinstance(lay, tf.keras.layers.InputLayer)]
    if not layers:
        raise UnsupportedModelError(f"model {model.name!r} has no layers")
    first_q = _quantizer_name(getattr(layers[0], "quantizer", None))
    start = 0
    if input_format is None:
        if type(layers[0]).__name__ != "QActivation" or first_q != "quantized_bits":
            raise _refuse(
                layers[0],
                "reads float inputs: give an input format (--input-format "
                '"ap_fixed<16,6>") or start the model with a quantized_bits QActivation',
            )
        input_format, start = _bits_format(layers[0], layers[0].quantizer), 1
    in_name = re.sub(r"\W", "_", model.input_names[0])
    b = NetBuilder(name or model.name, int(shape[-1]), input_format, in_name)
    prev = None
    for i, lay in enumerate(layers):
        kind = type(lay).__name__
        src = _inbound(lay)
        if prev is not None and src and any(s is not prev for s in src):
            raise _refuse(lay, "reads a tensor other than the previous layer's: chains only")
        prev = lay
        if i < start:
            continue
        if kind == "QDense":
            _dense(b, lay)
        elif kind == "QActivation":
            _activation(b, lay, lay.quantizer, lay.name)
        elif kind in ("Activation", "ReLU"):
            fn = lay.activation if kind == "Activation" else tf.keras.activations.relu
            if kind == "ReLU" and (lay.max_value is not None or float(lay.negative_slope) != 0):
                raise _refuse(lay, "ReLU with max_value or negative_slope: plain ReLU only")
            _activation(b, lay, fn, lay.name)
        elif kind == "Dropout":
            continue
        elif kind == "BatchNormalization":
            _batchnorm(b, lay, bn_format)
        elif kind == "Dot":
            if len(src) != 1 and not (len(src) == 2 and src[0] is src[1]):
                raise _refuse(lay, "only the dot product of a tensor with itself (sum of squares)")
            b.sum_squares(lay.name)
        elif kind == "Dense":
            raise _refuse(lay, "float weights: use QDense with quantized_bits quantizers")
        else:
            raise _refuse(lay, f"no qnet IR op; supported layers: {SUPPORTED}")
    prov = {"producer": "l1forge.models.qkeras_import", "keras_model": model.name, **provenance}
    if any(lay.op == "affine" for lay in b.layers):
        prov["bn_format"] = bn_format.hls_type()
    return b.build(provenance=prov)


def load_model(path: str | Path) -> Any:
    """A Keras/QKeras model from ``.h5``/``.keras``/SavedModel; one-line error otherwise."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"model file not found: {p}")
    from qkeras.utils import load_qmodel

    try:
        return load_qmodel(str(p), compile=False)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataFormatError(f"{p} is not a readable Keras/QKeras model ({first})") from exc


def reference_model(model: Any, bn_format: Fixed = BN_FORMAT) -> Any:
    """The same model in float64 with every quantizer's exact forward pass (no STE terms).

    QKeras' straight-through form ``x + stop_gradient(xq - x)`` is not always ``xq`` in
    floating point; with ``use_ste=False`` the forward value is ``xq`` itself. A batch
    normalization that the importer takes as ``affine`` gets its mult and add rounded into
    ``bn_format`` (gamma = mult, beta = add, mean 0, variance 1, epsilon 1e-30), which Keras
    then computes exactly as x * mult + add: the model the imported IR equals bit for bit.
    """
    import tensorflow as tf
    from qkeras.utils import _add_supported_quantized_objects

    from l1forge.models.networks import floatx

    objects: dict[str, Any] = {}
    _add_supported_quantized_objects(objects)

    def exact(d: Any) -> Any:
        """float64 dtypes; quantizer configs rebuilt as objects in their exact (no STE) form."""
        if isinstance(d, dict):
            if d.get("module") == "qkeras.quantizers" and d.get("class_name") in objects:
                q = objects[d["class_name"]](**d["config"])
                q.use_ste = False
                return q
            return {
                k: "float64" if k == "dtype" and v == "float32" else exact(v) for k, v in d.items()
            }
        if isinstance(d, list):
            return [exact(v) for v in d]
        return d

    cls = tf.keras.Sequential if isinstance(model, tf.keras.Sequential) else tf.keras.Model
    general_bn = {
        lay.name: batchnorm_constants(lay, bn_format)
        for lay in model.layers
        if type(lay).__name__ == "BatchNormalization" and _power_of_two_scale(lay) is None
    }
    config = exact(model.get_config())
    for entry in config.get("layers", []):
        cfg = entry.get("config", {})
        if entry.get("class_name") == "BatchNormalization" and cfg.get("name") in general_bn:
            # 1e-30 vanishes next to the unit variance: the scale is gamma itself
            cfg.update(epsilon=1e-30, center=True, scale=True)
    with floatx("float64"):
        clone = cls.from_config(config, custom_objects=objects)
        for lay in model.layers:
            if lay.weights and lay.name not in general_bn:
                clone.get_layer(lay.name).set_weights(
                    [np.asarray(w, np.float64) for w in lay.get_weights()]
                )
        for lay_name, (mult, add) in general_bn.items():
            bn = clone.get_layer(lay_name)
            values = {
                "gamma": bn_format.to_float(mult),
                "beta": bn_format.to_float(add),
                "moving_mean": np.zeros(len(mult)),
                "moving_variance": np.ones(len(mult)),
            }
            bn.set_weights([values[w.name.split("/")[-1].split(":")[0]] for w in bn.weights])
    for lay in clone.layers:
        for attr in (
            "quantizer",
            "activation",
            "kernel_quantizer_internal",
            "bias_quantizer_internal",
        ):
            q = getattr(lay, attr, None)
            if q is not None and hasattr(q, "use_ste"):
                q.use_ste = False
    return clone


def reference_predict(ref: Any, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Float64 predict of a ``reference_model`` (quantizers read the float type at call time)."""
    from l1forge.models.networks import floatx

    with floatx("float64"):
        y = ref.predict(np.asarray(x, np.float64), batch_size=batch_size, verbose=0)
    return np.asarray(y, np.float64).reshape(len(x), -1)
