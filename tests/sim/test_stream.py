"""The live Pythia stream of the online daemon's Pythia source: reproducible, processes in turn."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_array_equal

from l1forge.sim.generate import ShardSpec, generate_shard
from l1forge.sim.l1objects import DetectorResponse, to_hardware
from l1forge.sim.processes import get_process
from l1forge.sim.stream import ShardStream


def test_a_stream_is_reproducible_and_takes_the_processes_in_turn():
    a = ShardStream(("minbias", "zll"), pileup=0.0, seed=3, shard_events=4)
    b = ShardStream(("minbias", "zll"), pileup=0.0, seed=3, shard_events=4)
    first = a.next_shard()
    assert first.shape == (4, 19, 3) and first.dtype == np.int16
    assert_array_equal(first, b.next_shard())
    second = a.next_shard()  # shard 1 is the second process, with the seeds of shard index 1
    spec = ShardSpec(get_process("zll"), 4, 1, 3, 0.0, DetectorResponse(), None)
    assert_array_equal(second, to_hardware(generate_shard(spec).objects_phys).astype(np.int16))
