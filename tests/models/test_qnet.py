import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError
from l1forge.models import qnet
from l1forge.models.build import NetBuilder, random_mlp
from l1forge.models.fixed import Fixed


def test_save_load_round_trip(tmp_path):
    net = random_mlp(57, (16, 8), 3, score=True, seed=3)
    path = qnet.save(net, tmp_path / "enc.json")
    back = qnet.load(path)
    assert back == net
    for a, b in zip(net.layers, back.layers, strict=True):
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            assert_array_equal(a.arrays[k], b.arrays[k])
    assert back.provenance["seed"] == 3


def _saved(tmp_path):
    return qnet.save(random_mlp(8, (4,), 2, seed=1), tmp_path / "n.json")


def test_load_rejects_a_changed_arrays_file(tmp_path):
    path = _saved(tmp_path)
    other = qnet.save(random_mlp(8, (4,), 2, seed=2), tmp_path / "m.json")
    other.with_suffix(".npz").replace(path.with_suffix(".npz"))
    with pytest.raises(DataFormatError, match="checksum"):
        qnet.load(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(format="onnx"), "not a qnet"),
        (lambda d: d["layers"][1].update(op="conv9d"), "unknown op"),
        (lambda d: d["layers"][1].update(rounding="NEAREST"), "rounding"),
        (lambda d: d["layers"][1].update(input="nowhere"), "not produced"),
        (lambda d: d["tensors"][0]["fixed"].update(width=0), "width"),
        (lambda d: d.update(outputs=["ghost"]), "not declared"),
    ],
)
def test_load_names_what_is_malformed(tmp_path, mutate, message):
    path = _saved(tmp_path)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=message):
        qnet.load(path)


def test_load_rejects_garbage_and_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        qnet.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match="not a qnet IR JSON"):
        qnet.load(bad)
    path = _saved(tmp_path)
    path.with_suffix(".npz").unlink()
    with pytest.raises(DataFormatError, match="missing"):
        qnet.load(path)


def test_weights_must_fit_their_format():
    b = NetBuilder("n", 2, Fixed(True, 8, 8))
    with pytest.raises(DataFormatError, match="does not fit"):
        b.dense("d", np.array([[200], [1]]), Fixed(True, 8, 1), np.array([0]), Fixed(True, 8, 1))
        b.build()


def test_exact_formats_are_inferred_from_weights():
    b = NetBuilder("n", 2, Fixed(False, 4, 4))  # inputs 0..15
    w = np.array([[3], [-2]])
    b.dense("d", w, Fixed(True, 4, 2), np.array([1]), Fixed(True, 4, 4))
    # accumulators at frac 2: x*3 in 0..45, x*(-2) in -30..0, bias 1 -> 4
    out = b.build().tensors["d"].fixed
    assert out.frac_bits == 2
    assert out.min_int <= -30 + 4 and out.max_int >= 45 + 4
    assert out == Fixed.covering(-30 + 4, 45 + 4, 2)


def _affine_net(tmp_path=None, **arrays):
    b = NetBuilder("aff", 3, Fixed(True, 8, 4))
    b.affine("a", np.array([5, -3, 0]), Fixed(True, 6, 2), np.array([1, 2, -7]), Fixed(True, 6, 3))
    return b.build()


def test_affine_round_trip_and_range(tmp_path):
    net = _affine_net()
    back = qnet.load(qnet.save(net, tmp_path / "a.json"))
    assert back == net
    assert_array_equal(back.layer("a").arrays["mult"], [5, -3, 0])
    # x in [-128, 127] (4 frac bits) * mult (4 frac bits) + add (3 frac bits): 8 frac bits
    assert net.tensors["a"].fixed == Fixed.covering(-128 * 5 - 14, 127 * 5 + 2, 8)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(arrays={"mult": np.array([1, 2]), "add": np.zeros(3, int)}), "one entry per"),
        (dict(array_formats={"mult": Fixed(True, 6, 2)}), "formats for mult and add"),
        (dict(arrays={"mult": np.array([99, 0, 0]), "add": np.zeros(3, int)}), "does not fit"),
    ],
)
def test_affine_validation(change, message):
    import dataclasses

    net = _affine_net()
    lay = dataclasses.replace(net.layers[0], **change)
    with pytest.raises(DataFormatError, match=message):
        dataclasses.replace(net, layers=(lay,))
