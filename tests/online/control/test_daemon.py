"""The daemon (`l1forge online run`) in a subprocess: signals drain the run, close its files and
exit 0; a finite source ends the run and the daemon."""

from __future__ import annotations

import json
import os
import signal

import pytest

from l1forge.sim.dataset import read_events

from .daemons import check_run_files, cli


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
