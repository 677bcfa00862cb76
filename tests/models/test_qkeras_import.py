"""QKeras models as people write them: imported exactly, or refused in one line naming the layer."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.cli import main
from l1forge.errors import DataFormatError, UnsupportedModelError
from l1forge.models.emulator import Emulator
from l1forge.models.examples import JET_TAGGER_INPUT_FORMAT
from l1forge.models.fixed import Fixed
from l1forge.models.qkeras_import import (
    BN_FORMAT,
    batchnorm_constants,
    import_qkeras,
    parse_format,
    reference_model,
    reference_predict,
)
from l1forge.models.qnet import load
from l1forge.models.vectors import bitexact_vectors

from .imports import cli_import

FMT = parse_format(JET_TAGGER_INPUT_FORMAT)


def _bit_exact(model, net, n):
    x = bitexact_vectors(net, n, seed=9)
    y_src = reference_predict(reference_model(model), net.input_specs[0].fixed.to_float(x))
    y_emu = Emulator(net).run_float(x)
    assert_array_equal(y_src, y_emu)
    assert len(np.unique(y_emu)) > 20
    return x


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_jet_tagger_qkeras_equals_emulator(jet_tagger_models, kind):
    model = jet_tagger_models[kind]
    net = import_qkeras(model, FMT)
    assert [lay.op for lay in net.layers] == ["dense", "relu"] * 3 + ["dense"]
    assert net.tensors["relu1"].fixed == Fixed(False, 6, 0)  # quantized_relu(6)
    _bit_exact(model, net, 4000)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_jet_tagger_qkeras_equals_emulator_100k(jet_tagger_models, kind):
    model = jet_tagger_models[kind]
    assert len(_bit_exact(model, import_qkeras(model, FMT), 100_000)) >= 100_000


def _q():
    import tensorflow as tf
    from qkeras import QActivation, QDense, quantized_bits, quantized_relu

    return tf, QActivation, QDense, quantized_bits, quantized_relu


def test_input_quantizer_po2_alpha_batchnorm_and_inline_activations():
    """Input quantizer as the input format, alpha=0.5 weights, a power-of-two batch norm."""
    tf, QActivation, QDense, qbits, qrelu = _q()
    tf.keras.utils.set_random_seed(3)
    bn = tf.keras.layers.BatchNormalization(epsilon=1e-30, name="bn")
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8,)),
            QActivation(qbits(10, 3, alpha=1), name="x_q"),
            QDense(
                12,
                kernel_quantizer=qbits(6, 0, alpha=0.5),
                bias_quantizer=qbits(8, 2, alpha=1),
                activation=qrelu(8, 3),
                name="fc1",
            ),
            bn,
            QDense(
                3, kernel_quantizer=qbits(5, 0, alpha=1), bias_quantizer=qbits(5, 0), name="out"
            ),
            QActivation(qbits(12, 4, alpha=1), name="score"),
        ]
    )
    rng = np.random.default_rng(0)
    bn.set_weights(
        [
            2.0 ** rng.integers(-2, 2, 12),
            np.round(rng.normal(0, 1, 12) * 8) / 8,
            np.zeros(12),
            np.ones(12),
        ]
    )
    net = import_qkeras(model)
    assert net.input_specs[0].fixed == Fixed(True, 10, 4)
    assert [lay.op for lay in net.layers] == ["dense", "relu", "scale", "dense", "quantize"]
    _bit_exact(model, net, 4000)


def test_general_batchnorm_is_the_affine_op_and_equals_qkeras(general_bn_model, general_bn_ir):
    """A batch norm with scales of both signs that are not powers of two: mult and add rounded
    into ap_fixed<16,6>; the IR equals the QKeras model with those constants bit for bit."""
    net, model = general_bn_ir, general_bn_model
    assert [lay.op for lay in net.layers] == ["dense", "affine", "relu", "dense"]
    bn = net.layer("bn")
    assert (
        bn.array_formats
        == {"mult": BN_FORMAT, "add": BN_FORMAT}
        == {
            "mult": Fixed(True, 16, 6),
            "add": Fixed(True, 16, 6),
        }
    )
    mult, add = batchnorm_constants(model.get_layer("bn"), BN_FORMAT)
    assert_array_equal(bn.arrays["mult"], mult)
    assert_array_equal(bn.arrays["add"], add)
    assert np.any(mult < 0) and np.any(mult > 0)
    assert np.any(np.exp2(np.round(np.log2(np.abs(mult)))) != np.abs(mult))
    x = _bit_exact(model, net, 12_000)
    assert len(x) >= 12_000
    # the rounding of mult and add is real: the unquantized float model differs somewhere
    from l1forge.models.networks import floatx

    with floatx("float64"):
        ref = reference_model(model)
        ref.get_layer("bn").set_weights(model.get_layer("bn").get_weights())
    y_float = reference_predict(ref, net.input_specs[0].fixed.to_float(x))
    assert np.any(y_float != Emulator(net).run_float(x))


@pytest.mark.slow
def test_general_batchnorm_equals_qkeras_100k(general_bn_model, general_bn_ir):
    assert len(_bit_exact(general_bn_model, general_bn_ir, 100_000)) >= 100_000


def test_cli_bn_format_option(general_bn_model, tmp_path, capsys):
    out = tmp_path / "bn.qnet.json"
    fmt = ["--bn-format", "ap_fixed<12,4>", "--check-vectors", "3000"]
    _, summary = cli_import("qkeras", general_bn_model, out, capsys, *fmt)
    assert summary["bit_exact_vs_source"] and summary["vectors_checked"] >= 3000
    assert "bn:affine" in summary["layers"]
    net = load(out)
    assert net.layer("bn").array_formats["mult"] == Fixed(True, 12, 4)
    assert net.provenance["bn_format"] == "ap_fixed<12,4>"
    bad = ["import", "qkeras", str(tmp_path / "jet.h5"), "--out", str(out), "--bn-format", "x"]
    assert main([*bad, "--input-format", JET_TAGGER_INPUT_FORMAT]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--bn-format" in err


def _one_line(exc: Exception, *words: str) -> None:
    text = str(exc)
    assert "\n" not in text
    for w in words:
        assert w in text, (w, text)


def test_refuses_float_inputs_without_a_format(jet_tagger_models):
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(jet_tagger_models["sequential"])
    _one_line(e.value, "'fc1'", "QDense", "--input-format")


def test_refuses_softmax_and_says_to_drop_it():
    tf, _, QDense, qbits, _ = _q()
    model = tf.keras.Sequential(
        [
            tf.keras.Input((4,)),
            QDense(
                3,
                kernel_quantizer=qbits(6, 0, alpha=1),
                bias_quantizer=qbits(6, 0, alpha=1),
                name="fc",
            ),
            tf.keras.layers.Activation("softmax", name="sm"),
        ]
    )
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(model, FMT)
    _one_line(e.value, "'sm'", "Activation", "softmax", "drop it")


def test_refuses_float_dense_and_unknown_layers():
    tf, *_ = _q()
    dense = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, name="d")])
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(dense, FMT)
    _one_line(e.value, "'d'", "Dense", "QDense")
    leaky = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.LeakyReLU(name="lk")])
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(leaky, FMT)
    _one_line(e.value, "'lk'", "LeakyReLU", "supported layers")


def test_refuses_a_batchnorm_outside_its_format_and_float_alpha():
    tf, _, QDense, qbits, _ = _q()
    bn = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.BatchNormalization(name="bn")])
    bn.layers[0].set_weights([np.full(4, 40.0), np.zeros(4), np.zeros(4), np.ones(4)])
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(bn, FMT)  # a scale of 40 does not fit ap_fixed<16,6>
    _one_line(e.value, "'bn'", "BatchNormalization", "ap_fixed<16,6>", "--bn-format")
    assert import_qkeras(bn, FMT, bn_format=Fixed(True, 16, 7)).layers[0].op == "affine"
    bn.layers[0].set_weights([np.full(4, 0.7), np.zeros(4), np.zeros(4), np.zeros(4)])
    bn.layers[0].epsilon = 0.0
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(bn, FMT)
    _one_line(e.value, "'bn'", "BatchNormalization", "not finite")
    auto = tf.keras.Sequential(
        [tf.keras.Input((4,)), QDense(2, kernel_quantizer=qbits(6, 0, alpha="auto"), name="fa")]
    )
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(auto, FMT)
    _one_line(e.value, "'fa'", "QDense", "alpha")


def test_refuses_graphs_that_are_not_chains():
    tf, _, QDense, qbits, _ = _q()
    x = tf.keras.Input((4,))
    a = QDense(
        4, kernel_quantizer=qbits(6, 0, alpha=1), bias_quantizer=qbits(6, 0, alpha=1), name="a"
    )(x)
    y = tf.keras.layers.Add(name="skip")([a, x])
    with pytest.raises(UnsupportedModelError) as e:
        import_qkeras(tf.keras.Model(x, y), FMT)
    _one_line(e.value, "'skip'", "Add")


def test_cli_imports_and_refuses_in_one_line(jet_tagger_models, tmp_path, capsys):
    out = tmp_path / "jet.qnet.json"
    model = jet_tagger_models["sequential"]
    args, summary = cli_import("qkeras", model, out, capsys, "--check-vectors", "500")
    assert summary["bit_exact_vs_source"] and summary["vectors_checked"] >= 500
    assert out.is_file() and out.with_suffix(".npz").is_file()
    # no input format: the refusal is one line, exit 2
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'fc1' (QDense)" in err


@pytest.mark.parametrize(
    "content", [None, b"", b"\x89HDF\r\n\x1a\ntruncated", b'{"not": "a model"}']
)
def test_a_file_that_is_not_a_model_is_named(tmp_path, capsys, content):
    path = tmp_path / "model.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataFormatError, match=r"model\.h5"):
        from l1forge.models.qkeras_import import load_model

        load_model(path)
    rc = main(["import", "qkeras", str(path), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(path) in err
