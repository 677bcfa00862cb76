"""The daemon's set_menu and set_scaling on the RTL of a register build (Icarus): a worker with
the rtl backend programs the bank over the simulated AXI4-Lite bus, and the RTL's outputs and
seed bits equal the emulator with the new parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from l1forge.firmware import registers
from l1forge.online.datapath.menu import Menu
from l1forge.online.datapath.protocol import InputScaling

from .runs import emulate, new_scaling
from .test_tuning import ad_menu, batch_frames, configured_worker, events, score

pytestmark = pytest.mark.rtl


def test_rtl_worker_takes_set_menu_and_set_scaling(
    tmp_path, scaled_ad_net, scaled_ad_ir, scaled_ad_fw
):
    x = events(scaled_ad_net, 120, seed=13)
    seqs = np.arange(len(x), dtype=np.uint64) + np.uint64(512)
    menu = ad_menu(score(scaled_ad_net, x))
    backend = {"kind": "rtl", "firmware_dir": str(scaled_ad_fw), "simulator": "icarus"}
    w = configured_worker(tmp_path, scaled_ad_ir, backend, menu)
    try:
        rtl = w.models[0].backend
        assert rtl.name == "rtl-icarus"
        r = w.process(batch_frames(x, 512))
        np.testing.assert_array_equal(r.scores[:, 0], score(scaled_ad_net, x))
        np.testing.assert_array_equal(r.seed_bits, menu.decide({"ad": r.scores[:, 0]}, seqs))
        rmap = rtl.registers.map
        t, _ = rmap.menu_thresholds(menu, "ad")
        want_bits = rmap.seed_bits(emulate(scaled_ad_net, x)[:, 0], rmap.threshold_ints(t))
        np.testing.assert_array_equal(rtl.last_seed_bits, want_bits)  # the RTL's comparators
        assert want_bits.any() and not want_bits.all()

        doc = menu.to_json()
        for s in doc["seeds"][:3]:
            s["threshold"] = s["threshold"] / 2
        new_menu = Menu.from_json(doc)
        w.set_menu(json.dumps(doc))
        off, sh = new_scaling(scaled_ad_net, seed=21)
        answer = w.set_scaling(InputScaling("ad", off, sh))
        assert answer["registers_version"] == 3 and answer["backend"] == "rtl-icarus"
        assert (answer["offset"], answer["shift"]) == (off, sh)  # read back from the bank

        r = w.process(batch_frames(x, 512))
        new_net = registers.with_scaling(scaled_ad_net, off, sh)
        want = score(new_net, x)
        assert np.mean(want != score(scaled_ad_net, x)) > 0.3
        np.testing.assert_array_equal(r.scores[:, 0], want)
        np.testing.assert_array_equal(r.seed_bits, new_menu.decide({"ad": want}, seqs))
        st = w.firmware_status()["ad"]
        assert st["registers_version"] == 3 and st["events_compared"] == 2 * len(x)
        assert sum(st["seed_mismatches"].values()) == 0
        assert w.new_mismatches == 0
    finally:
        w.close()


@pytest.mark.slow
def test_live_rtl_run_switches_menu_and_scaling_at_batch_boundaries(
    run_cfg, scaled_ad_net, scaled_ad_ir, scaled_ad_fw, running_pipeline
):
    """A running pipeline on the Icarus RTL: set_menu then set_scaling mid-run; read back from
    the ROOT files, scores and seed bits switch once each, at batch boundaries, to the emulator
    with the new parameters; the firmware's seed bits never differ from the software menu."""
    import uproot

    from l1forge.online.datapath.storage import TREE

    from .runs import TapBatches, assert_one_switch_at_a_batch_boundary, wait_for

    batch = 64
    # on these events the old scaling saturates most scores at 283.95, the new one keeps them
    # below 190: AD0 at 100 -> 290 changes its decision on both sides of the switch
    seeds = [
        {"name": "AD0", "model": "ad", "threshold": 100.0},
        {"name": "AD1", "model": "ad", "threshold": 250.0},
    ]
    cfg = run_cfg(
        backend={
            "kind": "rtl",
            "firmware_dir": str(scaled_ad_fw),
            "simulator": "icarus",
            "models": {"ad": str(scaled_ad_ir)},
        },
        menu={"seeds": [*seeds, {"name": "ZeroBias", "model": ""}]},  # every event stored
        source={"rate_hz": 200.0, "n_events": None, "loop": True},
        workers={"n": 1, "credits": 1, "timeout_s": 60.0},
        batch_size=batch,
        monitor={"fraction": 1.0},  # every batch on the tap: the run's batch boundaries
        duration_s=600.0,
    )
    pipe = running_pipeline(cfg, 31, start=False)
    tap = TapBatches()
    pipe.start(tap_subscriber=tap)
    old_menu = pipe.menu
    wait_for(lambda: pipe.status().get("events_processed", 0) >= 2 * batch, 300, "2 batches")
    doc = old_menu.to_json()
    doc["seeds"][0]["threshold"] = 290.0
    doc["seeds"][1]["threshold"] = 150.0
    pipe.set_menu(doc, timeout_s=120)
    off, sh = new_scaling(scaled_ad_net, seed=17)
    answer = pipe.set_scaling(off, sh, timeout_s=120)
    (ack,) = answer["workers"].values()
    assert ack["registers_version"] == 3  # configure, set_menu, set_scaling
    sent = pipe.status()["events_in"]
    wait_for(lambda: pipe.status()["events_processed"] >= sent + 2 * batch, 300, "new batches")
    fw_status = next(iter(pipe.status()["firmware"].values()))["ad"]
    summary = pipe.stop()
    assert (summary.lost, summary.duplicated) == (0, 0) and summary.seed_mismatches == 0
    assert fw_status["registers_version"] == 3 and fw_status["events_compared"] > 0

    parts = []
    for f in sorted(pipe.run_dir.glob("run*_ls*.root")):
        with uproot.open(f) as rf:
            parts.append(
                rf[TREE].arrays(["seq", "objects_hw", "score_ad", "seed_bits"], library="np")
            )
    cols = {k: np.concatenate([p[k] for p in parts]) for k in ("seq", "score_ad", "seed_bits")}
    order = np.argsort(cols["seq"])
    seq, got, bits = (cols[k][order] for k in ("seq", "score_ad", "seed_bits"))
    x = np.concatenate([np.stack(p["objects_hw"]).reshape(-1, 57) for p in parts])[order]
    np.testing.assert_array_equal(seq, np.arange(summary.n_events_in))
    old = score(scaled_ad_net, x)
    new = score(registers.with_scaling(scaled_ad_net, off, sh), x)
    batches = tap.close(summary.n_events_in)
    k = assert_one_switch_at_a_batch_boundary(seq, got == old, got == new, batches)
    assert np.all(got[seq < k] == old[seq < k]) and np.all(got[seq >= k] == new[seq >= k])
    assert 2 * batch <= k <= sent
    new_menu = Menu.from_json(doc)
    bits_old = old_menu.decide({"ad": got}, seq)
    bits_new = new_menu.decide({"ad": got}, seq)
    km = assert_one_switch_at_a_batch_boundary(seq, bits == bits_old, bits == bits_new, batches)
    assert 2 * batch <= km <= k  # the menu was sent before the scaling
