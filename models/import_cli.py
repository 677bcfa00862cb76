"""`l1forge import qkeras|hls4ml MODEL --out NET.json`: bring a model, get a verified qnet IR.

``qkeras`` reads the model as written (Keras ``.h5``/``.keras``/SavedModel with QKeras layers)
and checks the IR's emulator against the model's exact float64 forward pass; ``hls4ml`` reads
a saved hls4ml ModelGraph (``.fml``) or lets hls4ml convert a Keras file, and checks the
emulator against that ModelGraph's C simulation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("import", help="import a QKeras model or an hls4ml ModelGraph")
    kinds = p.add_subparsers(dest="import_kind", required=True)
    q = kinds.add_parser("qkeras", help="a QKeras model file, as written")
    h = kinds.add_parser("hls4ml", help="an hls4ml saved model (.fml) or a file hls4ml converts")
    for k in (q, h):
        k.add_argument("model", help="model file")
        k.add_argument("--out", required=True, help="qnet IR JSON to write (arrays beside it)")
        k.add_argument("--name", help="network name (default: the model's)")
        k.add_argument(
            "--input-format",
            help='fixed-point format of float inputs, e.g. "ap_fixed<16,6>" (hls4ml notation)',
        )
    q.add_argument(
        "--check-vectors", type=int, default=10000, help="vectors for QKeras == emulator"
    )
    q.add_argument(
        "--bn-format",
        default="ap_fixed<16,6>",
        help="fixed-point format of mult and add of a BatchNormalization that is not an exact "
        "power-of-two scale (default: hls4ml's ap_fixed<16,6>)",
    )
    q.set_defaults(func=_qkeras)
    h.add_argument(
        "--csim-vectors", type=int, default=2000, help="vectors for C-sim == emulator (0: skip)"
    )
    h.set_defaults(func=_hls4ml)


def _check_count(n: int, flag: str) -> None:
    from l1forge.errors import ConfigError

    if n < 0:
        raise ConfigError(f"{flag} must be >= 0")


def _summary(net: Any, path: Path, check: dict[str, Any]) -> str:
    layers = [f"{lay.name}:{lay.op}" for lay in net.layers]
    fmts = {n: t.fixed.hls_type() for n, t in net.tensors.items()}
    return json.dumps(
        {"qnet": str(path), "name": net.name, "layers": layers, "formats": fmts, **check}
    )


def _qkeras(args: argparse.Namespace) -> int:
    import numpy as np

    from l1forge.errors import BitExactnessError
    from l1forge.models import qkeras_import as qi
    from l1forge.models.emulator import Emulator
    from l1forge.models.qnet import save
    from l1forge.models.vectors import bitexact_vectors

    _check_count(args.check_vectors, "--check-vectors")
    fmt = qi.parse_format(args.input_format) if args.input_format else None
    bn_fmt = qi.parse_format(args.bn_format, "--bn-format")
    model = qi.load_model(args.model)
    net = qi.import_qkeras(model, fmt, name=args.name, bn_format=bn_fmt, source=str(args.model))
    check: dict[str, Any] = {"vectors_checked": 0}
    if args.check_vectors:
        x = bitexact_vectors(net, args.check_vectors, seed=0)
        y_src = qi.reference_predict(
            qi.reference_model(model, bn_fmt), net.input_specs[0].fixed.to_float(x)
        )
        with Emulator(net) as emu:
            bad = int(np.count_nonzero(np.any(y_src != emu.run_float(x), axis=1)))
        if bad:
            raise BitExactnessError(
                f"QKeras and the imported IR differ on {bad} of {len(x)} vectors"
            )
        check = {"vectors_checked": len(x), "bit_exact_vs_source": True}
    path = save(net, args.out)
    print(_summary(net, path, check))
    return 0


def _hls4ml(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from l1forge.errors import BitExactnessError
    from l1forge.models import hls
    from l1forge.models.emulator import Emulator
    from l1forge.models.hls4ml_import import import_modelgraph, load_modelgraph
    from l1forge.models.qkeras_import import parse_format
    from l1forge.models.qnet import save
    from l1forge.models.vectors import bitexact_vectors

    _check_count(args.csim_vectors, "--csim-vectors")
    fmt = parse_format(args.input_format) if args.input_format else None
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="l1f-hls4ml-") as tmp:
        hm = load_modelgraph(args.model, fmt, Path(tmp) / "src")
        net = import_modelgraph(hm, name=args.name, source=str(args.model))
        check: dict[str, Any] = {"csim_vectors_checked": 0}
        if args.csim_vectors:
            x = bitexact_vectors(net, args.csim_vectors, seed=0)
            y_csim = hls.predict(hls.compile_csim(hm), net.input_specs[0].fixed.to_float(x))
            with Emulator(net) as emu:
                bad = int(np.count_nonzero(np.any(y_csim != emu.run_float(x), axis=1)))
            if bad:
                raise BitExactnessError(f"C-sim and the imported IR differ on {bad} of {len(x)}")
            check = {"csim_vectors_checked": len(x), "bit_exact_vs_hls4ml_csim": True}
    path = save(net, out)
    print(_summary(net, path, check))
    return 0
