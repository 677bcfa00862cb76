"""Model registry: versions with provenance and checksums, atomic active pointer, rollback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.online.datapath.menu import default_menu
from l1forge.online.learning import registry as registry_mod
from l1forge.online.learning.registry import ModelRegistry, RegistryError


def _nets(n: int):
    return [random_mlp(score=True, seed=i, name="ad") for i in range(n)]


def test_versions_provenance_and_checksums(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    a, b = _nets(2)
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF fake weights bytes")
    menu = default_menu(classifier_model=None).to_json()
    v1 = reg.register(a, {"kind": "training_run", "seeds": {"training": 3}}, weights=weights)
    v2 = reg.register(b, {"kind": "fine_tune"}, parent=v1.name, menu=menu)
    assert reg.names() == ["v0001", "v0002"]
    assert reg.active is None  # registering does not activate
    assert v2.parent == "v0001" and v1.parent is None
    assert v1.provenance["seeds"] == {"training": 3}
    assert set(v1.provenance["sha256"]) == {"model.qnet.json", "model.qnet.npz", "keras.weights.h5"}
    assert v1.weights_path.read_bytes() == weights.read_bytes()
    assert v2.weights_path is None and v2.menu() == menu
    x = np.random.default_rng(0).integers(-500, 500, (200, 57))
    assert_array_equal(Emulator(reg.get("v0002").load_net()).run(x), Emulator(b).run(x))
    reg.verify("v0001")
    # a modified file is caught by its checksum
    npz = v1.path / "model.qnet.npz"
    npz.write_bytes(npz.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="sha256"):
        reg.verify("v0001")
    with pytest.raises(RegistryError, match="no model version 'v0009'"):
        reg.get("v0009")
    with pytest.raises(RegistryError):
        reg.register(a, {}, parent="v0042")  # unknown parent
    assert reg.names() == ["v0001", "v0002"]  # the failed registration left nothing behind
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".")]


def test_promote_rollback_and_history(tmp_path):
    reg = ModelRegistry(tmp_path)
    for net in _nets(3):
        reg.register(net, {})
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    reg.promote("v0001")
    reg.promote("v0003")
    reg.promote("v0002")
    assert reg.active_name == "v0002"
    assert reg.history() == ["v0001", "v0003", "v0002"]
    assert reg.rollback().name == "v0003"
    assert reg.rollback().name == "v0001"
    assert reg.active_name == "v0001"
    with pytest.raises(RegistryError):
        reg.rollback()
    # a fresh object on the same folder sees the same pointer (it lives on disk)
    assert ModelRegistry(tmp_path).active_name == "v0001"
    v = reg.register(_nets(1)[0], {}, activate=True)
    assert reg.active_name == v.name == "v0004"


def test_active_pointer_is_replaced_atomically(tmp_path, monkeypatch):
    """A crash while the pointer is written leaves the previous pointer intact and readable."""
    reg = ModelRegistry(tmp_path)
    for net in _nets(2):
        reg.register(net, {})
    reg.promote("v0001")
    before = (tmp_path / "active.json").read_text()

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(registry_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        reg.promote("v0002")
    monkeypatch.setattr(registry_mod.os, "replace", os.replace)
    assert (tmp_path / "active.json").read_text() == before
    assert json.loads(before)["active"] == reg.active_name == "v0001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_concurrent_registries_take_distinct_versions(tmp_path, monkeypatch):
    """A writer with a stale view of the folder (a race) takes the next free version."""
    r1, r2 = ModelRegistry(tmp_path), ModelRegistry(tmp_path)
    a, b = _nets(2)
    v1 = r1.register(a, {"by": "r1"})
    monkeypatch.setattr(r2, "names", lambda: [])  # r2 has not seen v0001 yet
    v2 = r2.register(b, {"by": "r2"})
    assert (v1.name, v2.name) == ("v0001", "v0002")
    assert r1.get("v0001").provenance["by"] == "r1"
    assert r1.get("v0002").provenance["by"] == "r2"


def test_cli_list_promote_rollback_show(tmp_path, capsys):
    from l1forge.cli import main

    reg = ModelRegistry(tmp_path)
    for net in _nets(2):
        reg.register(net, {"kind": "test"})
    base = ["--registry", str(tmp_path)]

    def run(*argv):
        assert main(["online", "model", *argv, *base]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("promote", "v0001")["active"] == "v0001"
    assert run("promote", "v0002")["history"] == ["v0001", "v0002"]
    listed = run("list")
    assert listed["active"] == "v0002"
    assert [v["version"] for v in listed["versions"] if v["active"]] == ["v0002"]
    assert run("rollback")["active"] == "v0001"
    shown = run("show", "v0002")
    assert shown["verified"] and shown["provenance"]["kind"] == "test"
    assert main(["online", "model", "show", "v0007", *base]) == 2  # a clear error, no traceback
    assert "no model version 'v0007'" in capsys.readouterr().err


def test_firmware_folder_for_a_version(tmp_path):
    """A version can produce its firmware build folder (Verilog, packing, manifest)."""
    from l1forge.firmware.build import load_manifest

    reg = ModelRegistry(tmp_path)
    net = random_mlp(n_in=4, hidden=(3,), score=True, seed=2, name="ad")
    v = reg.register(net, {"kind": "test"})
    out = reg.build_firmware(v.name, hls=False, lint=False, n_check=200)
    manifest = load_manifest(out)
    assert out == v.path / "firmware" and manifest["network"] == "ad"
    assert all((out / s).is_file() for s in manifest["sources"])
    reg.verify(v.name)  # the added folder does not disturb the recorded files
