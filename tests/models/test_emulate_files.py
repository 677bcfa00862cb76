"""`l1forge emulate`: the emulator over event files (HDF5 and ROOT in, ROOT and HDF5 out), menu
calibration, rate tables, the CI check, and one clear error (exit 2) per kind of bad input."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.cli import main
from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.models.emulate_files import (
    check_file,
    emulate_file,
    emulate_scores,
    load_models,
)
from l1forge.models.emulation_output import open_output
from l1forge.models.emulator import Emulator
from l1forge.models.rates import menu_table
from l1forge.online.datapath.menu import Menu, Seed
from l1forge.sim.dataset import EventSet, read_events, write_events

N_BG = 3000
N_SIG = 400
CHUNK = 700  # several chunks per file, a partial last one


def _events(n: int, processes: tuple[str, ...], seed: int, shift: int = 0) -> EventSet:
    rng = np.random.default_rng(seed)
    obj = rng.integers(-300, 1000, size=(n, 19, 3)).astype(np.int32)
    label = (np.arange(n) % len(processes)).astype(np.int16)
    obj[:, :, 0] += (shift * (1 + label[:, None])).astype(np.int32)
    return EventSet(
        objects_phys=obj.astype(np.float32),
        objects_hw=obj,
        run=np.full(n, 7, dtype=np.uint64),
        event=np.arange(1000, 1000 + n, dtype=np.uint64),
        label=label,
        weight=np.ones(n, dtype=np.float32),
        processes=processes,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("emulate")
    ir = qnet.save(random_mlp(57, (8,), 3, score=True, seed=3, name="tiny_ad"), d / "ad.qnet.json")
    ir2 = qnet.save(random_mlp(57, (6,), 2, score=True, seed=4, name="tiny_b"), d / "b.qnet.json")
    small = qnet.save(random_mlp(16, (4,), 2, score=True, seed=5), d / "small.qnet.json")
    bg = write_events(d / "zb.h5", _events(N_BG, ("minbias",), 1))
    sig = write_events(d / "sig.h5", _events(2 * N_SIG, ("sigA", "sigB"), 2, shift=150))
    return {"dir": d, "ir": ir, "ir2": ir2, "small": small, "bg": bg, "sig": sig}


@pytest.fixture(scope="module")
def menu(files):
    """Two seeds at thresholds giving ~10 % and ~2 % of the zero-bias sample, a prescaled one."""
    net = qnet.load(files["ir"])
    x = read_events(files["bg"]).inputs.astype(np.int64)
    s = Emulator(net).run_float(x)[:, 0]
    return Menu(
        (
            Seed("AD_Loose", "ad", threshold=float(np.quantile(s, 0.9))),
            Seed("AD_Tight", "ad", threshold=float(np.quantile(s, 0.98))),
            Seed("B_Loose", "b", threshold=0.0, prescale=3),
            Seed("ZeroBias", "", prescale=50),
        )
    )


def _models(files):
    return load_models([f"ad={files['ir']}", f"b={files['ir2']}"])


def _expected(files, menu, path):
    ev = read_events(path)
    x = ev.inputs.astype(np.int64)
    scores = {}
    for name, key in (("ad", "ir"), ("b", "ir2")):
        scores[name] = Emulator(qnet.load(files[key])).run_float(x)[:, 0]
    bits = menu.decide(scores, np.arange(len(x), dtype=np.uint64))
    return ev, scores, bits


@pytest.mark.parametrize("suffix", [".root", ".h5"])
def test_emulate_file_equals_emulator_and_keeps_run_event(files, menu, suffix, tmp_path):
    out = tmp_path / f"out{suffix}"
    summary = emulate_file(_models(files), files["bg"], out, menu, CHUNK, progress=False)
    ev, scores, bits = _expected(files, menu, files["bg"])
    assert summary["n_events"] == N_BG
    if suffix == ".root":
        import uproot

        with uproot.open(out) as f:
            got = f["Events"].arrays(library="np")
            assert json.loads(str(f["l1forge_meta"]))["menu"] == menu.to_json()
    else:
        with h5py.File(out) as f:
            got = {k: f[k][...] for k in f}
    assert_array_equal(got["run"], ev.run)
    assert_array_equal(got["event"], ev.event)
    assert_array_equal(got["score_ad"], scores["ad"])
    assert_array_equal(got["score_b"], scores["b"])
    assert_array_equal(got["seed_bits"], bits)
    for i, name in enumerate(menu.names):
        assert got[name].dtype == bool
        assert_array_equal(got[name], (bits >> i) & 1 == 1)
    assert summary["fired"] == menu.counts(bits)


def _root_events(h5, path):
    """The events of an HDF5 event file as a ROOT file with the storage's columns."""
    import uproot

    ev = read_events(h5)
    with uproot.recreate(path) as f:
        f["Events"] = {
            "run": ev.run,
            "event": ev.event,
            "objects_hw": ev.objects_hw,
            "label": ev.label,
        }
    return path


def test_root_event_file_gives_the_hdf5_result(files, tmp_path):
    root_in = _root_events(files["sig"], tmp_path / "sig.root")
    ms = _models(files)
    a = emulate_scores(ms, files["sig"], chunk_events=CHUNK, progress=False)
    b = emulate_scores(ms, root_in, chunk_events=CHUNK, progress=False)
    assert_array_equal(a.scores["ad"], b.scores["ad"])
    assert_array_equal(a.label, b.label)


def test_check_passes_then_names_the_first_differing_events(files, menu, tmp_path, capsys):
    ref = tmp_path / "ref.h5"
    ms = _models(files)
    menu_path = tmp_path / "menu.json"
    menu_path.write_text(json.dumps(menu.to_json()))
    models = ["--model", f"ad={files['ir']}", "--model", f"b={files['ir2']}", "--no-progress"]
    common = [*models, "--events", str(files["bg"]), "--menu", str(menu_path)]
    assert main(["emulate", "run", *common, "--out", str(ref)]) == 0
    assert json.loads(capsys.readouterr().out)["n_events"] == N_BG
    assert check_file(ms, files["bg"], ref, menu, CHUNK, progress=False).ok
    with h5py.File(ref, "r+") as f:
        f["score_ad"][1234] += 1.0
        f["seed_bits"][2500] ^= 1
    argv = ["emulate", "check", *common, "--reference", str(ref)]
    assert main([*argv, "--chunk-events", str(CHUNK)]) == 1
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["n_differing"] == 2 and not summary["ok"]
    assert "event seq 1234 (run 7, event 2234): score_ad" in cap.err
    assert "event seq 2500" in cap.err and "seed_bits" in cap.err
    # A reference made without the menu lacks its columns: a structural difference.
    bare = tmp_path / "bare.root"
    emulate_file(ms, files["bg"], bare, None, CHUNK, progress=False)
    res = check_file(ms, files["bg"], bare, menu, CHUNK, progress=False)
    assert not res.ok and "lacks columns" in res.problems[0]
    assert open_output(bare).n_events == N_BG


def test_calibrate_writes_the_daemons_menu_with_intervals(files, tmp_path, capsys):
    out = tmp_path / "cal" / "menu.json"
    argv = ["emulate", "calibrate", "--model", f"ad={files['ir']}", "--zero-bias", str(files["bg"])]
    argv += ["--seed", "name=AD_Loose,model=ad,rate=400000", "--seed", "name=ZB,model=,prescale=9"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    menu = Menu.from_json(out.read_text())  # what `l1forge online set-menu` reads
    scores = emulate_scores(load_models([f"ad={files['ir']}"]), files["bg"], progress=False)
    want = Menu((Seed("AD_Loose", "ad", target_rate_hz=4e5), Seed("ZB", "", prescale=9))).calibrate(
        scores.scores
    )
    assert menu == want
    (cal,) = summary["seeds"]
    assert cal["n_above"] == int(np.count_nonzero(scores.scores["ad"] > menu.seeds[0].threshold))
    lo, hi = cal["rate_interval_hz"]
    assert lo < cal["rate_hz"] < hi
    assert cal["threshold_interval"][0] <= cal["threshold"] <= cal["threshold_interval"][1]
    assert json.loads((tmp_path / "cal" / "menu.calibration.json").read_text())["seeds"] == [cal]


def test_calibrate_refuses_an_unresolvable_rate(files, tmp_path, capsys):
    argv = ["emulate", "calibrate", "--model", f"ad={files['ir']}", "--zero-bias", str(files["bg"])]
    argv += ["--seed", "name=AD,model=ad,rate=100000", "--out", str(tmp_path / "m.json")]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    # 3000 events resolve 10/3000 of 40 MHz = 133 kHz at best
    assert "zb.h5" in err and "smallest rate this sample resolves is 1.333e+05 Hz" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_rates_command_table_json_and_plots(files, menu, tmp_path, capsys):
    menu_path = tmp_path / "menu.json"
    menu_path.write_text(json.dumps(menu.to_json()))
    out = tmp_path / "rates"
    argv = ["emulate", "rates", "--model", f"ad={files['ir']}", "--model", f"b={files['ir2']}"]
    argv += ["--menu", str(menu_path), "--zero-bias", str(files["bg"])]
    argv += ["--signal", str(files["sig"]), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AD_Loose" in printed and "sigB" in printed
    table = json.loads((out / "rates.json").read_text())
    _, _, zb_bits = _expected(files, menu, files["bg"])
    ev, _, sig_bits = _expected(files, menu, files["sig"])
    want = menu_table(
        menu, zb_bits, {"sigA": sig_bits[ev.label == 0], "sigB": sig_bits[ev.label == 1]}
    )
    assert table["seeds"] == want["seeds"] and table["total"] == want["total"]
    assert (out / "rates.png").stat().st_size > 0 and (out / "efficiencies.png").is_file()
    zero_bias = table["seeds"][3]  # 3000 / 50 = ~60 events kept
    assert zero_bias["rate"]["rate_hz"] == pytest.approx(zero_bias["rate"]["fired"] / N_BG * 40e6)


def _run(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def _bad(files, tmp_path, case: str) -> tuple[list[str], str]:
    """(argv, text the one-line error must contain) of each bad-input case."""
    ir, bg = str(files["ir"]), str(files["bg"])
    out = str(tmp_path / "o.root")
    run = ["emulate", "run", "--model", f"ad={ir}", "--no-progress", "--out", out]
    if case == "missing events":
        return [*run, "--events", str(tmp_path / "nope.h5")], "nope.h5"
    if case == "truncated hdf5":
        t = tmp_path / "trunc.h5"
        t.write_bytes(files["bg"].read_bytes()[: files["bg"].stat().st_size // 2])
        return [*run, "--events", str(t)], "trunc.h5"
    if case == "truncated root":
        full = _root_events(files["bg"], tmp_path / "full.root")
        t = tmp_path / "trunc.root"
        t.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        return [*run, "--events", str(t)], "trunc.root"
    if case == "feature mismatch":
        argv = ["emulate", "run", "--model", f"s={files['small']}", "--events", bg, "--out", out]
        return argv, "takes inputs of sizes [16]"
    if case == "inputs outside the format":
        from l1forge.models.fixed import Fixed

        narrow = random_mlp(57, (4,), 2, input_fixed=Fixed(True, 8, 8), score=True, seed=9)
        ir8 = qnet.save(narrow, tmp_path / "narrow.qnet.json")
        argv = ["emulate", "run", "--model", f"n={ir8}", "--events", bg, "--out", out]
        return [*argv, "--no-progress"], "zb.h5: rows 0..2999 hold inputs outside 'n'"
    if case == "unknown model":
        m = tmp_path / "menu.json"
        m.write_text(json.dumps(Menu((Seed("X", "nosuch", threshold=1.0),)).to_json()))
        return [*run, "--events", bg, "--menu", str(m)], "menu.json: menu seed 'X': unknown model"
    if case == "uncalibrated menu":
        m = tmp_path / "menu.json"
        m.write_text(json.dumps(Menu((Seed("X", "ad", target_rate_hz=1e5),)).to_json()))
        return [*run, "--events", bg, "--menu", str(m)], "menu.json: seed 'X' has no threshold"
    if case == "bad output suffix":
        return ["emulate", "run", "--model", ir, "--events", bg, "--out", "o.txt"], "o.txt"
    if case == "missing reference":
        argv = ["emulate", "check", "--model", f"ad={ir}", "--events", bg]
        return [*argv, "--reference", str(tmp_path / "ref.root")], "ref.root"
    if case == "bad seed":
        argv = ["emulate", "calibrate", "--model", f"ad={ir}", "--zero-bias", bg]
        return [*argv, "--seed", "name=A,model=ad,rat=1", "--out", out], "bad part 'rat=1'"
    if case == "seed without rate":
        argv = ["emulate", "calibrate", "--model", f"ad={ir}", "--zero-bias", bg]
        return [*argv, "--seed", "name=A,model=ad", "--out", out], "needs a target rate"
    if case == "signal twice":
        m = tmp_path / "menu.json"
        m.write_text(json.dumps(Menu((Seed("X", "ad", threshold=1.0),)).to_json()))
        argv = ["emulate", "rates", "--model", f"ad={ir}", "--menu", str(m), "--zero-bias", bg]
        sig = str(files["sig"])
        argv += ["--signal", sig, "--signal", sig, "--out", out, "--no-progress"]
        return argv, "also in an earlier"
    raise AssertionError(case)


BAD = [
    "missing events",
    "truncated hdf5",
    "truncated root",
    "feature mismatch",
    "inputs outside the format",
    "unknown model",
    "uncalibrated menu",
    "bad output suffix",
    "missing reference",
    "bad seed",
    "seed without rate",
    "signal twice",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, case):
    argv, needle = _bad(files, tmp_path, case)
    rc, err = _run(argv, capsys)
    assert rc == 2, err
    assert err.startswith("l1forge: error:") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.root").exists() and not (tmp_path / "o.root.partial").exists()


def test_thresholds_are_strict_and_infinite_means_unset(files, menu):
    ms = _models(files)
    zb = emulate_scores(ms, files["bg"], menu, CHUNK, progress=False)
    t = menu.seeds[0].threshold
    assert np.count_nonzero((zb.seed_bits & 1) == 1) == np.count_nonzero(zb.scores["ad"] > t)
    assert math.isfinite(t)
