"""Helpers for the tests that run `l1forge online` in a subprocess: the CLI, the daemon process
and the check of a stopped run's files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l1forge.online.control.commands import ControlClient
from l1forge.online.datapath.storage import verify_run_files

L1FORGE = [sys.executable, "-m", "l1forge.cli"]
START_TIMEOUT_S = 120.0


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*L1FORGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_doc(tmp_path: Path, events: Path, ir: Path, **over) -> dict:
    """A run configuration: replay of `events` through the IR `ir` (keys of `over` replace
    sections, dict values update them)."""
    doc = {
        "source": {"kind": "replay", "path": str(events)},
        "backend": {"kind": "emulator", "models": {"ad": str(ir)}},
        "workers": {"n": 2},
        "storage": {"out_dir": str(tmp_path / "data")},
        "state_dir": str(tmp_path / "state"),
    }
    for key, value in over.items():
        doc[key] = {**doc[key], **value} if isinstance(doc.get(key), dict) else value
    return doc


class DaemonProcess:
    """`l1forge online run --config` in a process group of its own, its output in files."""

    def __init__(self, run_yaml: Path, tmp_path: Path):
        self.tmp_path = tmp_path
        self.out = open(tmp_path / "daemon.out", "w")
        self.err = open(tmp_path / "daemon.err", "w")
        self.proc = subprocess.Popen(
            [*L1FORGE, "online", "run", "--config", str(run_yaml)],
            stdout=self.out,
            stderr=self.err,
            text=True,
            start_new_session=True,  # its own process group, like a shell job
        )

    def wait_processing(self) -> ControlClient:
        """The control client, once the run is running and has processed some events."""
        state_dir = self.tmp_path / "state"
        deadline = time.monotonic() + START_TIMEOUT_S
        client = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp_path / "daemon.err").read_text()
            if client is None and (state_dir / "endpoints.json").exists():
                client = ControlClient.from_state_dir(state_dir, timeout_s=10)
            if client is not None:
                st = client.status()
                if st["state"] == "running" and st["pipeline"].get("events_processed", 0) > 0:
                    return client
            time.sleep(0.2)
        pytest.fail(
            "the daemon did not start processing in time:\n"
            + (self.tmp_path / "daemon.err").read_text()
        )

    def finish(self) -> tuple[int, dict, str]:
        """(exit code, the JSON it printed, its stderr) once it has exited."""
        rc = self.proc.wait(timeout=120)
        self.close()
        stdout = (self.tmp_path / "daemon.out").read_text()
        return rc, json.loads(stdout), (self.tmp_path / "daemon.err").read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close()

    def close(self) -> None:
        self.out.close()
        self.err.close()


def check_run_files(summary: dict) -> None:
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    assert summary["n_processed"] == summary["n_events_in"] > 0
    files = verify_run_files(summary["run_dir"], summary["run"])
    assert files.ok, files.to_json()
    assert files.complete_manifest
    assert files.n_events == summary["n_accepted"] > 0
    assert files.seed_counts == summary["per_seed"]
