"""hls4ml ModelGraphs -> qnet IR through hls4ml's own types: C-sim == emulator, or a refusal."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import UnsupportedModelError
from l1forge.models import hls
from l1forge.models.emulator import Emulator
from l1forge.models.examples import JET_TAGGER_INPUT_FORMAT
from l1forge.models.hls4ml_import import convert_keras, import_modelgraph
from l1forge.models.qkeras_import import parse_format, reference_model, reference_predict
from l1forge.models.vectors import bitexact_vectors

from .imports import cli_import

FMT = parse_format(JET_TAGGER_INPUT_FORMAT)


@pytest.fixture(scope="session")
def jet_graph(jet_tagger_models, tmp_path_factory):
    """The jet tagger converted by hls4ml's Keras converter and compiled (g++), once."""
    model = jet_tagger_models["sequential"]
    hm = convert_keras(model, FMT, tmp_path_factory.mktemp("jet_mg"), project_name="jet_mg")
    return model, hls.compile_csim(hm)


def _chain(model, hm, ir_qkeras, n):
    net = import_modelgraph(hm, name="jet_mg")
    x = bitexact_vectors(net, n, seed=13)
    xf = net.input_specs[0].fixed.to_float(x)
    y = Emulator(net).run_float(x)
    assert_array_equal(hls.predict(hm, xf), y)  # hls4ml C-sim == emulator of its IR
    assert_array_equal(reference_predict(reference_model(model), xf), y)  # == QKeras
    assert_array_equal(Emulator(ir_qkeras).run_float(x), y)  # == the QKeras import
    assert len(np.unique(y)) > 20
    return net


def test_jet_tagger_modelgraph_equals_csim_qkeras_and_qkeras_import(jet_graph, jet_tagger_ir):
    model, hm = jet_graph
    net = _chain(model, hm, jet_tagger_ir, 3000)
    # the IR carries hls4ml's inferred accumulator/result types, not the QKeras import's
    assert net.tensors["fc1"].fixed.hls_type() == "ap_fixed<27,12>"
    assert net.tensors["relu1"].fixed.hls_type() == "ap_ufixed<6,0>"


@pytest.mark.slow
def test_jet_tagger_modelgraph_100k(jet_graph, jet_tagger_ir):
    model, hm = jet_graph
    _chain(model, hm, jet_tagger_ir, 100_000)


def _graph(tmp_path, layers, precisions):
    """A ModelGraph from plain layer dicts (no ML framework), every type given."""
    from hls4ml.model.graph import ModelGraph
    from hls4ml.utils.config import create_config

    cfg = create_config(output_dir=str(tmp_path), project_name="g", backend="Vitis")
    cfg["HLSConfig"] = {
        "Model": {"Precision": "ap_fixed<16,6>", "ReuseFactor": 1, "Strategy": "Latency"},
        "LayerName": {k: {"Precision": v} for k, v in precisions.items()},
    }
    return ModelGraph.from_layer_list(cfg, layers, ["x"], [layers[-1]["name"]])


INPUT = {"class_name": "InputLayer", "name": "x", "input_shape": [4]}
DENSE = {
    "class_name": "Dense",
    "name": "fc",
    "inputs": ["x"],
    "n_in": 4,
    "n_out": 3,
    "weight_data": np.full((4, 3), 0.25),
    "bias_data": np.zeros(3),
    "weight_quantizer": None,
    "bias_quantizer": None,
}
TYPES = {
    "x": {"result": "ap_fixed<8,4>"},
    "fc": {"weight": "ap_fixed<4,1>", "bias": "ap_fixed<4,1>"},
}


def test_plain_dict_graph_imports_and_matches(tmp_path):
    relu = {"class_name": "Activation", "name": "r", "activation": "relu", "inputs": ["fc"]}
    types = {**TYPES, "fc": {**TYPES["fc"], "accum": "ap_fixed<14,6>", "result": "ap_fixed<14,6>"}}
    types["r"] = {"result": "ap_ufixed<4,2,AP_RND,AP_SAT>"}
    net = import_modelgraph(_graph(tmp_path, [INPUT, DENSE, relu], types))
    assert [lay.op for lay in net.layers] == ["dense", "relu"]
    assert (net.layers[1].rounding, net.layers[1].overflow) == ("RND", "SAT")
    assert net.tensors["r"].fixed.hls_type() == "ap_ufixed<4,2>"


@pytest.mark.parametrize(
    ("extra", "types", "words"),
    [
        (
            {"class_name": "Activation", "name": "s", "activation": "sigmoid", "inputs": ["fc"]},
            {},
            ("'s'", "sigmoid", "drop it"),
        ),
        (
            {"class_name": "Activation", "name": "t", "activation": "tanh", "inputs": ["fc"]},
            {},
            ("'t'", "tanh", "supported"),
        ),
        (None, {"fc": {"accum": "ap_fixed<10,6>"}}, ("'fc'", "Dense", "rounds products")),
        (None, {"fc": {"accum": "ap_fixed<12,2,AP_TRN,AP_SAT>"}}, ("'fc'", "saturates")),
    ],
    ids=["sigmoid", "tanh", "accum-rounds", "accum-saturates"],
)
def test_refusals_name_the_layer(tmp_path, extra, types, words):
    layers = [INPUT, DENSE] + ([extra] if extra else [])
    all_types = {**TYPES, **{k: {**TYPES.get(k, {}), **v} for k, v in types.items()}}
    with pytest.raises(UnsupportedModelError) as e:
        import_modelgraph(_graph(tmp_path, layers, all_types))
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_general_batchnorm_node_is_the_affine_op(tmp_path):
    """A BatchNormalization whose scales are not powers of two (one negative): the IR's affine
    op with the node's scale and bias integers; C-sim == emulator."""
    bn = {
        "class_name": "BatchNormalization",
        "name": "bn",
        "inputs": ["fc"],
        "n_in": 3,
        "n_filt": -1,
        "scale_data": np.array([0.75, -1.375, 0.3125]),
        "bias_data": np.array([0.5, -0.25, 1.125]),
    }
    types = {**TYPES, "fc": {**TYPES["fc"], "accum": "ap_fixed<14,6>", "result": "ap_fixed<14,6>"}}
    types["bn"] = {
        "scale": "ap_fixed<8,2>",
        "bias": "ap_fixed<8,3>",
        "result": "ap_fixed<9,4,AP_RND,AP_SAT>",
    }
    hm = _graph(tmp_path, [INPUT, DENSE, bn], types)
    net = import_modelgraph(hm)
    assert [lay.op for lay in net.layers] == ["dense", "affine"]
    lay = net.layer("bn")
    assert_array_equal(lay.arrays["mult"], [48, -88, 20])  # ap_fixed<8,2>: 6 fraction bits
    assert (lay.rounding, lay.overflow) == ("RND", "SAT")
    x = bitexact_vectors(net, 3000, seed=2)
    xf = net.input_specs[0].fixed.to_float(x)
    y = Emulator(net).run_float(x)
    assert_array_equal(hls.predict(hls.compile_csim(hm), xf), y)
    assert len(np.unique(y)) > 20


def test_cli_import_hls4ml(jet_tagger_models, tmp_path, capsys):
    from l1forge.cli import main

    out = tmp_path / "jet_mg.qnet.json"
    model = jet_tagger_models["functional"]
    args, summary = cli_import("hls4ml", model, out, capsys, "--csim-vectors", "0")
    assert summary["layers"][0] == "fc1:dense" and out.is_file()
    assert main(args) == 2  # no input format for a file hls4ml must convert
    assert "--input-format" in capsys.readouterr().err


@pytest.mark.slow
def test_pytorch_modelgraph_is_bit_exact_to_its_csim_not_to_torch(tmp_path):
    """hls4ml's PyTorch converter gives a float torch net default types (ap_fixed<16,6>, TRN,
    WRAP on the ReLU output): the IR equals hls4ml's C-sim exactly, torch itself does not."""
    import hls4ml
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.round(p * 32) / 32)  # 6-bit weights: exact in ap_fixed<16,6>
    cfg = hls4ml.utils.config_from_pytorch_model(
        m, input_shape=(16,), granularity="name", backend="Vitis"
    )
    hm = hls4ml.converters.convert_from_pytorch_model(
        m,
        hls_config=cfg,
        output_dir=str(tmp_path),
        project_name="pt",
        backend="Vitis",
        io_type="io_parallel",
    )
    net = import_modelgraph(hm, name="pt")
    x = bitexact_vectors(net, 100_000, seed=1)
    xf = net.input_specs[0].fixed.to_float(x)
    y = hls.predict(hls.compile_csim(hm), xf)
    assert_array_equal(y, Emulator(net).run_float(x))
    with torch.no_grad():
        y_torch = m(torch.tensor(xf)).numpy()
    assert np.any(y_torch != y)  # the documented reason the torch route is not source-exact


def test_keras_batchnorm_through_hls4ml_converter(general_bn_model, tmp_path):
    """hls4ml's Keras converter types the float batch norm itself; its ModelGraph imports with
    the batch norm as the affine op and the C-sim equals the emulator."""
    hm = hls.compile_csim(convert_keras(general_bn_model, FMT, tmp_path, project_name="bn_mg"))
    net = import_modelgraph(hm, name="bn_mg")
    assert "affine" in [lay.op for lay in net.layers]
    x = bitexact_vectors(net, 5000, seed=3)
    xf = net.input_specs[0].fixed.to_float(x)
    y = Emulator(net).run_float(x)
    assert_array_equal(hls.predict(hm, xf), y)
    assert len(np.unique(y)) > 20
