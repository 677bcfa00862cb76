"""`l1forge online` end to end: the daemon in a subprocess, driven by the CLI and by signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from l1forge.online.control.commands import ControlClient
from l1forge.online.control.daemon import read_endpoints
from l1forge.online.datapath.storage import verify_run_files
from l1forge.sim.dataset import read_events

L1FORGE = [sys.executable, "-m", "l1forge.cli"]
START_TIMEOUT_S = 120.0


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*L1FORGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def run_yaml(tmp_path, events_h5, tiny_ir_path) -> Path:
    """A looping replay paced at 20 kHz (so a run lasts until it is stopped), 2 workers, DQM."""
    doc = {
        "source": {
            "kind": "replay",
            "path": str(events_h5),
            "loop": True,
            "n_events": 50_000_000,
            "rate_hz": 20_000,
        },
        "backend": {"kind": "emulator", "models": {"ad": str(tiny_ir_path)}},
        "workers": {"n": 2},
        "menu": {
            "seeds": [
                {"name": "AD_Loose", "model": "ad", "target_rate_hz": 1.0e6},
                {"name": "ZeroBias", "model": "", "prescale": 50},
            ]
        },
        "storage": {"out_dir": str(tmp_path / "data"), "events_per_lumisection": 2000},
        "monitor": {"dqm_enabled": True, "fraction": 0.2},
        "batch_size": 512,
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start_daemon(run_yaml: Path, tmp_path: Path) -> tuple[subprocess.Popen, ControlClient]:
    """Start `l1forge online run --config`; return it once it has processed some events."""
    out = open(tmp_path / "daemon.out", "w")
    err = open(tmp_path / "daemon.err", "w")
    proc = subprocess.Popen(
        [*L1FORGE, "online", "run", "--config", str(run_yaml)],
        stdout=out,
        stderr=err,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    proc.out, proc.err = out, err  # type: ignore[attr-defined]
    state_dir = tmp_path / "state"
    deadline = time.monotonic() + START_TIMEOUT_S
    client = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "daemon.err").read_text()
        if client is None and (state_dir / "endpoints.json").exists():
            client = ControlClient(read_endpoints(state_dir)["control"], timeout_s=10)
        if client is not None:
            st = client.status()
            if st["state"] == "running" and st["pipeline"].get("events_processed", 0) > 0:
                return proc, client
        time.sleep(0.2)
    proc.kill()
    pytest.fail(
        "the daemon did not start processing in time:\n" + (tmp_path / "daemon.err").read_text()
    )


def _finish(proc: subprocess.Popen, tmp_path: Path) -> tuple[int, dict, str]:
    rc = proc.wait(timeout=120)
    proc.out.close()  # type: ignore[attr-defined]
    proc.err.close()  # type: ignore[attr-defined]
    stdout = (tmp_path / "daemon.out").read_text()
    return rc, json.loads(stdout), (tmp_path / "daemon.err").read_text()


def _check_run_files(summary: dict) -> None:
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    assert summary["n_processed"] == summary["n_events_in"] > 0
    files = verify_run_files(summary["run_dir"], summary["run"])
    assert files.ok, files.to_json()
    assert files.complete_manifest
    assert files.n_events == summary["n_accepted"] > 0
    assert files.seed_counts == summary["per_seed"]


def test_run_then_status_and_stop_through_the_cli(run_yaml, tmp_path):
    proc, _ = _start_daemon(run_yaml, tmp_path)
    try:
        state = ["--state-dir", str(tmp_path / "state")]
        st = _cli("online", "status", *state)
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["state"] == "running" and status["run"] == 1
        assert status["endpoints"]["control"].startswith("tcp://127.0.0.1:")
        # The web endpoint serves the pipeline's Prometheus metrics and the same status.
        with urllib.request.urlopen(status["endpoints"]["metrics"], timeout=10) as resp:
            samples = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in resp.read().decode().splitlines()
                if line and not line.startswith("#")
            }
        assert samples["l1forge_events_processed_total"] > 0
        assert samples['l1forge_run_state{l1forge_run_state="running"}'] == 1.0
        assert samples["l1forge_run_number"] == 1.0
        with urllib.request.urlopen(status["endpoints"]["web"] + "status", timeout=10) as resp:
            assert json.loads(resp.read())["state"] == "running"
        stop = _cli("online", "stop", *state)
        assert stop.returncode == 0, stop.stderr
        stopped = json.loads(stop.stdout)
    except BaseException:
        proc.kill()
        raise
    rc, printed, err = _finish(proc, tmp_path)
    assert rc == 0, err
    assert printed["run_summary"]["run"] == stopped["run"] == 1
    _check_run_files(stopped)
    # DQM followed the monitoring tap and wrote its file into the run folder.
    assert stopped["dqm"]["monitored_events"] > 0, stopped["dqm"]
    assert Path(stopped["dqm"]["root_path"]).is_file()
    assert not (tmp_path / "state" / "endpoints.json").exists()
    # The run folder holds the exact configuration and the summary.
    run_dir = Path(stopped["run_dir"])
    assert (run_dir / "run_config.yaml").is_file()
    assert (
        json.loads((run_dir / "run_summary.json").read_text())["n_events_in"]
        == (stopped["n_events_in"])
    )


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_signal_drains_closes_files_and_exits_0(run_yaml, tmp_path, how):
    proc, _ = _start_daemon(run_yaml, tmp_path)
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C: SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    rc, printed, err = _finish(proc, tmp_path)
    assert rc == 0, err
    assert "Traceback" not in err
    summary = printed["run_summary"]
    assert summary["error"] is None
    _check_run_files(summary)
    # The next daemon on the same state_dir continues the run numbering.
    assert json.loads((tmp_path / "state" / "run_number.json").read_text())["last_run"] == 1


def test_unwritable_output_folder_is_a_clear_error(run_yaml, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    res = _cli(
        "online", "run", "--config", str(run_yaml), "--set", f"storage.out_dir={blocker}/data"
    )
    assert res.returncode == 2
    assert f"{blocker}/data" in res.stderr and "storage.out_dir" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_config_and_no_daemon_are_clear_errors(run_yaml, tmp_path):
    res = _cli("online", "run", "--config", str(run_yaml), "--set", "workers.n=-2")
    assert res.returncode == 2 and "workers.n: expected an integer" in res.stderr
    res = _cli("online", "status", "--state-dir", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "no daemon is running" in res.stderr
    assert "Traceback" not in res.stderr


def test_keys_command(tmp_path):
    res = _cli("online", "keys", "--out", str(tmp_path / "keys"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (tmp_path / "keys" / "server.key_secret").is_file()
    assert (Path(doc["authorized_clients"]) / "client.key").is_file()


def test_finite_source_ends_the_run_and_the_daemon(run_yaml, tmp_path, events_h5):
    res = _cli(
        "online",
        "run",
        "--config",
        str(run_yaml),
        "--set",
        "source.loop=false",
        "--set",
        "source.rate_hz=null",
        "--set",
        "workers.n=1",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)["run_summary"]
    assert summary["n_events_in"] == len(read_events(events_h5)) == summary["n_processed"]
    _check_run_files(summary)


def test_demo_online_stage(tmp_path, events_h5, tiny_ir_path, monkeypatch):
    """The last stage of `make demo` on stand-ins for the demo's events and trained IR."""
    from l1forge.demo import online_stage

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(events_h5.parent / "minbias.h5", data / "background.h5")
    shutil.copy(events_h5.parent / "signal.h5", data / "signals.h5")
    monkeypatch.chdir(tmp_path)
    result = online_stage(tmp_path, data, tiny_ir_path, n_events=20_000)
    assert result["n_events_in"] == result["n_processed"] == 20_000
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert set(result["rates_hz"]) >= {"AD_VLoose", "AD_VTight", "ZeroBias"}
    assert Path(result["run_dir"]).parent == tmp_path / "online"


def test_demo_length_run_fills_the_dqm_with_the_sampled_share(
    tmp_path, events_h5, tiny_ir_path, monkeypatch
):
    """`make demo`'s online stage at its full length (300,000 events, the embedded defaults:
    4096-event batches, 5 % of them on the tap, 100,000-event lumisections), DQM file read back.

    Each batch goes on the tap with probability `monitor.fraction`, so the run's sampled batches
    are Binomial(n_batches, fraction); asserted within its central 99.99 % interval (about 75
    batches here: 0 to 12). The DQM must have received every one of them, from the first batch
    to the last (nothing lost to a late subscription or an undrained end), and filled each
    histogram.
    """
    import uproot
    from scipy.stats import binom

    from l1forge.demo import online_stage

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(events_h5.parent / "minbias.h5", data / "background.h5")
    monkeypatch.chdir(tmp_path)
    result = online_stage(tmp_path, data, tiny_ir_path, n_events=300_000)
    run_dir = Path(result["run_dir"])
    summary = json.loads((run_dir / "run_summary.json").read_text())
    cfg = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    fraction = cfg["monitor"]["fraction"]
    assert summary["n_processed"] == 300_000 and summary["lost"] == 0

    lo, hi = binom.interval(0.9999, summary["n_batches"], fraction)
    assert lo <= summary["tap_batches"] <= hi, summary
    assert summary["tap_batches"] > 0

    dqm = summary["dqm"]
    with uproot.open(dqm["root_path"]) as f:
        per_ls = f["events"].values()
        monitored = int(per_ls.sum())
        assert monitored == summary["tap_events"] == dqm["monitored_events"]
        assert result["dqm"]["monitored_events"] == monitored  # what the demo prints
        assert monitored == sum(
            f[f"lumisections/ls{ls:05d}/score/ad"].member("fEntries")
            for ls in np.flatnonzero(per_ls)
        )
        assert dqm["n_lumisections"] == np.count_nonzero(per_ls) >= 1
        entries = {
            name: f[name].member("fEntries")
            for name, kind in f.classnames(cycle=False).items()
            if kind.startswith("TH") and not name.startswith("lumisections/")
        }
    every_event = ("events", "met/pt", "score/ad", "jet/multiplicity", "muon/multiplicity")
    assert all(entries[name] == monitored for name in every_event), entries
    # a sampled batch holds the whole 1500-event file twice: its few muons fill the muon ones
    assert min(entries.values()) > 0, entries
