"""Run configuration: defaults, round trip, and errors that name the exact key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from l1forge.errors import ConfigError
from l1forge.online import config
from l1forge.online.config import load_run_config, run_config_from_dict, run_config_to_dict


@pytest.fixture
def files(tmp_path) -> Path:
    """Placeholder input files; config validation only checks that they exist."""
    for name in ("events.h5", "ad.json", "cls.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "keys").mkdir()
    return tmp_path


def _raw(**sections) -> dict:
    raw = {
        "source": {"kind": "replay", "path": "events.h5"},
        "backend": {"kind": "emulator", "models": {"ad": "ad.json", "classifier": "cls.json"}},
    }
    raw.update(sections)
    return raw


def test_minimal_config_gets_defaults_and_absolute_paths(files):
    path = files / "run.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    cfg = load_run_config(path)
    assert cfg.source.paths == (str(files / "events.h5"),)
    assert cfg.source.path == str(files / "events.h5")
    assert cfg.backend.models["ad"] == str(files / "ad.json")
    assert cfg.workers.n == 2 and cfg.workers.credits == 4 and cfg.batch_size == 4096
    assert cfg.network.host == "127.0.0.1" and cfg.network.loopback
    assert cfg.menu.seeds is None  # the default menu
    assert cfg.storage.out_dir == str(files / "out/online")


def test_round_trip_through_yaml(files):
    raw = _raw(
        menu={
            "seeds": [
                {"name": "AD_Tight", "model": "ad", "target_rate_hz": 400.0},
                {"name": "Cls", "model": "classifier", "threshold": 1.5, "prescale": 2},
                {"name": "ZeroBias", "model": "", "prescale": 1000},
            ]
        },
        workers={"n": 3, "transport": "tcp"},
        network={"host": "0.0.0.0", "curve_keys": "keys"},
    )
    cfg = run_config_from_dict(raw, files)
    text = config.run_config_to_yaml(cfg)
    again = run_config_from_dict(yaml.safe_load(text))
    assert again == cfg
    assert run_config_to_dict(again) == run_config_to_dict(cfg)
    assert cfg.menu.seeds[1].prescale == 2 and cfg.menu.seeds[0].threshold is None


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"source": {"kind": "replay", "path": "missing.h5"}}, "source.path"),
        ({"source": {"kind": "tape", "path": "events.h5"}}, "source.kind"),
        ({"source": {"path": "events.h5", "rate_hz": -5}}, "source.rate_hz"),
        ({"source": {"path": "events.h5", "n_events": 0}}, "source.n_events"),
        ({"source": {"path": "events.h5", "loop": True}}, "source.loop"),
        ({"source": {"path": "events.h5", "bogus": 1}}, "source.bogus"),
        ({"source": {"kind": "zmq"}}, "source.endpoint"),
        ({"backend": {"kind": "emulator", "models": {}}}, "backend.models"),
        ({"backend": {"kind": "rtl", "models": {"ad": "ad.json"}}}, "backend.firmware_dir"),
        ({"backend": {"models": {"ad": "nope.json"}}}, "backend.models.ad"),
        ({"workers": {"n": -1}}, "workers.n"),
        ({"workers": {"transport": "udp"}}, "workers.transport"),
        ({"workers": {"heartbeat_s": 2.0, "timeout_s": 3.0}}, "workers.timeout_s"),
        (
            {"menu": {"seeds": [{"name": "x", "model": "jets", "threshold": 1}]}},
            "menu.seeds[0].model",
        ),
        ({"menu": {"seeds": [{"name": "x", "model": "ad"}]}}, "menu.seeds[0]"),
        ({"menu": {"seeds": [{"model": "ad", "threshold": 1}]}}, "menu.seeds[0].name"),
        (
            {"menu": {"seeds": [{"name": "a", "model": ""}, {"name": "a", "model": ""}]}},
            "menu.seeds[1].name",
        ),
        ({"storage": {"events_per_lumisection": 0}}, "storage.events_per_lumisection"),
        ({"network": {"control_port": 70000}}, "network.control_port"),
        ({"network": {"host": "0.0.0.0"}}, "network.curve_keys"),
        ({"network": {"host": "192.168.1.20"}}, "network.curve_keys"),
        ({"network": {"web_max_connections": 0}}, "network.web_max_connections"),
        ({"network": {"web_timeout_s": -1}}, "network.web_timeout_s"),
        ({"monitor": {"fraction": 1.5}}, "monitor.fraction"),
        ({"batch_size": "big"}, "batch_size"),
        ({"runs": 3}, "runs"),
    ],
)
def test_errors_name_the_key(files, edit, key):
    with pytest.raises(ConfigError) as info:
        run_config_from_dict(_raw(**edit), files)
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_missing_sections_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^backend: missing section"):
        run_config_from_dict({"source": {"kind": "pythia"}}, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="cannot read run configuration"):
        load_run_config(tmp_path / "absent.yaml")


def test_file_errors_are_prefixed_with_the_file(files):
    path = files / "run.yaml"
    path.write_text(yaml.safe_dump(_raw(workers={"n": "two"})))
    with pytest.raises(ConfigError, match=f"^{path}: workers.n: expected an integer"):
        load_run_config(path)


def test_overrides_and_the_embedded_default(files, monkeypatch):
    monkeypatch.chdir(files)
    with pytest.raises(ConfigError, match="make demo"):
        load_run_config()  # out/demo does not exist here
    cfg = load_run_config(
        None,
        {
            "source.paths": ["events.h5"],
            "backend.models": {"ad": "ad.json"},
            "source.n_events": 5000,
        },
    )
    assert cfg.source.loop and cfg.source.n_events == 5000
    assert cfg.workers.n == 2 and cfg.backend.kind == "emulator"
    assert cfg.network.host == "127.0.0.1" and cfg.network.curve_keys is None
    assert config.parse_override("workers.n=3") == ("workers.n", 3)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.parse_override("workers.n")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback(host, loopback):
    assert config.is_loopback(host) is loopback
