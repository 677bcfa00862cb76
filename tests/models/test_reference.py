"""The reference encoder: built once from its recipe, reused from the cache, rebuilt on change."""

from __future__ import annotations

import json

import numpy as np
from numpy.testing import assert_array_equal

from l1forge.models import qnet
from l1forge.models.emulator import Emulator
from l1forge.models.networks import exact_predict
from l1forge.models.reference import ReferenceRecipe, reference_deploy_model, reference_encoder
from l1forge.models.train import read_inputs

SMALL = ReferenceRecipe(n_background=600, n_signal=60, seed=7, pileup_mean=0.0)


def test_reference_encoder_is_built_cached_and_rebuilt(tmp_path):
    ref = reference_encoder(tmp_path, SMALL, n_workers=1)
    assert ref.network_source == "trained"
    net = qnet.load(ref.qnet_path)
    assert net.layers[0].op == "scale"  # exported from QKeras, input scaling
    summary = json.loads(ref.summary_path.read_text())
    assert summary["n_background_train"] + summary["n_background_test"] < SMALL.n_background
    assert set(summary["score"]["signals"]) == {"ato4l", "lq_btau", "h0_tautau", "hch_taunu"}
    mtime = ref.qnet_path.stat().st_mtime_ns
    again = reference_encoder(tmp_path, SMALL, n_workers=1)
    assert again == ref and ref.qnet_path.stat().st_mtime_ns == mtime  # reused, not retrained
    # the deploy network rebuilt from the cache equals the IR on the sample's own events
    x = read_inputs(ref.background_path, net.tensors[net.inputs[0]].fixed.width).by_process
    x = np.concatenate(list(x.values()))[:300]
    with_keras = exact_predict(reference_deploy_model(ref), x)
    emu = Emulator(net)
    try:
        assert_array_equal(with_keras, emu.run_float(x))
    finally:
        emu.close()
    other = ReferenceRecipe(n_background=600, n_signal=60, seed=8, pileup_mean=0.0)
    reference_encoder(tmp_path, other, n_workers=1)
    assert ref.qnet_path.stat().st_mtime_ns != mtime  # a new recipe builds a new encoder
