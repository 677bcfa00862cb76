import numpy as np
import pytest

from l1forge.errors import DataFormatError
from l1forge.firmware import packing
from l1forge.models.build import NetBuilder, random_mlp
from l1forge.models.fixed import Fixed


def _two_output_net():
    b = NetBuilder("t", 3, Fixed(True, 5, 5))
    b.quantize("u", Fixed(False, 3, 3), "TRN", "SAT")
    b.quantize("v", Fixed(True, 4, 2), "TRN", "SAT")
    return b.build(outputs=("u", "v"))


def test_layout_offsets_from_ir():
    spec = packing.packing_from_qnet(_two_output_net(), beat_bits=8)
    assert spec.input.bits == 15
    assert [s.offset for s in spec.output.slots] == [0, 9]
    assert spec.output.bits == 21
    assert spec.beats_per_input == 2 and spec.beats_per_output == 3
    fields = spec.to_json()["output"]["fields"]
    assert fields[3] == {
        "name": "v[0]",
        "tensor": "v",
        "index": 0,
        "offset": 9,
        "width": 4,
        "signed": True,
        "frac_bits": 2,
    }


def test_pack_known_bits():
    spec = packing.packing_from_qnet(_two_output_net())
    x = np.array([[1, -1, -16]])
    data = packing.pack(x, spec.input)
    # fields: 00001 | 11111 << 5 | 10000 << 10
    assert packing.to_ints(data) == [1 | (31 << 5) | (16 << 10)]


@pytest.mark.parametrize("beat_bits", [8, 32, 64, 256])
def test_round_trip_random_and_corners(beat_bits):
    net = random_mlp(57, (8,), 3, score=True, seed=3)
    spec = packing.packing_from_qnet(net, beat_bits)
    rng = np.random.default_rng(0)
    for bus in (spec.input, spec.output):
        lo = [s for s in bus.slots]
        cols = []
        for s in lo:
            mn = -(1 << (s.width - 1)) if s.signed else 0
            mx = (1 << (s.width - 1)) - 1 if s.signed else (1 << s.width) - 1
            c = rng.integers(mn, mx + 1, size=(500, s.size))
            c[0], c[1], c[2] = mn, mx, 0
            cols.append(c)
        x = np.concatenate(cols, axis=1)
        data = packing.pack(x, bus, bus.bytes_for(beat_bits))
        assert data.shape == (500, bus.bytes_for(beat_bits))
        np.testing.assert_array_equal(packing.unpack(data, bus), x)
        ints = packing.to_ints(data)
        np.testing.assert_array_equal(packing.from_ints(ints, data.shape[1]), data)


def test_json_round_trip(tmp_path):
    spec = packing.packing_from_qnet(random_mlp(10, (4,), 2, seed=1), 32)
    assert packing.load(spec.save(tmp_path / "p.json")) == spec


def test_out_of_range_values_refused():
    spec = packing.packing_from_qnet(_two_output_net())
    with pytest.raises(DataFormatError, match="outside"):
        packing.pack(np.array([[16, 0, 0]]), spec.input)
    with pytest.raises(DataFormatError, match="shape"):
        packing.pack(np.zeros((2, 4), dtype=np.int64), spec.input)
