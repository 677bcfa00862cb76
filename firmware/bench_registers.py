"""cocotb bench of the register bank: a parameter switch in mid-stream, read-back, refusals.

Configured by environment: ``L1F_FIRMWARE`` (the folder, for ``packing.json``'s register map),
``L1F_VECTORS`` npz with ``in_bytes``, ``expected_old`` and ``expected_new`` (the emulator's
packed outputs, seed bits included, under the old and the new parameter set) and
``out_bytes``; ``L1F_PLAN`` JSON with ``old`` and ``new`` (lists of [address, word]: the old
set is written and committed before the stream, the new one in mid-stream), ``bad`` (writes
the bank must refuse with SLVERR) and ``switch_at`` (events entered before the new set's
writes start); ``L1F_STATS`` JSON written with the counts.

Events flow back to back for the whole run while cocotbext-axi's AXI4-Lite master writes.
The bench records the clock edge of every write response (BVALID rising); by the map's rule
every event captured at or before the COMMIT write's edge must equal ``expected_old`` and every
later one ``expected_new``, each exactly once and in order at the fixed latency.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any

import cocotb
import numpy as np

from l1forge.firmware import packing
from l1forge.firmware.bench_trigger import axil_master, program_registers, start_and_reset
from l1forge.firmware.registers import RegisterMap

SLVERR = 2


def _le(word: int) -> bytes:
    return (int(word) & 0xFFFFFFFF).to_bytes(4, "little")


@cocotb.test()
async def registers_switch(dut: Any) -> None:
    """New thresholds, offsets and shifts committed while events flow back to back."""
    fw = os.environ["L1F_FIRMWARE"]
    rmap = RegisterMap.from_json(packing.load(os.path.join(fw, "packing.json")).registers)
    data = np.load(os.environ["L1F_VECTORS"])
    ins = packing.to_ints(data["in_bytes"])
    old = packing.to_ints(data["expected_old"])
    new = packing.to_ints(data["expected_new"])
    with open(os.environ["L1F_PLAN"]) as fh:
        plan = json.load(fh)
    latency = rmap.latency_cycles
    n = len(ins)

    fall = await start_and_reset(dut)
    master = axil_master(dut)
    notes: dict[str, int] = {}

    # reset values read back, identification, then the old set committed before the stream
    async def read(addr: int) -> tuple[int, int]:
        r = await master.read(addr, 4)
        return int.from_bytes(bytes(r.data), "little"), int(r.resp)

    ident = [(await read(rmap.reg(k).address))[0] for k in ("ID", "MAP_VERSION", "VERSION")]
    assert ident == [0x4C314652, 1, 0], f"ID, MAP_VERSION, VERSION after reset: {ident}"
    for r in rmap.registers:
        if r.access == "rw":
            got = [rmap.decode(r.name, (await read(r.addr(i)))[0]) for i in range(r.count)]
            assert got == list(r.reset), f"{r.name} after reset: {got} != {list(r.reset)}"
    await program_registers(master, [tuple(w) for w in plan["old"]])
    for _ in range(latency + 1):
        await fall
    assert (await read(rmap.reg("VERSION").address))[0] == 1
    await fall  # the reads returned after a rising edge: drive from a falling edge again

    edge = 0  # rising edges since the stream started; the one before this falling edge
    rises: list[int] = []  # edges at which BVALID rose (the bank performed a write)
    done = {"writer": False}

    async def writer() -> None:
        while edge < plan["switch_at"]:
            await fall
        for addr, word in plan["new"]:
            resp = await master.write(addr, _le(word))
            assert int(resp.resp) == 0, f"write {addr:#x}: response {resp.resp}"
        # read-back of the shadow set before the commit: what was written
        for addr, word in plan["new"]:
            got, resp = await read(addr)
            assert (resp, got) == (0, word & 0xFFFFFFFF), f"read {addr:#x}: {got:#x} != {word:#x}"
        n_before = len(rises)
        commit_addr, commit_word = rmap.commit_write()
        resp = await master.write(commit_addr, _le(commit_word))
        assert int(resp.resp) == 0
        notes["commit_edge"] = rises[n_before]
        version = (await read(rmap.reg("VERSION").address))[0]
        notes["version_after_commit"] = version
        # refused writes: SLVERR, nothing changes (checked by reading back every written word)
        refused = 0
        for addr, word, nbytes in plan["bad"]:
            resp = await master.write(addr, _le(word)[:nbytes])
            refused += int(resp.resp) == SLVERR
        notes["refused"] = refused
        for addr, word in plan["new"]:
            got, _ = await read(addr)
            assert got == word & 0xFFFFFFFF, f"after refused writes {addr:#x}: {got:#x}"
        notes["version_after_refused"] = (await read(rmap.reg("VERSION").address))[0]
        done["writer"] = True

    task = cocotb.start_soon(writer())
    queue = deque(range(n))
    pipe: list[tuple[int, int] | None] = [None] * latency  # (event, capture edge)
    outputs: list[tuple[int, int, int]] = []  # (event, capture edge, out_data)
    timing_errors = 0
    prev_bvalid = 0
    while queue or any(p is not None for p in pipe) or not done["writer"]:
        current = None
        if queue:
            current = (queue.popleft(), edge)
            dut.in_valid.value = 1
            dut.in_data.value = ins[current[0]]
        else:
            dut.in_valid.value = 0
        await fall
        bvalid = int(dut.s_axil_bvalid.value)
        if bvalid and not prev_bvalid:
            rises.append(edge)
        prev_bvalid = bvalid
        pipe = [current, *pipe[:-1]]
        want = pipe[-1]
        valid = int(dut.out_valid.value)
        if valid != int(want is not None):
            timing_errors += 1
        elif want is not None:
            outputs.append((want[0], want[1], dut.out_data.value.to_unsigned()))
        edge += 1
        if edge > 40 * n + 10_000:
            raise AssertionError("the writer never finished")
    dut.in_valid.value = 0
    await task

    t_c = int(notes["commit_edge"])
    mismatches, first_bad = 0, None
    n_old = n_new = 0
    for k, cap, value in outputs:
        ref = old[k] if cap <= t_c else new[k]
        n_old += cap <= t_c
        n_new += cap > t_c
        if value != ref:
            mismatches += 1
            side = "old" if cap <= t_c else "new"
            first_bad = first_bad or f"event {k} (edge {cap}, commit {t_c}): {value:#x} != {side}"
    events_out = sorted(k for k, _, _ in outputs)
    stats = {
        "events_in": n,
        "events_out": len(outputs),
        "lost_or_duplicated": int(events_out != list(range(n))),
        "timing_errors": timing_errors,
        "mismatches": mismatches,
        "events_old_set": n_old,
        "events_new_set": n_new,
        "commit_edge": t_c,
        "first_new_event": next((k for k, cap, _ in outputs if cap > t_c), None),
        "version_after_commit": notes["version_after_commit"],
        "version_after_refused": notes["version_after_refused"],
        "refused": notes["refused"],
        "bad_writes": len(plan["bad"]),
        "edges": edge,
    }
    if "L1F_STATS" in os.environ:
        with open(os.environ["L1F_STATS"], "w") as fh:
            json.dump(stats, fh)
    assert timing_errors == 0, f"{timing_errors} cycles with out_valid off the fixed latency"
    assert mismatches == 0, f"{mismatches} mismatches; first: {first_bad}"
    assert stats["lost_or_duplicated"] == 0 and len(outputs) == n
    assert stats["refused"] == len(plan["bad"]), f"{stats['refused']} of {len(plan['bad'])} refused"
    assert stats["version_after_commit"] == stats["version_after_refused"] == 2
