"""`l1forge online model learn` against a live daemon, both in subprocesses, through the CLI.

The daemon replays clean zero-bias-like events, then the same kind drifted by a 30 %
calorimeter energy scale (the replay "switches" to drifted events); ZeroBias has prescale 1,
so every event is stored and reaches the tap. The learner, started from the CLI on the
daemon's tap, must flag the drift, adapt through the registers (recalibrated thresholds: no
signal is given, so the rate decides) and push the menu to the daemon. Checked from the run's
ROOT files read back with uproot and scored here with the emulator: the tail of the run fires
the AD seed at its target rate, where the original threshold would not.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from l1forge.models.emulator import Emulator
from l1forge.online.datapath.menu import Menu, Seed
from l1forge.online.learning.learner import score
from l1forge.online.learning.registry import ModelRegistry
from l1forge.sim.faults import EnergyScale, inject

from ..control.daemons import L1FORGE, DaemonProcess, cli, run_doc
from ..datapath.runs import stored_events
from .events import event_file, zero_bias_like

DRIFT = EnergyScale(0.30)
TARGET = 2e6  # 5 % of zero bias at 40 MHz


@pytest.mark.parametrize(
    ("n_drifted", "rate_hz", "windows", "kind"),
    [
        pytest.param(40_000, 2000.0, (2000, 6000), "thresholds", id="short"),
        # only the input offsets offered: they reach the daemon through set_scaling
        pytest.param(40_000, 2000.0, (2000, 6000), "offsets", id="short-offsets"),
        # the learner's default windows (5000-event checks, 15,000 events to adapt on)
        pytest.param(
            54_000, 1500.0, None, "thresholds", id="default-windows", marks=pytest.mark.slow
        ),
    ],
)
def test_model_learn_brings_a_live_daemons_rate_back(
    tmp_path, trained_run, n_drifted, rate_hz, windows, kind
):
    n_clean, tail_n = 6_000, 10_000
    n_adapt = windows[1] if windows else 15_000
    reg_dir = tmp_path / "registry"
    res = cli("online", "model", "import", str(trained_run), "--registry", str(reg_dir))
    assert res.returncode == 0, res.stderr
    net = ModelRegistry(reg_dir).active.load_net()
    reference = zero_bias_like(6000, seed=20)
    ref_h5 = event_file(tmp_path / "reference.h5", reference)
    menu = Menu(
        (
            Seed("AD_Loose", "ad", target_rate_hz=TARGET),
            Seed("ZeroBias", "", prescale=1),
        )
    ).calibrate({"ad": score(net, reference)})
    t_old = menu.seeds[0].threshold
    (tmp_path / "menu.json").write_text(json.dumps(menu.to_json()))
    stream = np.concatenate(
        [zero_bias_like(n_clean, seed=40), inject(DRIFT, zero_bias_like(n_drifted, seed=41))]
    )
    replay = event_file(tmp_path / "replay.h5", stream)
    doc = run_doc(
        tmp_path,
        replay,
        ModelRegistry(reg_dir).active.qnet_path,
        source={"rate_hz": rate_hz},
        workers={"n": 1},
        menu={
            "seeds": [
                {"name": "AD_Loose", "model": "ad", "threshold": t_old, "target_rate_hz": TARGET},
                {"name": "ZeroBias", "model": "", "prescale": 1},
            ]
        },
        storage={"events_per_lumisection": 1000},
        monitor={"dqm_enabled": False, "fraction": 0.0},
        batch_size=250,
    )
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(doc))
    daemon = DaemonProcess(run_yaml, tmp_path)
    learner = None
    try:
        daemon.wait_processing()
        learner = subprocess.Popen(
            [
                *L1FORGE,
                "online",
                "model",
                "learn",
                "--registry",
                str(reg_dir),
                "--reference",
                str(ref_h5),
                "--menu",
                str(tmp_path / "menu.json"),
                "--state-dir",
                str(tmp_path / "state"),
                "--max-seconds",
                "240",
                *(
                    ["--check-events", str(windows[0]), "--adapt-events", str(windows[1])]
                    if windows
                    else []
                ),
                *(["--runtime-kinds", kind] if kind != "thresholds" else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 240
        while daemon.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # the daemon exits when the replay has ended
        learner.send_signal(signal.SIGINT)
        out, err = learner.communicate(timeout=120)
        assert learner.returncode == 0, err
        learned = json.loads(out)
        rc, printed, err = daemon.finish()
        assert rc == 0, err
    finally:
        if learner is not None and learner.poll() is None:
            learner.kill()
        daemon.kill()
    assert learned["events"] > n_drifted // 2, learned
    assert learned["adaptations"], learned
    final = learned["adaptations"][-1]
    assert final["accepted"] and final["path"] == "registers", final
    assert final["why"][-1] == f"{kind}: passed every check"
    live = ModelRegistry(reg_dir).get(learned["active"])
    if kind == "offsets":  # a registered version: the parent's weights, new OFFSET registers
        assert live.provenance["kind"] == "registers" and learned["active"] != "v0001"
    else:
        assert learned["active"] == "v0001"
    live_net = live.load_net()  # what the daemon must now compute (through set_scaling)
    t_new = next(s["threshold"] for s in learned["menu"]["seeds"] if s["name"] == "AD_Loose")
    # from the files: every replayed event stored once; the tail of the run scored here
    summary = printed["run_summary"]
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    got = stored_events(Path(summary["run_dir"]))
    assert len(got["seq"]) == len(np.unique(got["seq"])) == len(stream)
    tail = np.asarray(got["objects_hw"]).reshape(-1, 19, 3)[-tail_n:]
    with Emulator(live_net) as emu, Emulator(net) as emu0:
        s = emu.run_float(tail.reshape(tail_n, -1))[:, 0]
        s0 = emu0.run_float(tail.reshape(tail_n, -1))[:, 0]
    bit = (got["seed_bits"][-tail_n:] & 1).astype(bool)
    np.testing.assert_array_equal(bit, s > t_new)  # the tail ran with the learner's threshold
    f = TARGET / menu.input_rate_hz
    # calibration (the adaptation's drifted events) and this tail's statistics together, 3 sigma
    tol = 3 * np.sqrt(f * tail_n * (1 + tail_n / n_adapt))
    assert abs(bit.sum() - f * tail_n) <= tol, (bit.sum(), f * tail_n)
    n_old = np.count_nonzero(s0 > t_old)  # the network and menu the run started with
    assert abs(n_old - f * tail_n) > 3 * tol, (n_old, f * tail_n, tol)  # the old one was off
