"""Backends: the emulator backend is the emulator, swaps are atomic, RTL agrees bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import ConfigError, DataFormatError, MissingToolError
from l1forge.firmware import packing
from l1forge.firmware.vectors import bench_vectors
from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.online.datapath.backends import (
    Backend,
    EmulatorBackend,
    ModelSwapError,
    make_backend,
    output_formats,
    outputs_float,
)
from l1forge.sim.dataset import read_events


@pytest.fixture(scope="module")
def inputs(events_h5, tiny_ir_path):
    """Real Pythia events plus the corner and random vectors the firmware benches use."""
    net = qnet.load(tiny_ir_path)
    real = read_events(events_h5).inputs
    return np.concatenate([bench_vectors(net, 500, seed=2), real]).astype(np.int64)


def test_emulator_backend_is_the_emulator(tiny_ir_path, tiny_classifier_ir_path, inputs):
    for path in (tiny_ir_path, tiny_classifier_ir_path):
        net = qnet.load(path)
        ref = Emulator(net)
        for be in (EmulatorBackend(path), make_backend("emulator", net=net)):
            assert isinstance(be, Backend) and be.name == "emulator"
            y = be.infer(inputs)
            assert y.dtype == np.int64 and y.shape == (len(inputs), 1)
            assert_array_equal(y, ref.run(inputs))
            assert_array_equal(be.outputs_float(y), ref.run_float(inputs))
            ints, reals = be.infer_float(inputs[:100])
            assert_array_equal(ints, y[:100])
            assert_array_equal(reals, ref.run_float(inputs[:100]))
            be.close()


def test_emulator_backend_warms_up_on_each_wire_dtype(monkeypatch, tiny_ir_path, inputs):
    """Made, and after a swap, the backend has already run one event of each dtype the wire
    carries (its compiled passes loaded before the run's first batch), and it still computes
    what the emulator computes."""
    from l1forge.online.datapath import backends
    from l1forge.online.datapath.wire import DTYPE_CODES

    calls = []

    class Spy(Emulator):
        def run(self, x):
            calls.append((np.asarray(x).dtype, len(x)))
            return super().run(x)

    monkeypatch.setattr(backends, "Emulator", Spy)
    want = {(dt, 1) for dt in DTYPE_CODES.values()}
    be = EmulatorBackend(tiny_ir_path)
    assert set(calls) == want
    calls.clear()
    be.swap(random_mlp(score=True, seed=43, name="tiny_ad_v3"))
    assert set(calls) == want
    be.swap(tiny_ir_path)
    assert_array_equal(be.infer(inputs), Emulator(qnet.load(tiny_ir_path)).run(inputs))
    be.close()


def test_outputs_float_uses_each_output_format():
    net = random_mlp(8, (4,), 3, seed=3)
    y = Emulator(net).run(np.arange(80).reshape(10, 8))
    assert len(output_formats(net)) == 3
    assert_array_equal(outputs_float(net, y), Emulator(net).run_float(np.arange(80).reshape(10, 8)))
    with pytest.raises(DataFormatError):
        outputs_float(net, y[:, :2])


def test_swap_changes_outputs_to_the_new_network(tiny_ir_path, inputs):
    old = qnet.load(tiny_ir_path)
    new = random_mlp(score=True, seed=42, name="tiny_ad_v2")
    be = EmulatorBackend(old)
    before = be.infer(inputs)
    assert_array_equal(before, Emulator(old).run(inputs))
    assert be.swap(new) is new and be.net is new
    after = be.infer(inputs)
    assert_array_equal(after, Emulator(new).run(inputs))
    assert (after != before).any()
    be.swap(tiny_ir_path)  # back, from the saved IR
    assert_array_equal(be.infer(inputs), before)


def test_swap_refuses_another_layout_and_keeps_running(tiny_ir_path, inputs):
    be = EmulatorBackend(tiny_ir_path)
    before = be.infer(inputs[:50])
    for other in (random_mlp(n_out=2, seed=1), random_mlp(n_in=40, score=True, seed=1)):
        with pytest.raises(ModelSwapError, match="same layout"):
            be.swap(other)
    assert_array_equal(be.infer(inputs[:50]), before)
    be.swap(random_mlp(n_out=2, seed=1), same_layout=False)
    assert be.infer(inputs[:50]).shape == (50, 2)


def test_swap_is_atomic_between_batches(tiny_ir_path, inputs):
    """While batches run in another thread, every batch is wholly the old or the new net's."""
    old, new = qnet.load(tiny_ir_path), random_mlp(score=True, seed=9)
    x = inputs[:3000]
    y_old, y_new = Emulator(old).run(x), Emulator(new).run(x)
    be = EmulatorBackend(old, chunk_size=256)
    results: list[np.ndarray] = []
    swapped = threading.Event()

    def run() -> None:
        while True:
            done = swapped.is_set()
            results.append(be.infer(x))
            if done:
                return

    t = threading.Thread(target=run)
    t.start()
    while not results:  # at least one batch on the old net before swapping
        t.join(0.01)
    be.swap(new)
    swapped.set()
    t.join(60)
    assert not t.is_alive()
    kinds = []
    for y in results:
        if np.array_equal(y, y_old):
            kinds.append("old")
        else:
            assert_array_equal(y, y_new)
            kinds.append("new")
    assert kinds[0] == "old" and kinds[-1] == "new"
    assert kinds == sorted(kinds, key=("old", "new").index)


def test_make_backend_errors(tmp_path, tiny_ir_path):
    with pytest.raises(ConfigError, match="gpu"):
        make_backend("gpu", net=tiny_ir_path)
    with pytest.raises(ConfigError, match="net="):
        make_backend("emulator")
    for kind in ("rtl", "pynq"):
        with pytest.raises(ConfigError, match="firmware_dir"):
            make_backend(kind)
    with pytest.raises(ConfigError, match="simulatr"):
        make_backend("rtl", firmware_dir=tmp_path, simulatr="icarus")
    with pytest.raises(ConfigError, match="chunk"):
        make_backend("emulator", net=tiny_ir_path, chunk=3)
    # a firmware folder's packing is all the board driver reads before it needs pynq
    packing.packing_from_qnet(qnet.load(tiny_ir_path)).save(tmp_path / "packing.json")
    with pytest.raises(MissingToolError, match="pynq"):
        make_backend("pynq", firmware_dir=tmp_path, bitfile=tmp_path / "top.bit")


@pytest.mark.rtl
def test_rtl_backend_agrees_with_the_emulator_backend(tiny_ir_path, inputs, tmp_path_factory):
    """The daemon's backends agree: the tiny IR's firmware under Icarus == the emulator."""
    import shutil

    from l1forge.firmware.build import BuildOptions, build

    if shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog (iverilog) is not installed: run `make setup`")
    net = qnet.load(tiny_ir_path)
    fw = tmp_path_factory.mktemp("fw_online")
    build(net, fw, BuildOptions(latency_cycles=2, hls=False, lint=False, n_check=256))
    x = np.concatenate([inputs[:150], inputs[-150:]])
    rtl = make_backend("rtl", firmware_dir=fw, simulator="icarus")
    try:
        assert rtl.name == "rtl-icarus"
        assert_array_equal(rtl.infer(x), EmulatorBackend(net).infer(x))
    finally:
        rtl.close()
