"""The qnet IR: one versioned fixed-point description of a trained network.

Saved as a JSON file (graph, every tensor's format, rounding and overflow modes, provenance)
beside an ``.npz`` of integer arrays (weights, biases, offsets). Producers (the QKeras exporter,
the co-design net) write it; the emulator, the Verilog generator, the hls4ml check and the
online daemon read it, and nothing else. ``load`` validates everything it reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.fileio import sha256_file
from l1forge.models.fixed import OVERFLOW_MODES, ROUNDING_MODES, Fixed

FORMAT_NAME = "qnet"
FORMAT_VERSION = 1

# op -> (integer arrays it needs, whether it takes rounding/overflow modes)
OPS: dict[str, tuple[tuple[str, ...], bool]] = {
    "quantize": ((), True),  # re-quantize to the output format
    "scale": (("offset", "shift"), True),  # (x - offset) * 2**-shift, per feature
    "affine": (("mult", "add"), True),  # x * mult + add, per feature
    "dense": (("weight", "bias"), True),  # x @ weight + bias
    "relu": ((), True),  # max(x, 0), re-quantized
    "sum_squares": ((), True),  # sum_i x_i**2, one output
}
# element-wise ops with one entry per feature in each array -> (arrays, those with a format)
PER_FEATURE_ARRAYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "scale": (("offset", "shift"), ("offset",)),
    "affine": (("mult", "add"), ("mult", "add")),
}


@dataclass(frozen=True)
class TensorSpec:
    """A named 1-D tensor of fixed-point integers."""

    name: str
    size: int
    fixed: Fixed

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "fixed": self.fixed.to_json()}


@dataclass(frozen=True)
class Layer:
    """One operation: reads tensor ``input``, writes tensor ``output``.

    ``arrays`` holds the op's integer arrays; ``array_formats`` the fixed-point format of the
    ones that are numbers in a format (weight, bias, offset, mult, add), so their real values
    are known.
    """

    name: str
    op: str
    input: str
    output: str
    rounding: str = "TRN"
    overflow: str = "WRAP"
    arrays: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    array_formats: dict[str, Fixed] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "input": self.input,
            "output": self.output,
            "rounding": self.rounding,
            "overflow": self.overflow,
            "arrays": sorted(self.arrays),
            "array_formats": {k: v.to_json() for k, v in sorted(self.array_formats.items())},
        }


@dataclass(frozen=True)
class QNet:
    """A fixed-point network: tensors, layers in execution order, inputs and outputs."""

    name: str
    tensors: dict[str, TensorSpec]
    layers: tuple[Layer, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.tensors[n] for n in self.inputs)

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.tensors[n] for n in self.outputs)

    def layer(self, name: str) -> Layer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"qnet {self.name!r} has no layer {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "tensors": [self.tensors[k].to_json() for k in self.tensors],
            "layers": [lay.to_json() for lay in self.layers],
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "provenance": self.provenance,
        }


def _fail(where: str, why: str) -> DataFormatError:
    return DataFormatError(f"invalid qnet IR at {where}: {why}")


def validate(net: QNet) -> None:
    """Check the graph, shapes, modes and that every integer array fits its format."""
    for name, spec in net.tensors.items():
        if name != spec.name or spec.size < 1:
            raise _fail(f"tensor {name!r}", "name mismatch or non-positive size")
    if not net.inputs or not net.outputs:
        raise _fail("inputs/outputs", "a network needs at least one input and one output")
    defined = set(net.inputs)
    for t in (*net.inputs, *net.outputs):
        if t not in net.tensors:
            raise _fail(f"tensor {t!r}", "listed as input or output but not declared")
    for lay in net.layers:
        where = f"layer {lay.name!r}"
        if lay.op not in OPS:
            raise _fail(where, f"unknown op {lay.op!r}; known: {sorted(OPS)}")
        needed, _ = OPS[lay.op]
        if set(lay.arrays) != set(needed):
            raise _fail(where, f"op {lay.op} needs arrays {needed}, has {sorted(lay.arrays)}")
        if lay.rounding not in ROUNDING_MODES:
            raise _fail(where, f"rounding {lay.rounding!r} not in {ROUNDING_MODES}")
        if lay.overflow not in OVERFLOW_MODES:
            raise _fail(where, f"overflow {lay.overflow!r} not in {OVERFLOW_MODES}")
        if lay.input not in defined:
            raise _fail(where, f"input {lay.input!r} is not produced before this layer")
        if lay.output not in net.tensors or lay.output in defined:
            raise _fail(where, f"output {lay.output!r} undeclared or written twice")
        _check_shapes(lay, net.tensors[lay.input], net.tensors[lay.output], where)
        defined.add(lay.output)
    for t in net.outputs:
        if t not in defined:
            raise _fail(f"output {t!r}", "never produced by any layer")


def _check_shapes(lay: Layer, src: TensorSpec, dst: TensorSpec, where: str) -> None:
    a = lay.arrays
    for key, arr in a.items():
        if not np.issubdtype(np.asarray(arr).dtype, np.integer):
            raise _fail(where, f"array {key!r} must hold integers, has {np.asarray(arr).dtype}")
    for key, fmt in lay.array_formats.items():
        if key not in a:
            raise _fail(where, f"format given for missing array {key!r}")
        if not fmt.contains(a[key]):
            raise _fail(where, f"array {key!r} does not fit its format {fmt.hls_type()}")
    if lay.op == "dense":
        if a["weight"].shape != (src.size, dst.size) or a["bias"].shape != (dst.size,):
            raise _fail(
                where,
                f"weight {a['weight'].shape} / bias {a['bias'].shape} do not match "
                f"{src.size} -> {dst.size}",
            )
        if set(lay.array_formats) != {"weight", "bias"}:
            raise _fail(where, "dense needs formats for weight and bias")
    elif lay.op in PER_FEATURE_ARRAYS:
        names, with_format = PER_FEATURE_ARRAYS[lay.op]
        if any(a[k].shape != (src.size,) for k in names):
            raise _fail(where, f"{' and '.join(names)} need one entry per input feature")
        if src.size != dst.size:
            raise _fail(where, f"{lay.op} keeps the number of features")
        if set(lay.array_formats) != set(with_format):
            raise _fail(where, f"{lay.op} needs formats for {' and '.join(with_format)}")
        if lay.op == "scale" and (np.any(a["shift"] < -62) or np.any(a["shift"] > 62)):
            raise _fail(where, "shift out of range -62..62")
    elif lay.op == "sum_squares":
        if dst.size != 1:
            raise _fail(where, "sum_squares has exactly one output")
    elif src.size != dst.size:
        raise _fail(where, f"{lay.op} keeps the size ({src.size} != {dst.size})")


def save(net: QNet, path: str | Path) -> Path:
    """Write ``path`` (JSON) and its arrays beside it (same stem, ``.npz``); return the path."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    npz = path.with_suffix(".npz")
    arrays = {
        f"{lay.name}/{k}": np.asarray(v, dtype=np.int64)
        for lay in net.layers
        for k, v in lay.arrays.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(npz, "wb") as fh:
        np.savez(fh, **arrays)
    doc = net.to_json()
    doc["arrays_file"] = npz.name
    doc["arrays_sha256"] = sha256_file(npz)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def load(path: str | Path) -> QNet:
    """Read and validate a qnet IR; malformed or mismatched files raise DataFormatError."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"qnet IR not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path} is not a qnet IR JSON file: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise DataFormatError(f'{path} is not a qnet IR (missing "format": "qnet")')
    if doc.get("version") != FORMAT_VERSION:
        raise DataFormatError(
            f"{path}: qnet IR version {doc.get('version')!r}, this l1forge reads {FORMAT_VERSION}"
        )
    npz = path.parent / str(doc.get("arrays_file", ""))
    if not npz.is_file():
        raise DataFormatError(f"{path}: its arrays file {npz.name!r} is missing")
    if sha256_file(npz) != doc.get("arrays_sha256"):
        raise DataFormatError(f"{path}: {npz.name} does not match (checksum differs)")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return from_json(doc, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path}: malformed qnet IR: {exc!r}") from exc


def from_json(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> QNet:
    """Build a QNet from its JSON document and a flat ``layer/array`` mapping."""
    tensors = {}
    for t in doc["tensors"]:
        tensors[t["name"]] = TensorSpec(
            t["name"], int(t["size"]), Fixed.from_json(t["fixed"], f"tensor {t['name']}")
        )
    layers = []
    for d in doc["layers"]:
        layers.append(
            Layer(
                name=d["name"],
                op=d["op"],
                input=d["input"],
                output=d["output"],
                rounding=d["rounding"],
                overflow=d["overflow"],
                arrays={k: arrays[f"{d['name']}/{k}"] for k in d["arrays"]},
                array_formats={
                    k: Fixed.from_json(v, f"layer {d['name']}.{k}")
                    for k, v in d["array_formats"].items()
                },
            )
        )
    return QNet(
        name=doc["name"],
        tensors=tensors,
        layers=tuple(layers),
        inputs=tuple(doc["inputs"]),
        outputs=tuple(doc["outputs"]),
        provenance=dict(doc.get("provenance", {})),
    )
