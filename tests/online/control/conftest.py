"""Fixtures of the control tests: the daemon's run configuration, the daemon in a subprocess
(killed at teardown if the test did not end it) and run controls (a running one is stopped)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from l1forge.online.control.runcontrol import RunControl, RunState

from .daemons import DaemonProcess, run_doc


@pytest.fixture
def daemon_yaml(tmp_path, events_h5, tiny_ir_path) -> Path:
    """A looping replay paced at 20 kHz (so a run lasts until it is stopped), 2 workers, DQM."""
    doc = run_doc(
        tmp_path,
        events_h5,
        tiny_ir_path,
        source={"loop": True, "n_events": 50_000_000, "rate_hz": 20_000},
        menu={
            "seeds": [
                {"name": "AD_Loose", "model": "ad", "target_rate_hz": 1.0e6},
                {"name": "ZeroBias", "model": "", "prescale": 50},
            ]
        },
        storage={"events_per_lumisection": 2000},
        monitor={"dqm_enabled": True, "fraction": 0.2},
        batch_size=512,
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def start_daemon(tmp_path):
    """``start_daemon(run_yaml)`` -> (DaemonProcess, ControlClient) once it processes events."""
    started: list[DaemonProcess] = []

    def start(run_yaml: Path):
        daemon = DaemonProcess(run_yaml, tmp_path)
        started.append(daemon)
        return daemon, daemon.wait_processing()

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def run_control():
    """``run_control(state_dir, **kw)`` -> a `RunControl`; one still running at teardown is
    stopped."""
    made: list[RunControl] = []

    def make(state_dir: Path, **kw) -> RunControl:
        rc = RunControl(state_dir, **kw)
        made.append(rc)
        return rc

    yield make
    for rc in made:
        if rc.state == RunState.RUNNING:
            rc.stop()
