"""Run control: legal and illegal transitions, persistent run numbers, run folders."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from l1forge.errors import ConfigError
from l1forge.online.config import load_run_config, run_config_from_dict
from l1forge.online.control.runcontrol import (
    RUN_CONFIG_FILE,
    RUN_SUMMARY_FILE,
    RunControl,
    RunFailedError,
    RunNumbers,
    RunState,
    TransitionError,
)
from l1forge.online.web.metrics import make_metrics

from .daemons import run_doc


def _write_yaml(tmp_path, events, ir):
    """A small run: replay of `events` through the IR `ir`, 2 workers, no DQM."""
    doc = run_doc(
        tmp_path,
        events,
        ir,
        menu={
            "seeds": [
                {"name": "AD_Loose", "model": "ad", "target_rate_hz": 2.0e6},
                {"name": "ZeroBias", "model": "", "prescale": 100},
            ]
        },
        storage={"events_per_lumisection": 1000},
        monitor={"dqm_enabled": False},
        batch_size=256,
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def run_yaml(tmp_path, events_h5, tiny_ir_path):
    """The real session events and tiny AD IR."""
    return _write_yaml(tmp_path, events_h5, tiny_ir_path)


@pytest.fixture
def light_yaml(tmp_path, tiny_ir_path):
    """For transitions that never start a run: the input file only has to exist."""
    events = tmp_path / "events.h5"
    events.write_bytes(b"")
    return _write_yaml(tmp_path, events, tiny_ir_path)


def test_illegal_transitions_are_refused_and_change_nothing(tmp_path, light_yaml):
    rc = RunControl(tmp_path / "state")
    assert rc.state == RunState.IDLE
    for command in (rc.start, rc.stop):
        with pytest.raises(TransitionError, match="in state idle"):
            command()
    with pytest.raises(TransitionError, match="cannot set_model in state idle"):
        rc.set_model("ad", "x.json")
    with pytest.raises(TransitionError, match="cannot set_menu in state idle"):
        rc.set_menu({"seeds": []})
    rc.reset()  # idle -> idle is allowed
    rc.configure(load_run_config(light_yaml))
    assert rc.state == RunState.CONFIGURED
    with pytest.raises(TransitionError, match="cannot stop in state configured"):
        rc.stop()
    assert rc.state == RunState.CONFIGURED and rc.numbers.last() == 0


def test_unwritable_output_folder_is_refused_by_name(tmp_path, light_yaml):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = load_run_config(light_yaml, {"storage.out_dir": str(blocker / "data")})
    rc = RunControl(tmp_path / "state")
    with pytest.raises(ConfigError, match=f"storage.out_dir: cannot write to {blocker}/data"):
        rc.configure(cfg)
    assert rc.state == RunState.IDLE
    with pytest.raises(ConfigError, match=f"state_dir: cannot write to {blocker}"):
        RunControl(blocker / "state")


def test_run_numbers_persist_atomically(tmp_path):
    numbers = RunNumbers(tmp_path)
    assert numbers.last() == 0
    assert [numbers.take_next() for _ in range(3)] == [1, 2, 3]
    assert RunNumbers(tmp_path).last() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_number.json"]  # no temp files left
    (tmp_path / "run_number.json").write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        RunNumbers(tmp_path).last()
    (tmp_path / "run_number.json").write_text('{"last_run": -4}')
    with pytest.raises(ConfigError, match="last_run"):
        RunControl(tmp_path)


def test_full_cycle_and_run_numbers_across_instances(tmp_path, run_yaml, run_control):
    paced = {"source.rate_hz": 20_000.0, "source.loop": True, "source.n_events": 10_000_000}
    cfg = load_run_config(run_yaml, {**paced, "workers.n": 1})
    metrics = make_metrics()
    rc = run_control(cfg.state_dir, metrics=metrics)
    rc.configure(cfg)
    run = rc.start()
    assert run == 1 and rc.state == RunState.RUNNING
    assert metrics.registry.get_sample_value("l1forge_run_number") == 1
    state = {"l1forge_run_state": "running"}
    assert metrics.registry.get_sample_value("l1forge_run_state", state) == 1
    for illegal in (rc.start, rc.reset):
        with pytest.raises(TransitionError, match="in state running"):
            illegal()
    with pytest.raises(TransitionError, match="cannot configure in state running"):
        rc.configure(cfg)
    assert rc.status()["pipeline"] is not None
    summary = rc.stop()
    assert rc.state == RunState.STOPPED and summary["run"] == 1
    run_dir = rc.run_dir
    assert run_dir == tmp_path / "data" / "run000001"
    # The exact configuration is stored with its checksum and reads back equal.
    text = (run_dir / RUN_CONFIG_FILE).read_text()
    sha = (run_dir / "run_config.sha256").read_text().split()[0]
    assert hashlib.sha256(text.encode()).hexdigest() == sha == summary["config_sha256"]
    assert run_config_from_dict(yaml.safe_load(text)) == cfg
    assert json.loads((run_dir / RUN_SUMMARY_FILE).read_text())["run"] == 1

    rc.configure()  # stopped -> configured, keeping the last configuration
    assert rc.start() == 2
    rc.stop()
    # A new process (a new RunControl on the same state_dir) continues the numbering.
    rc2 = run_control(cfg.state_dir)
    rc2.configure(cfg)
    assert rc2.start() == 3
    rc2.stop()
    assert rc2.status()["last_run"] == 3


def test_failure_enters_error_and_reset_leaves_it(tmp_path, run_yaml):
    bad_ir = tmp_path / "not_an_ir.json"
    bad_ir.write_text('{"format": "something else"}')
    cfg = load_run_config(run_yaml, {"backend.models": {"ad": str(bad_ir)}})
    rc = RunControl(cfg.state_dir)
    rc.configure(cfg)
    with pytest.raises(RunFailedError, match="run 1 failed to start"):
        rc.start()
    assert rc.state == RunState.ERROR and "failed to start" in rc.status()["error"]
    with pytest.raises(TransitionError, match="send reset"):
        rc.configure(cfg)
    rc.reset()
    assert rc.state == RunState.IDLE and rc.config is None
    assert rc.numbers.last() == 1  # a failed run keeps its number: numbers are never reused
