"""`l1forge online swap`: a network and its menu installed together in a running daemon, checked
from the stored ROOT files (every event was decided by one whole pair, never a mixed one)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml

from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.online.control.commands import ControlError
from l1forge.online.datapath.backends import outputs_float
from l1forge.online.datapath.menu import Menu
from l1forge.online.datapath.protocol import menu_text
from l1forge.online.datapath.storage import TREE
from l1forge.sim.dataset import read_events
from l1forge.sim.l1objects import N_INPUTS

from .daemons import check_run_files, cli, run_doc

SEEDS = ("AD_A", "AD_B", "ZeroBias")


def _scores(ir: Path, x: np.ndarray) -> np.ndarray:
    net = qnet.load(ir)
    emu = Emulator(net)
    try:
        return outputs_float(net, emu.run(x))[:, 0]
    finally:
        emu.close()


def _menu(scores: np.ndarray, q_a: float, q_b: float) -> Menu:
    """Two AD seeds at score quantiles of the replayed file, and ZeroBias keeping every event
    (so every event is stored and can be checked)."""
    return Menu.from_json(
        {
            "seeds": [
                {"name": "AD_A", "model": "ad", "threshold": float(np.quantile(scores, q_a))},
                {"name": "AD_B", "model": "ad", "threshold": float(np.quantile(scores, q_b))},
                {"name": "ZeroBias", "model": "", "prescale": 1},
            ]
        }
    )


def _stored(run_dir: Path) -> dict[str, np.ndarray]:
    parts = []
    for f in sorted(run_dir.glob("run*_ls*.root")):
        with uproot.open(f) as rf:
            parts.append(
                rf[TREE].arrays(["seq", "seed_bits", "score_ad", "objects_hw"], library="np")
            )
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if cols["objects_hw"].dtype == object:
        cols["objects_hw"] = np.stack(cols["objects_hw"])
    return cols


def test_swap_installs_network_and_menu_together(tmp_path, events_h5, tiny_ir_path, start_daemon):
    ir_old = tiny_ir_path
    ir_new = qnet.save(random_mlp(score=True, seed=5, name="ad_v2"), tmp_path / "ad_v2.json")
    x = read_events(events_h5).inputs
    menu_old = _menu(_scores(ir_old, x), 0.5, 0.9)
    menu_new = _menu(_scores(ir_new, x), 0.2, 0.7)
    doc = run_doc(
        tmp_path,
        events_h5,
        ir_old,
        source={"loop": True, "n_events": 50_000_000, "rate_hz": 20_000},
        menu={"seeds": menu_old.to_json()["seeds"]},
        storage={"events_per_lumisection": 4000},
        monitor={"dqm_enabled": False},
        batch_size=256,
    )
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(doc))
    daemon, client = start_daemon(run_yaml)
    state = ["--state-dir", str(tmp_path / "state")]
    menu_file = tmp_path / "menu_new.json"
    menu_file.write_text(json.dumps(menu_new.to_json()))

    # refused swaps change nothing: other seed names, an unknown model, a broken IR
    renamed = menu_new.to_json()
    renamed["seeds"][0]["name"] = "AD_Renamed"
    with pytest.raises(ControlError, match="keeps its seeds"):
        client.swap("ad", ir_new, renamed)
    with pytest.raises(ControlError, match="unknown model 'cls'"):
        client.swap("cls", ir_new, menu_new.to_json())
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "qnet"}')
    with pytest.raises(ControlError):
        client.swap("ad", broken, menu_new.to_json())

    before = client.status()["pipeline"]["events_processed"]
    res = cli("online", "swap", "ad", str(ir_new), str(menu_file), *state)
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    ir_sha = hashlib.sha256(ir_new.read_bytes()).hexdigest()
    menu_sha = menu_text(menu_new.to_json())[1]
    assert (answer["sha256"], answer["menu_sha256"]) == (ir_sha, menu_sha)
    assert len(answer["workers"]) == 2
    for ack in answer["workers"].values():
        assert ack["ok"] and (ack["sha256"], ack["menu_sha256"]) == (ir_sha, menu_sha)
    deadline = time.monotonic() + 60
    while client.status()["pipeline"]["events_processed"] < 2 * before + 4096:
        assert time.monotonic() < deadline, "no events after the swap"
        time.sleep(0.1)
    summary = client.stop()
    rc, _, err = daemon.finish()
    assert rc == 0, err
    check_run_files(summary)
    assert summary["n_accepted"] == summary["n_processed"]  # ZeroBias keeps every event

    got = _stored(Path(summary["run_dir"]))
    n = len(got["seq"])
    assert n == summary["n_processed"]
    x_stored = got["objects_hw"].reshape(n, N_INPUTS)
    pairs = {}
    for label, ir, menu in (("old", ir_old, menu_old), ("new", ir_new, menu_new)):
        s = _scores(ir, x_stored)
        pairs[label] = {
            "net": got["score_ad"] == s,
            "bits": menu.decide({"ad": s}, got["seq"]),
            "other_bits": (menu_new if label == "old" else menu_old).decide({"ad": s}, got["seq"]),
        }
    old, new = pairs["old"], pairs["new"]
    assert not np.any(old["net"] & new["net"])  # the two networks score every event apart
    assert np.all(old["net"] | new["net"])  # every stored score is one of the two networks'
    match_old = old["net"] & (got["seed_bits"] == old["bits"])
    match_new = new["net"] & (got["seed_bits"] == new["bits"])
    np.testing.assert_array_equal(match_old, old["net"])  # old network: always the old menu
    np.testing.assert_array_equal(match_new, new["net"])  # new network: always the new menu
    assert match_old.sum() > 0 and match_new.sum() > 0  # both pairs were seen
    # ... and a mixed pair would have shown: there the other menu gives other bits
    assert np.count_nonzero(old["net"] & (old["bits"] != old["other_bits"])) > 100
    assert np.count_nonzero(new["net"] & (new["bits"] != new["other_bits"])) > 100
    # one switch, between two batches: every old-pair event comes before every new-pair one
    assert got["seq"][match_old].max() < got["seq"][match_new].min()
