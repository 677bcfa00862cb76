"""An hls4ml ModelGraph (from Keras, PyTorch or QONNX) -> qnet IR, through hls4ml's own types.

Each node's result, weight and accumulator types are read from the graph, so the IR computes
what hls4ml's C++ computes: weights are taken as the C++ sees them (hls4ml prints them with as
many decimals as the type has fraction bits; the ap_fixed constructor then applies the type's
quantization and overflow modes), a dense accumulator must hold every product exactly (if it
wraps, the IR wraps at the same width). Chains of Input, Dense, Activation relu/linear,
BatchNormalization (power-of-two scales as the IR's scaling op, any other as its per-feature
``affine`` op in the node's own scale and bias types) and Dot(x, x) are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError, UnsupportedModelError
from l1forge.models.build import NetBuilder, dense_range, sum_squares_range
from l1forge.models.fixed import Fixed, quantize_real
from l1forge.models.qnet import QNet

SUPPORTED = "Input, Dense, Activation(relu|linear), BatchNormalization, Dot(x, x)"
TRIGGER_SCORE_HINT = "drop it and cut on the logits (a trigger thresholds a monotonic score)"


def _refuse(node: Any, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"layer {node.name!r} ({node.class_name}): {what}")


def _fixed(node: Any, precision: Any, what: str) -> tuple[Fixed, str, str]:
    """(format, rounding, overflow) of an hls4ml precision type; other types are refused."""
    from hls4ml.model.types import FixedPrecisionType, IntegerPrecisionType

    if isinstance(precision, FixedPrecisionType):
        fmt = Fixed(bool(precision.signed), int(precision.width), int(precision.integer))
        rnd = precision.rounding_mode
        sat = precision.saturation_mode
        if precision.saturation_bits not in (None, 0):
            raise _refuse(node, f"{what} type {precision} has saturation bits; unsupported")
        return fmt, "TRN" if rnd is None else rnd.name, "WRAP" if sat is None else sat.name
    if isinstance(precision, IntegerPrecisionType):
        width = int(precision.width)
        return Fixed(bool(precision.signed), width, width), "TRN", "WRAP"
    raise _refuse(node, f"{what} type {precision} is not ap_fixed/ap_int; fixed point only")


def _weight_ints(node: Any, key: str) -> tuple[Fixed, np.ndarray]:
    """The integers the C++ holds: decimals printed as hls4ml writes them, then ap_fixed()."""
    var = node.weights[key]
    fmt, rnd, sat = _fixed(node, var.type.precision, key)
    decimals = max(0, fmt.frac_bits)
    text = np.array([float(f"{v:.{decimals}f}") for v in np.asarray(var.data, np.float64).ravel()])
    q = quantize_real(text, fmt, rnd, sat).astype(np.int64)
    return fmt, q.reshape(np.shape(var.data))


def _accum(node: Any, src: Fixed, frac_needed: int, lo: int, hi: int) -> Fixed | None:
    """None when the accumulator is exact; its format when it only wraps; refuses rounding."""
    acc_t = node.get_attr("accum_t")
    if acc_t is None:
        return None
    acc, _, sat = _fixed(node, acc_t.precision, "accumulator")
    if acc.frac_bits < frac_needed:
        raise _refuse(
            node,
            f"accumulator {acc.hls_type()} rounds products ({frac_needed} fraction bits "
            "needed); supported: accumulators that hold every product exactly",
        )
    scale = 1 << (acc.frac_bits - frac_needed)
    if acc.min_int <= lo * scale and hi * scale <= acc.max_int:
        return None
    if sat != "WRAP":
        raise _refuse(node, f"accumulator {acc.hls_type()} saturates partial sums; unsupported")
    return acc


def _dense(b: NetBuilder, node: Any, res: tuple[Fixed, str, str]) -> None:
    src = b.last_spec.fixed
    w_fmt, w = _weight_ints(node, "weight")
    b_fmt, bias = _weight_ints(node, "bias")
    lo, hi, frac = dense_range(src, w, w_fmt, bias, b_fmt)
    acc = _accum(node, src, frac, lo, hi)
    if acc is None:
        b.dense(node.name, w, w_fmt, bias, b_fmt, res[0], res[1], res[2])
    else:  # the C++ accumulates modulo 2**width of its accumulator, then casts
        b.dense(f"{node.name}_accum", w, w_fmt, bias, b_fmt, acc, "TRN", "WRAP")
        b.quantize(node.name, *res)


def _batchnorm(b: NetBuilder, node: Any, res: tuple[Fixed, str, str]) -> None:
    """x * scale + bias: with power-of-two scales the IR's exact (x - offset) * 2**-shift,
    otherwise its affine op x * mult + add with the node's scale and bias integers."""
    s_fmt, s = _weight_ints(node, "scale")
    b_fmt, bias = _weight_ints(node, "bias")
    scale = s_fmt.to_float(s)
    with np.errstate(divide="ignore"):
        po2 = np.all(scale > 0) and np.all(np.exp2(np.round(np.log2(scale))) == scale)
    if not po2:
        b.affine(node.name, s.ravel(), s_fmt, bias.ravel(), b_fmt, *res)
        return
    shift = -np.round(np.log2(scale)).astype(np.int64)
    # offset = -bias / scale, a fixed-point number with the bias' fraction bits less the shift
    o_frac = b_fmt.frac_bits - int(shift.min())
    offset = [
        -int(q) << (o_frac - b_fmt.frac_bits + int(k)) for q, k in zip(bias, shift, strict=True)
    ]
    if o_frac < 0:
        offset, o_frac = [o << -o_frac for o in offset], 0
    o_fmt = Fixed.covering(min(min(offset), 0), max(max(offset), 0), o_frac)
    b.scale(node.name, np.array(offset, dtype=np.int64), o_fmt, shift, *res)


def import_modelgraph(hm: Any, name: str | None = None, **provenance: Any) -> QNet:
    """The qnet IR of an hls4ml ModelGraph; UnsupportedModelError names what cannot be."""
    nodes = list(hm.graph.values())
    inputs = [n for n in nodes if n.class_name in ("Input", "InputLayer")]
    if len(inputs) != 1 or len(hm.outputs) != 1:
        raise UnsupportedModelError(
            f"ModelGraph {hm.config.get_project_name()!r}: one input and one output only"
        )
    first = inputs[0]
    shape = first.get_output_variable().shape
    if len(shape) != 1:
        raise _refuse(first, f"input shape {shape}: one flat input only")
    in_fmt, _, _ = _fixed(first, first.get_output_variable().type.precision, "input")
    b = NetBuilder(name or hm.config.get_project_name(), int(shape[0]), in_fmt, first.name)
    last = first.outputs[0]
    for node in nodes:
        if node is first:
            continue
        if any(i != last for i in node.inputs):
            raise _refuse(
                node, f"reads {node.inputs}, not the previous layer's {last!r}: chains only"
            )
        res = _fixed(node, node.get_output_variable().type.precision, "result")
        kind = node.class_name
        if kind == "Dense":
            _dense(b, node, res)
        elif kind == "Activation" and node.get_attr("activation") in ("relu", "linear"):
            (b.relu if node.get_attr("activation") == "relu" else b.quantize)(node.name, *res)
        elif kind in ("Softmax", "Sigmoid") or node.get_attr("activation") in (
            "softmax",
            "sigmoid",
        ):
            raise _refuse(
                node,
                f"activation {node.get_attr('activation')} is not imported: {TRIGGER_SCORE_HINT}",
            )
        elif kind in ("BatchNormalization", "ApplyAlpha"):
            _batchnorm(b, node, res)
        elif kind == "Dot" and len(set(node.inputs)) == 1:
            src = b.last_spec
            lo, hi, frac = sum_squares_range(src.fixed, src.size)
            if _accum(node, src.fixed, frac, lo, hi) is not None:
                raise _refuse(node, "accumulator too narrow for the sum of squares")
            b.sum_squares(node.name, *res)
        else:
            what = node.get_attr("activation") if kind == "Activation" else "this node"
            raise _refuse(node, f"{what} has no qnet IR op; supported: {SUPPORTED}")
        last = node.outputs[0]
    if hm.outputs[0] != last:
        raise UnsupportedModelError(f"ModelGraph output {hm.outputs[0]!r} is not the chain's end")
    prov = {
        "producer": "l1forge.models.hls4ml_import",
        "hls4ml_project": hm.config.get_project_name(),
    }
    return b.build(provenance={**prov, **provenance})


def convert_keras(
    model: Any, input_format: Fixed, out_dir: str | Path, project_name: str = "imported"
) -> Any:
    """hls4ml's own Keras conversion (its inferred types, the input in ``input_format``).

    hls4ml 1.3's ``bit_exact=True`` refuses a float input followed by QDense ("unexpected
    input layer chain"); its standard precision inference gives exact dense accumulators.
    """
    from l1forge.models.hls import keras_modelgraph

    return keras_modelgraph(
        model, out_dir, project_name, bit_exact=None, input_type=input_format.hls_type()
    )


def load_modelgraph(path: str | Path, input_format: Fixed | None, out_dir: str | Path) -> Any:
    """A ModelGraph from a saved hls4ml model (``.fml``) or a Keras/QKeras file hls4ml converts."""
    from l1forge.models.qkeras_import import load_model

    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"model file not found: {p}")
    if p.suffix == ".fml":
        from hls4ml.converters import load_saved_model

        try:
            return load_saved_model(str(p), output_dir=str(out_dir))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise DataFormatError(f"{p} is not a readable hls4ml saved model ({exc})") from exc
    if input_format is None:
        raise DataFormatError(
            f"{p}: hls4ml converts it with a stated input format (--input-format)"
        )
    return convert_keras(
        load_model(p), input_format, out_dir, project_name=p.stem.replace("-", "_")
    )
