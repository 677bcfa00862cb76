"""Layout, units, reproducibility and error handling of the event source."""

import hashlib
import itertools
import math

import h5py
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.sim import l1objects as l1
from l1forge.sim.dataset import concat_events, read_events, write_events
from l1forge.sim.generate import generate_events
from l1forge.sim.processes import load_processes


def test_hardware_units_round_trip_within_one_lsb_and_saturate():
    rng = np.random.default_rng(0)
    phys = np.stack(
        [
            rng.uniform(0.5, 2000, 5000),
            rng.uniform(-5.4, 5.4, 5000),
            rng.uniform(-np.pi, np.pi, 5000),
        ],
        axis=-1,
    ).astype(np.float32)
    hw = l1.to_hardware(phys)
    back = l1.to_physical(hw)
    assert np.all(np.abs(back[:, 0] - phys[:, 0]) <= l1.PT_LSB_GEV)
    assert np.all(np.abs(back[:, 1] - phys[:, 1]) <= l1.ETA_LSB)
    dphi = np.abs(np.mod(back[:, 2] - phys[:, 2] + np.pi, 2 * np.pi) - np.pi)
    assert np.all(dphi <= l1.PHI_LSB)
    big = l1.to_hardware(np.array([[5000.0, 7.0, 3.1], [1.0, -9.0, -3.14159], [0.0, 2.0, 1.0]]))
    assert_array_equal(big, [[l1.PT_MAX_HW, 127, 71], [2, -128, -72], [0, 0, 0]])


def test_events_have_the_level1_layout(sample):
    ev = sample("ttbar", 200)
    o, h = ev.objects_phys, ev.objects_hw
    assert o.shape == (200, 19, 3) and o.dtype == np.float32 and h.dtype == np.int32
    assert ev.inputs.shape == (200, 57)
    assert_array_equal(h, l1.to_hardware(o))
    assert h[..., 0].min() >= 0 and h[..., 0].max() <= l1.PT_MAX_HW
    assert h[..., 1].min() >= l1.ETA_MIN_HW and h[..., 2].max() <= l1.PHI_MAX_HW
    for sl in (l1.EGAMMA, l1.MUON, l1.JET):
        pt = o[:, sl, 0]
        assert np.all(np.diff(pt, axis=1) <= 0), "objects sorted by decreasing pT"
        empty = pt == 0
        assert np.all(o[:, sl][empty] == 0), "missing objects are zero-padded"
    r = l1.DetectorResponse()
    assert np.abs(o[:, l1.EGAMMA, 1]).max() < r.egamma_eta_max
    assert np.abs(o[:, l1.MUON, 1]).max() < r.muon_eta_max
    assert np.abs(o[:, l1.JET, 1]).max() < r.jet_eta_max
    present = o[:, l1.JET, 0] > 0
    assert o[:, l1.JET, 0][present].min() > r.jet_pt_min
    assert_array_equal(ev.event, np.arange(1, 201))
    assert ev.weight.min() > 0 and math.isclose(
        ev.weight.sum(), ev.provenance["sigma_pb_per_bin"][0], rel_tol=1e-5
    )


def test_same_seed_same_file_different_seed_different(tmp_path):
    paths = []
    for i, seed in enumerate((5, 5, 6)):
        paths.append(
            write_events(
                tmp_path / f"e{i}.h5",
                generate_events(
                    "minbias", 60, seed, 10.0, progress=False, pileup_library_events=2000
                ),
            )
        )
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digest[0] == digest[1] != digest[2]
    a, c = read_events(paths[0]), read_events(paths[2])
    assert not np.array_equal(a.objects_phys, c.objects_phys)
    assert a.provenance["seed"] == 5 and a.provenance["versions"]["pythia8mc"]


def test_qcd_bins_are_weighted_by_cross_section():
    ev = generate_events("qcd", 60, 2, 0.0, progress=False)
    bins = ev.provenance["sigma_pb_per_bin"]
    assert len(bins) == 6 and all(b1 > b2 for b1, b2 in itertools.pairwise(bins))
    # each bin's events carry that bin's cross section divided by its event count
    assert math.isclose(float(ev.weight.sum()), sum(bins), rel_tol=1e-5)
    assert len(np.unique(ev.weight)) == 6


@pytest.mark.parametrize("pileup", [0.0, 5.0])
def test_sharding_on_a_dask_cluster_gives_the_same_events(pileup):
    kw = dict(shard_events=20, progress=False, pileup_library_events=2000)
    one = generate_events("zll", 40, 9, pileup, n_workers=1, **kw)
    two = generate_events("zll", 40, 9, pileup, n_workers=2, **kw)
    assert_array_equal(one.objects_phys, two.objects_phys)
    assert_array_equal(one.weight, two.weight)


def test_concat_and_round_trip(tmp_path, sample):
    a, b = sample("zll", 900), sample("ato4l", 900)
    both = concat_events([a.select(slice(0, 30)), b.select(slice(0, 20))])
    assert both.processes == ("zll", "ato4l") and both.label.tolist() == [0] * 30 + [1] * 20
    back = read_events(write_events(tmp_path / "both.h5", both))
    for k in ("objects_phys", "objects_hw", "run", "event", "label", "weight"):
        assert_array_equal(getattr(back, k), getattr(both, k))
    assert len(back.of_process("ato4l")) == 20


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(process="zprime", n=5, seed=1), ConfigError, "unknown process"),
        (dict(process="zll", n=-3, seed=1), ConfigError, "positive"),
        (dict(process="zll", n=0, seed=1), ConfigError, "positive"),
        (dict(process="zll", n=5, seed=-1), ConfigError, "seed"),
        (dict(process="zll", n=5, seed=1, pileup_mean=-2.0), ConfigError, "pileup"),
    ],
)
def test_bad_generation_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        generate_events(progress=False, **kwargs)


def test_corrupt_and_foreign_files_are_rejected(tmp_path, sample):
    good = write_events(tmp_path / "good.h5", sample("zll", 900).select(slice(0, 10)))
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file at all")
    (tmp_path / "truncated.h5").write_bytes(good.read_bytes()[:2000])
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with h5py.File(tmp_path / "missing.h5", "w") as f:
        f.attrs["format"], f.attrs["version"] = "l1forge-events", 1
        f["run"] = np.zeros(3, np.uint64)
    for name, match in [
        ("garbage", "corrupt"),
        ("truncated", "corrupt"),
        ("foreign", "not an l1forge"),
        ("missing", r"missing datasets"),
        ("absent", "not found"),
    ]:
        with pytest.raises(DataFormatError, match=match):
            read_events(tmp_path / f"{name}.h5")


def test_unwritable_output_is_a_clear_error(sample):
    with pytest.raises(L1ForgeError, match="cannot write"):
        write_events("/proc/no/such/dir/e.h5", sample("zll", 900).select(slice(0, 5)))


def test_process_catalogue_is_configuration(tmp_path):
    extra = tmp_path / "procs.yaml"
    extra.write_text(
        "zmumu_tight:\n  kind: background\n  settings: ['WeakSingleBoson:ffbar2gmZ = on',"
        " 'WeakZ0:gmZmode = 2', '23:onMode = off', '23:onIfAny = 13']\n"
    )
    ev = generate_events("zmumu_tight", 20, 1, 0.0, progress=False, catalogue=extra)
    assert ev.processes == ("zmumu_tight",)
    assert (ev.objects_phys[:, l1.MUON, 0] > 0).any()
    (tmp_path / "bad.yaml").write_text("p:\n  kind: signal\n  settings: 3\n")
    with pytest.raises(ConfigError, match=r"p\.settings"):
        load_processes(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("p:\n  kind: signal\n  settings: ['Nonsense:flag = on']\n")
    with pytest.raises(ConfigError, match="rejected"):
        generate_events("p", 5, 1, 0.0, progress=False, catalogue=tmp_path / "bad2.yaml")


def test_pileup_library_is_made_once_cached_and_named_in_provenance(tmp_path, monkeypatch):
    from l1forge.sim.generate import PileupLibrary

    monkeypatch.setenv("L1FORGE_CACHE", str(tmp_path))
    ev = generate_events("zll", 10, 1, 5.0, progress=False, pileup_library_events=40)
    files = list((tmp_path / "pythia").glob("pileup-*.npz"))
    assert len(files) == 1
    lib = PileupLibrary.cached(20_000, 40, l1.DetectorResponse())  # the default library seed
    assert len(lib) == 40 and ev.provenance["pileup"]["library_sha256"] == lib.sha256
    with np.load(files[0]) as f:
        assert_array_equal(f["offsets"], lib.offsets)
    again = generate_events("zll", 10, 1, 5.0, progress=False, pileup_library_events=40)
    assert_array_equal(again.objects_phys, ev.objects_phys)
    assert list((tmp_path / "pythia").glob("pileup-*.npz")) == files
    with pytest.raises(ConfigError, match="pileup_library_events"):
        generate_events("zll", 5, 1, 5.0, progress=False, pileup_library_events=0)


def test_local_workers_keep_glibc_trimming_as_it_is():
    """dask's 64 kB MALLOC_TRIM_THRESHOLD_ slowed every shard by ~10 %; the generation's own
    LocalCluster drops it and keeps the rest of dask's worker environment."""
    import dask
    import distributed  # noqa: F401

    from l1forge.sim.generate import _worker_environ

    theirs = dask.config.get("distributed.nanny.pre-spawn-environ")
    ours = _worker_environ()
    assert "MALLOC_TRIM_THRESHOLD_" in theirs and "MALLOC_TRIM_THRESHOLD_" not in ours
    assert ours == {k: v for k, v in theirs.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    assert ours  # OMP_NUM_THREADS and the others stay
