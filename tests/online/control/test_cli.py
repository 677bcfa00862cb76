"""`l1forge online` end to end: the CLI's commands against a daemon in a subprocess, its clear
errors, and the demo's online stage."""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from l1forge.online.control.commands import ControlClient, ControlError

from .daemons import check_run_files, cli


def _check_strangers_are_refused(state_dir: Path, ir: Path, web_status: str) -> None:
    """Another local account's client (no token, or a guessed one) may ask for the status but
    is refused every command that changes the run; refusals are counted in the status."""
    endpoints_file = state_dir / "endpoints.json"
    assert stat.S_IMODE(endpoints_file.stat().st_mode) == 0o600
    endpoints = json.loads(endpoints_file.read_text())
    token = endpoints["token"]
    assert len(token) == 64 and token not in web_status  # /status never shows it
    menu = {"seeds": [{"name": "ZeroBias", "model": "", "prescale": 1}]}
    attempts = [
        ("configure", {"config": {"source": {"kind": "pythia"}}}),
        ("stop", {}),
        ("shutdown", {}),
        ("set_model", {"name": "ad", "path": str(ir)}),
        ("set_menu", {"menu": menu}),
        ("swap", {"name": "ad", "path": str(ir), "menu": menu}),
    ]
    for guess in (None, secrets.token_hex(32)):
        stranger = ControlClient(endpoints["control"], timeout_s=10, token=guess)
        assert stranger.status()["state"] == "running"
        why = "without the control token" if guess is None else "with a wrong control token"
        for command, args in attempts:
            with pytest.raises(ControlError, match=f"refused: {command} sent {why}"):
                stranger.request(command, **args)
    st = ControlClient(endpoints["control"], timeout_s=10).status()
    assert st["state"] == "running" and st["run"] == 1  # nothing was stopped or changed
    assert st["control"]["unauthorized"] == 2 * len(attempts)


def test_run_then_status_and_stop_through_the_cli(
    daemon_yaml, tmp_path, start_daemon, tiny_ir_path
):
    daemon, _ = start_daemon(daemon_yaml)
    state = ["--state-dir", str(tmp_path / "state")]
    st = cli("online", "status", *state)
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["state"] == "running" and status["run"] == 1
    assert status["endpoints"]["control"].startswith("tcp://127.0.0.1:")
    assert status["web"]["max_connections"] == 64 and status["web"]["over_cap"] == 0
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
        web_status = resp.read().decode()
    assert json.loads(web_status)["state"] == "running"
    _check_strangers_are_refused(tmp_path / "state", tiny_ir_path, web_status)
    with urllib.request.urlopen(status["endpoints"]["metrics"], timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'l1forge_control_requests_total{outcome="unauthorized"} 12.0' in metrics
    stop = cli("online", "stop", *state)
    assert stop.returncode == 0, stop.stderr
    stopped = json.loads(stop.stdout)
    rc, printed, err = daemon.finish()
    assert rc == 0, err
    assert printed["run_summary"]["run"] == stopped["run"] == 1
    check_run_files(stopped)
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


def test_unwritable_output_folder_is_a_clear_error(daemon_yaml, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    res = cli(
        "online", "run", "--config", str(daemon_yaml), "--set", f"storage.out_dir={blocker}/data"
    )
    assert res.returncode == 2
    assert f"{blocker}/data" in res.stderr and "storage.out_dir" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_config_and_no_daemon_are_clear_errors(daemon_yaml, tmp_path):
    res = cli("online", "run", "--config", str(daemon_yaml), "--set", "workers.n=-2")
    assert res.returncode == 2 and "workers.n: expected an integer" in res.stderr
    res = cli("online", "status", "--state-dir", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "no daemon is running" in res.stderr
    assert "Traceback" not in res.stderr


def test_keys_command(tmp_path):
    res = cli("online", "keys", "--out", str(tmp_path / "keys"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (tmp_path / "keys" / "server.key_secret").is_file()
    assert (Path(doc["authorized_clients"]) / "client.key").is_file()


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
