"""Study configuration: YAML to frozen dataclasses, errors naming the exact key."""

from __future__ import annotations

import pytest

from l1forge.errors import ConfigError
from l1forge.offline.config import StudyConfig, from_dict, load_config


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text(
        "detector:\n  init: {cell_mm: 25}\n  bounds: {cell_mm: [10, 40]}\n"
        "train: {steps: 7, batch: 16}\nnetwork: {hidden: 4}\n"
    )
    cfg = load_config(p)
    assert isinstance(cfg, StudyConfig)
    assert cfg.detector.init["cell_mm"] == 25.0 and cfg.detector.init["n_layers"] == 16.0
    assert cfg.detector.bounds["cell_mm"] == (10.0, 40.0)
    assert cfg.train.steps == 7 and cfg.network.hidden == 4
    with pytest.raises(AttributeError):
        cfg.train.steps = 3  # frozen


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"trian": {}}, "trian"),
        ({"train": {"stepz": 3}}, "train.stepz"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"detector": {"init": {"cell_mm": 100}}}, "detector.init.cell_mm"),
        ({"detector": {"bounds": {"n_layers": [5]}}}, "detector.bounds.n_layers"),
        ({"detector": {"init": {"depth": 3}}}, "detector.init.depth"),
        ({"detector": {"active": "Pb"}}, "detector.active"),
        ({"utility": {"pi0_rate": 1.5}}, "utility.pi0_rate"),
        ({"network": {"hidden": 0}}, "network.hidden"),
    ],
)
def test_errors_name_the_key(doc, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(doc)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)


def test_packaged_example_study_is_valid():
    from pathlib import Path

    import l1forge.offline

    cfg = load_config(Path(l1forge.offline.__file__).parent / "study.yaml")
    assert cfg.train.method == "joint" and cfg.detector.n_cells == 5
