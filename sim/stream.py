"""Live Pythia events in hardware units, shard after shard, for a streaming consumer.

The online daemon's Pythia source runs this in a process of its own and pushes each shard on.
Shard ``i`` generates ``processes[i % len(processes)]`` with the seeds ``generate_shard`` derives
from (seed, process, i), so a stream is reproducible; pile-up is overlaid from one library of
minimum-bias events made when the stream is created.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from l1forge.sim.generate import PileupLibrary, ShardSpec, generate_shard
from l1forge.sim.l1objects import DetectorResponse, to_hardware
from l1forge.sim.processes import get_process


class ShardStream:
    """Endless shards of ``shard_events`` events; ``next_shard`` generates the next one."""

    def __init__(
        self,
        processes: Sequence[str],
        *,
        pileup: float,
        seed: int,
        shard_events: int = 100,
        library_events: int = 100,
    ):
        self.response = DetectorResponse()
        self.processes = [get_process(p) for p in processes]
        self.pileup = pileup
        self.seed = seed
        self.shard_events = shard_events
        self.library = None
        if pileup > 0:
            self.library = PileupLibrary.generate(seed, library_events, self.response)
        self.index = 0

    def next_shard(self) -> np.ndarray:
        """int16 (n, 19, 3) hardware objects of the next shard."""
        proc = self.processes[self.index % len(self.processes)]
        spec = ShardSpec(
            proc, self.shard_events, self.index, self.seed, self.pileup, self.response, self.library
        )
        res = generate_shard(spec)
        self.index += 1
        return to_hardware(res.objects_phys).astype(np.int16)
