"""hls4ml projects and C simulation: from any qnet IR, and from an l1forge QKeras network.

``from_qnet`` builds the hls4ml ``ModelGraph`` from the IR itself (a layer list, one hls4ml
node per IR layer), every result, weight and accumulator type set explicitly to the IR's exact
fixed-point formats and rounding/overflow modes, so the C simulation is bit-exact by
construction and ``check_result_types`` proves the types were kept. Vitis backend,
``io_parallel``; here only ``compile()`` (g++) and ``predict()`` run, never ``build()``.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np

from l1forge.errors import BitExactnessError, DataFormatError, MissingToolError
from l1forge.models.build import dense_range, sum_squares_range
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import Layer, QNet

log = logging.getLogger(__name__)

DEFAULT_PART = "xcvu9p-flga2104-2L-e"  # the Virtex UltraScale+ of the CMS Global Trigger boards
DEFAULT_CLOCK_NS = 25.0 / 6.0  # 240 MHz: a 50 ns slot is 12 clock cycles
BACKEND = "Vitis"
IO_TYPE = "io_parallel"
CSIM_EXACT_BITS = 52  # C-sim outputs come back as doubles: exact below 2**52


@dataclass(frozen=True)
class HlsTensor:
    """One hls4ml node's result type."""

    node: str
    fixed: Fixed
    rounding: str
    overflow: str


def hls_type(f: Fixed, rounding: str = "TRN", overflow: str = "WRAP") -> str:
    """The ap_fixed type string of a format with its quantization and overflow modes."""
    kind = "ap_fixed" if f.signed else "ap_ufixed"
    return f"{kind}<{f.width},{f.int_bits},AP_{rounding},AP_{overflow}>"


def _identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit():
        ident = f"t_{ident}"
    base, k = ident, 1
    while ident.lower() in taken:
        ident, k = f"{base}_{k}", k + 1
    taken.add(ident.lower())
    return ident


def _exact_values(ints: np.ndarray, fmt: Fixed) -> np.ndarray:
    """Real values of integer arrays (exact in float64 for the widths the IR allows here)."""
    if fmt.width > CSIM_EXACT_BITS:
        raise DataFormatError(f"format {fmt.hls_type()} is too wide for hls4ml's float weights")
    return fmt.to_float(np.asarray(ints, dtype=np.int64))


def _covering_int_bits(fmt: Fixed) -> Fixed:
    """The same values with at least one integer bit (ap_fixed wants int_bits >= 1 here)."""
    if fmt.int_bits >= 1:
        return fmt
    return Fixed(fmt.signed, fmt.width + 1 - fmt.int_bits, 1)


def _dense_node(lay: Layer, net: QNet, src: str) -> tuple[dict[str, Any], dict[str, str]]:
    s = net.tensors[lay.input].fixed
    w_fmt, b_fmt = lay.array_formats["weight"], lay.array_formats["bias"]
    lo, hi, frac = dense_range(s, lay.arrays["weight"], w_fmt, lay.arrays["bias"], b_fmt)
    # Every partial sum is exact in this type (one bit of headroom; WRAP is modular anyway).
    acc = Fixed.covering(min(lo, 0) * 2 - 1, max(hi, 0) * 2 + 1, frac)
    node = {
        "class_name": "Dense",
        "inputs": [src],
        "n_in": net.tensors[lay.input].size,
        "n_out": net.tensors[lay.output].size,
        "weight_data": _exact_values(lay.arrays["weight"], w_fmt),
        "bias_data": _exact_values(lay.arrays["bias"], b_fmt),
        "weight_quantizer": None,
        "bias_quantizer": None,
    }
    types = {
        "weight": hls_type(_covering_int_bits(w_fmt)),
        "bias": hls_type(_covering_int_bits(b_fmt)),
        "accum": hls_type(_covering_int_bits(acc)),
    }
    return node, types


def _scale_node(lay: Layer, net: QNet, src: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(x - offset) * 2**-shift as hls4ml's batch normalization x * scale + bias, exactly."""
    shift = lay.arrays["shift"].astype(np.int64)
    o_fmt = lay.array_formats["offset"]
    s_frac = max(int(shift.max()), 0)
    s_int = np.array([1 << (s_frac - int(s)) for s in shift], dtype=object)
    s_fmt = Fixed.covering(int(s_int.min()), int(s_int.max()), s_frac)
    b_frac = o_fmt.frac_bits + s_frac
    b_int = [
        -int(o) << (b_frac - o_fmt.frac_bits - int(s))
        for o, s in zip(lay.arrays["offset"], shift, strict=True)
    ]
    b_fmt = Fixed.covering(min(min(b_int), 0), max(max(b_int), 0), b_frac)
    scale = np.array([float(v) * 2.0**-s_frac for v in s_int])
    bias = np.array([float(v) * 2.0**-b_frac for v in b_int])
    return _batchnorm_node(lay, net, src, (scale, s_fmt), (bias, b_fmt))


def _affine_node(lay: Layer, net: QNet, src: str) -> tuple[dict[str, Any], dict[str, str]]:
    """x * mult + add as hls4ml's batch normalization x * scale + bias, with the IR's types."""
    m_fmt, a_fmt = lay.array_formats["mult"], lay.array_formats["add"]
    mult = (_exact_values(lay.arrays["mult"], m_fmt), m_fmt)
    return _batchnorm_node(lay, net, src, mult, (_exact_values(lay.arrays["add"], a_fmt), a_fmt))


def _batchnorm_node(
    lay: Layer,
    net: QNet,
    src: str,
    scale: tuple[np.ndarray, Fixed],
    bias: tuple[np.ndarray, Fixed],
) -> tuple[dict[str, Any], dict[str, str]]:
    """hls4ml's x * scale + bias node: the (values, format) of scale and bias as given."""
    node = {
        "class_name": "BatchNormalization",
        "inputs": [src],
        "n_in": net.tensors[lay.input].size,
        "n_filt": -1,
        "scale_data": scale[0],
        "bias_data": bias[0],
        "use_gamma": True,
        "use_beta": True,
    }
    types = {
        "scale": hls_type(_covering_int_bits(scale[1])),
        "bias": hls_type(_covering_int_bits(bias[1])),
    }
    return node, types


def layer_list(net: QNet) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]], dict[str, str]]:
    """hls4ml layer dicts, per-node precisions and IR tensor -> node names, from the IR alone."""
    if len(net.inputs) != 1:
        raise DataFormatError("hls4ml projects are written for networks with one input tensor")
    taken: set[str] = set()
    ident = {}
    for t in net.tensors:
        ident[t] = _identifier(t, taken)
    inp = net.inputs[0]
    layers: list[dict[str, Any]] = [
        {"class_name": "InputLayer", "name": ident[inp], "input_shape": [net.tensors[inp].size]}
    ]
    precisions = {ident[inp]: {"result": hls_type(net.tensors[inp].fixed)}}
    for lay in net.layers:
        src, out = ident[lay.input], net.tensors[lay.output]
        if lay.op == "dense":
            node, types = _dense_node(lay, net, src)
        elif lay.op == "scale":
            node, types = _scale_node(lay, net, src)
        elif lay.op == "affine":
            node, types = _affine_node(lay, net, src)
        elif lay.op in ("relu", "quantize"):
            act = "relu" if lay.op == "relu" else "linear"
            node, types = {"class_name": "Activation", "activation": act, "inputs": [src]}, {}
        elif lay.op == "sum_squares":
            s = net.tensors[lay.input].fixed
            lo, hi, frac = sum_squares_range(s, net.tensors[lay.input].size)
            acc = Fixed.covering(lo, hi + 1, frac)
            node = {"class_name": "Dot", "op": "dot1d", "inputs": [src, src]}
            types = {"accum": hls_type(_covering_int_bits(acc))}
        else:
            raise DataFormatError(f"layer {lay.name!r}: op {lay.op!r} has no hls4ml node")
        if out.fixed.width > CSIM_EXACT_BITS and lay.output in net.outputs:
            raise DataFormatError(
                f"output {lay.output!r} is {out.fixed.width} bits; C-sim doubles hold 52"
            )
        node["name"] = ident[lay.output]
        layers.append(node)
        precisions[ident[lay.output]] = {
            **types,
            "result": hls_type(out.fixed, lay.rounding, lay.overflow),
        }
    for t in net.outputs:
        if t == inp:
            raise DataFormatError(f"output {t!r} is the input itself: no hls4ml node computes it")
    return layers, precisions, ident


def from_qnet(
    net: QNet,
    out_dir: str | Path,
    project_name: str | None = None,
    part: str = DEFAULT_PART,
    clock_period_ns: float = DEFAULT_CLOCK_NS,
) -> Any:
    """The hls4ml ModelGraph of ``net`` (Vitis, io_parallel, the IR's exact types); not written."""
    from hls4ml.model.graph import ModelGraph
    from hls4ml.utils.config import create_config

    layers, precisions, ident = layer_list(net)
    name = project_name or _identifier(net.name, set())
    cfg = create_config(
        output_dir=str(out_dir),
        project_name=name,
        backend=BACKEND,
        part=part,
        clock_period=clock_period_ns,
        io_type=IO_TYPE,
    )
    cfg["HLSConfig"] = {
        # Every node has its own types below; the model default is never used for a value.
        "Model": {
            "Precision": "ap_fixed<16,6>",
            "ReuseFactor": 1,
            "Strategy": "Latency",
            "BitExact": False,
        },
        "LayerName": {n: {"Precision": p} for n, p in precisions.items()},
    }
    outputs = [ident[t] for t in net.outputs]
    return ModelGraph.from_layer_list(cfg, layers, [layers[0]["name"]], outputs)


def result_types(hm: Any) -> list[HlsTensor]:
    """Every node's result type in graph order (input first); unset modes are TRN / WRAP."""
    out = []
    for name, node in hm.graph.items():
        p = node.get_output_variable().type.precision
        rnd = "TRN" if p.rounding_mode is None else str(p.rounding_mode).split(".")[-1]
        sat = "WRAP" if p.saturation_mode is None else str(p.saturation_mode).split(".")[-1]
        fixed = Fixed(bool(p.signed), int(p.width), int(p.integer))
        out.append(HlsTensor(name, fixed, rnd.replace("AP_", ""), sat.replace("AP_", "")))
    return out


def check_result_types(hm: Any, net: QNet) -> int:
    """Every hls4ml node's result type equals the IR tensor it holds; returns nodes checked.

    hls4ml may drop a node that does nothing (a re-quantization to the input's own format);
    every node it keeps must carry the format and modes of its IR tensor.
    """
    _, _, ident = layer_list(net)
    names = {v: k for k, v in ident.items()}
    producer = {lay.output: lay for lay in net.layers}
    n = 0
    for t in result_types(hm):
        tensor = names.get(t.node)
        if tensor is None:
            raise BitExactnessError(f"hls4ml node {t.node!r} holds no tensor of qnet {net.name!r}")
        want = net.tensors[tensor].fixed
        lay = producer.get(tensor)
        modes = (lay.rounding, lay.overflow) if lay else (t.rounding, t.overflow)
        if t.fixed != want or (t.rounding, t.overflow) != modes:
            raise BitExactnessError(
                f"hls4ml node {t.node!r} is {hls_type(t.fixed, t.rounding, t.overflow)}, "
                f"IR tensor {tensor!r} is {hls_type(want, *modes)}"
            )
        n += 1
    return n


def compile_csim(hm: Any) -> Any:
    """Write the project and build the C simulation library (g++ only); returns the model."""
    if shutil.which("g++") is None:
        raise MissingToolError("hls4ml's C simulation needs g++: apt-get install g++")
    hm.compile()
    return hm


def predict(hm: Any, x: np.ndarray) -> np.ndarray:
    """C-simulation outputs as float64 (exact for these widths), one row per input row."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    y = hm.predict(x)
    if isinstance(y, list):
        y = np.concatenate([np.asarray(v, np.float64).reshape(len(x), -1) for v in y], axis=1)
    return np.asarray(y, dtype=np.float64).reshape(len(x), -1)


def predict_qnet(hm: Any, net: QNet, x_int: np.ndarray) -> np.ndarray:
    """C-sim of an IR's project on input integers; output integers (int64) as Emulator.run."""
    in_fmt = net.input_specs[0].fixed
    y = predict(hm, in_fmt.to_float(x_int))
    cols, start = [], 0
    for spec in net.output_specs:
        q = y[:, start : start + spec.size] * 2.0**spec.fixed.frac_bits
        if not np.array_equal(q, np.rint(q)):
            raise BitExactnessError(f"C-sim output {spec.name!r} is not in {spec.fixed.hls_type()}")
        cols.append(q.astype(np.int64))
        start += spec.size
    return np.concatenate(cols, axis=1)


class HlsProject(TypedDict):
    """What ``write_hls_project`` reports (the firmware manifest's ``hls`` entry)."""

    written: Literal[True]
    project_name: str
    hls4ml: str  # its version
    backend: str
    io_type: str
    part: str
    clock_period_ns: float
    types_equal_ir: bool
    nodes_type_checked: int
    csim_vectors_checked: int  # C-sim outputs compared with the emulator (0: not compiled)


def write_hls_project(
    net: QNet,
    out_dir: str | Path,
    project_name: str | None = None,
    part: str = DEFAULT_PART,
    clock_period_ns: float = DEFAULT_CLOCK_NS,
    csim_vectors: np.ndarray | None = None,
) -> HlsProject:
    """Write the hls4ml project of ``net`` into ``out_dir``; with vectors, compare its C-sim.

    Returns the manifest entry: project, backend, part, clock, type check and, when vectors
    were given, how many C-sim outputs were compared with the emulator (a mismatch raises).
    """
    import hls4ml

    out = Path(out_dir).resolve()
    hm = from_qnet(net, out, project_name, part, clock_period_ns)
    n_types = check_result_types(hm, net)
    project_name = hm.config.get_project_name()
    if csim_vectors is None:
        hm.write()
        n_csim = 0
    else:
        from l1forge.models.emulator import Emulator

        compile_csim(hm)
        got = predict_qnet(hm, net, csim_vectors)
        with Emulator(net) as emu:
            want = emu.run(csim_vectors)
        bad = int(np.count_nonzero(np.any(got != want, axis=1)))
        if bad:
            raise BitExactnessError(
                f"hls4ml C simulation differs from the emulator on {bad} of {len(want)} vectors"
            )
        n_csim = len(csim_vectors)
    log.info("hls4ml project of %s written to %s", net.name, out)
    return {
        "written": True,
        "project_name": project_name,
        "hls4ml": hls4ml.__version__,
        "backend": BACKEND,
        "io_type": IO_TYPE,
        "part": part,
        "clock_period_ns": clock_period_ns,
        "types_equal_ir": True,
        "nodes_type_checked": n_types,
        "csim_vectors_checked": n_csim,
    }


def keras_modelgraph(
    model: Any,
    out_dir: str | Path,
    project_name: str,
    *,
    bit_exact: bool | None,
    input_type: str | None = None,
    part: str = DEFAULT_PART,
    clock_period_ns: float = DEFAULT_CLOCK_NS,
) -> Any:
    """hls4ml's conversion of a Keras/QKeras ``model`` (not written): ``bit_exact`` turns on its
    bit-exact precision propagation (None: hls4ml decides, on only for HGQ proxy models);
    ``input_type`` sets the input layer's result type."""
    import hls4ml

    cfg = hls4ml.utils.config_from_keras_model(model, granularity="name", backend=BACKEND)
    if input_type is not None:
        first = next(iter(cfg["LayerName"]))  # hls4ml lists the input layer first
        cfg["LayerName"].setdefault(first, {}).setdefault("Precision", {})["result"] = input_type
    return hls4ml.converters.convert_from_keras_model(
        model,
        hls_config=cfg,
        output_dir=str(out_dir),
        project_name=project_name,
        backend=BACKEND,
        io_type=IO_TYPE,
        part=part,
        clock_period=clock_period_ns,
        bit_exact=bit_exact,
    )


def convert(
    model: Any,
    out_dir: str | Path,
    project_name: str = "l1forge_net",
    part: str = DEFAULT_PART,
    clock_period_ns: float = DEFAULT_CLOCK_NS,
) -> Any:
    """Convert a QKeras ``model`` with hls4ml's bit-exact precision propagation and write it."""
    hm = keras_modelgraph(
        model, out_dir, project_name, bit_exact=True, part=part, clock_period_ns=clock_period_ns
    )
    hm.write()
    log.info("hls4ml project written to %s", out_dir)
    return hm
