"""cocotb bench: replays an input pattern file into the trigger wrapper, captures its outputs.

Configured by environment: ``L1F_PATTERN_IN`` (an input pattern file, one clock per line),
``L1F_PATTERN_OUT`` (the output pattern file written: one line per clock from the first input
clock until the pipeline is empty, ``out_valid`` and ``out_data``, zeros while not valid) and
``L1F_LATENCY`` (clock cycles, to know how long to keep clocking after the last input). The
bench checks nothing itself: ``l1forge firmware patterns compare`` judges the captured file,
as it would one captured on a board.
"""

from __future__ import annotations

import os
from pathlib import Path

import cocotb
import numpy as np

from l1forge.firmware import packing, patterns
from l1forge.firmware.bench_trigger import start_and_reset


@cocotb.test()
async def replay_pattern(dut) -> None:
    """Drive every line of the input pattern for one clock; record every output clock."""
    inp = patterns.read_pattern(os.environ["L1F_PATTERN_IN"], "input")
    spec = packing.load(Path(inp.path).parent / inp.header["packing"])
    latency = int(os.environ["L1F_LATENCY"])

    fall = await start_and_reset(dut)

    n = len(inp.words)
    valid_out = np.zeros(n + latency, dtype=bool)
    words_out = [0] * (n + latency)
    for cycle in range(n + latency):
        if cycle < n:
            dut.in_valid.value = int(inp.valid[cycle])
            dut.in_data.value = inp.words[cycle]
        else:
            dut.in_valid.value = 0
        await fall  # the rising edge in between captured the inputs
        if int(dut.out_valid.value):
            valid_out[cycle] = True
            words_out[cycle] = dut.out_data.value.to_unsigned()
    keep = ("network", "qnet_sha256", "packing", "packing_sha256", "events")
    header = {k: inp.header[k] for k in keep if k in inp.header}
    header["captured"] = f"cocotb trigger wrapper {os.environ.get('SIM', 'simulator')}"
    patterns.write_pattern(
        os.environ["L1F_PATTERN_OUT"], "output", valid_out, words_out, spec.output, header
    )
