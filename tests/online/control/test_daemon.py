"""The daemon (`l1forge online run`) in a subprocess: signals drain the run, close its files and
exit 0; a finite source ends the run and the daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest
import yaml

from l1forge.sim.dataset import read_events

from .daemons import L1FORGE, DaemonProcess, check_run_files, cli


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_signal_drains_closes_files_and_exits_0(daemon_yaml, tmp_path, how, start_daemon):
    daemon, _ = start_daemon(daemon_yaml)
    if how == "sigterm":
        daemon.proc.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C: SIGINT to the whole foreground process group
        os.killpg(daemon.proc.pid, signal.SIGINT)
    rc, printed, err = daemon.finish()
    assert rc == 0, err
    assert "Traceback" not in err
    summary = printed["run_summary"]
    assert summary["error"] is None
    check_run_files(summary)
    # The next daemon on the same state_dir continues the run numbering.
    assert json.loads((tmp_path / "state" / "run_number.json").read_text())["last_run"] == 1


def test_finite_source_ends_the_run_and_the_daemon(daemon_yaml, events_h5):
    res = cli(
        "online",
        "run",
        "--config",
        str(daemon_yaml),
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
    check_run_files(summary)


def test_a_remote_worker_serves_the_daemon_again_after_a_kill_9(daemon_yaml, tmp_path):
    """The daemon runs on one remote worker only (`workers.n: 0`, fixed worker port); after a
    SIGKILL of the daemon, the restarted daemon's run is served by the same worker process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = yaml.safe_load(daemon_yaml.read_text())
    doc["workers"] = {"n": 0, "transport": "tcp", "hosts": ["127.0.0.1"], "heartbeat_s": 0.2}
    doc["network"] = {"worker_port": port}
    doc["monitor"]["dqm_enabled"] = False
    daemon_yaml.write_text(yaml.safe_dump(doc))
    cmd = [*L1FORGE, "online", "worker", "--connect", f"tcp://127.0.0.1:{port}"]
    remote = subprocess.Popen([*cmd, "--name", "remote-a", "--heartbeat-s", "0.2"])
    daemons = []
    try:
        for attempt in range(2):
            daemon = DaemonProcess(daemon_yaml, tmp_path)
            daemons.append(daemon)
            client = daemon.wait_processing()
            workers = client.status()["pipeline"]["workers"]
            assert {w: v["pid"] for w, v in workers.items()} == {"remote-a": remote.pid}
            if attempt == 0:
                daemon.proc.kill()  # no STOP reaches the worker
                daemon.proc.wait(30)
                # the killed daemon's file: the next one writes its own (wait_processing reads it)
                (tmp_path / "state" / "endpoints.json").unlink()
        stopped = client.request("stop")
        rc, _, err = daemon.finish()
        assert rc == 0, err
        assert stopped["run"] == 2
        check_run_files(stopped)
        assert remote.poll() is None
    finally:
        for d in daemons:
            d.kill()
        remote.terminate()
        remote.wait(30)
