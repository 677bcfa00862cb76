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
