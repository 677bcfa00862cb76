"""DQM on real Pythia events: clean lumisections, injected faults, the DQM file.

Lumisections are bootstrap resamples (with replacement) of a small Pythia sample, so clean
lumisections follow the reference distribution and faults are the only real change.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import uproot
import yaml

from l1forge.errors import ConfigError, DataFormatError
from l1forge.online.dqm.config import default_raw, load_config, make_config
from l1forge.online.dqm.histograms import (
    DQMReference,
    book_histograms,
    compared_values,
    histogram_group,
)
from l1forge.online.dqm.monitor import SUMMARY_FORMAT, DQMMonitor, LumisectionClosedError
from l1forge.sim import faults
from l1forge.sim.l1objects import to_physical

from .samples import PER_LS, SEEDS, bootstrap

INJECT_AT = 4  # warm-up is 3 lumisections: the fourth and later are compared
WITHIN = 2  # every fault must raise its error alarm within this many faulty lumisections
ALARM_KEYS = {
    "lumisection",
    "histogram",
    "kind",
    "severity",
    "entries",
    "chi2_ndf",
    "chi2_pvalue",
    "ks_pvalue",
    "max_pull",
    "region",
    "n_bins",
    "message",
}


def run_lumisections(monitor, stream, source, n_ls, first=0):
    """Fill and end lumisections first..first+n_ls-1; returns each one's alarms."""
    out = []
    for ls in range(first, first + n_ls):
        hw = source(ls)
        for i in range(0, len(hw), 500):
            s, bits = stream.results(hw[i : i + 500])
            monitor.fill(ls, to_physical(hw[i : i + 500]), s, bits, latency_s=2e-3)
        out.append(monitor.end_lumisection(ls))
    return out


def new_monitor(config=None, run=1):
    return DQMMonitor(config or load_config(), seed_names=SEEDS, score_names=("ad",), run=run)


def test_clean_lumisections_raise_no_error(clean_hw, stream):
    m = new_monitor()
    alarms = run_lumisections(m, stream, bootstrap(clean_hw, 1), 12)
    assert [a for al in alarms for a in al if a.severity == "error"] == []
    # the first 3 are the warm-up; every later one compares the populated histograms
    assert [m.histograms_compared(ls) for ls in range(3)] == [0, 0, 0]
    assert all(m.histograms_compared(ls) >= 14 for ls in range(3, 12))
    rates = m.seed_rates()
    assert sorted(rates) == list(range(12))
    assert all(0.05 < r["AD_Loose"] < 0.15 and 0.0 < r["ZeroBias"] < 0.03 for r in rates.values())


FAULTS = {
    "dead_region": (
        lambda: faults.DeadRegion("jet", eta_min=1.5, eta_max=3.0, phi_min=0.0, phi_max=1.0),
        {"dead_region"},
        {"jet/occupancy"},
    ),
    "hot_channel": (
        lambda: faults.HotChannel("jet", eta=-1.2, phi=2.0, pt_gev=40.0, fraction=0.02),
        {"hot_region"},
        {"jet/occupancy"},
    ),
    "energy_scale": (
        lambda: faults.EnergyScale(0.05),
        {"shifted_input"},
        {"jet/pt", "met/pt", "egamma/pt"},
    ),
    "pileup": (
        None,
        {"shifted_input", "score_change", "rate_excursion"},
        {"jet/multiplicity", "jet/pt", "met/pt", "score/ad", "trigger/rates"},
    ),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_fault_raises_its_alarm(name, clean_hw, high_pileup_hw, stream):
    make, kinds, hists = FAULTS[name]
    clean = bootstrap(clean_hw, 2)
    rng = np.random.default_rng(3)

    def source(ls):
        if ls < INJECT_AT:
            return clean(ls)
        if make is None:
            return high_pileup_hw[rng.integers(0, len(high_pileup_hw), PER_LS)]
        return faults.inject(make(), clean(ls), rng)

    m = new_monitor()
    alarms = run_lumisections(m, stream, source, INJECT_AT + WITHIN)
    assert [a for al in alarms[:INJECT_AT] for a in al if a.severity == "error"] == []
    flagged = [
        ls
        for ls in range(INJECT_AT, INJECT_AT + WITHIN)
        if any(
            a.severity == "error" and a.kind in kinds and a.histogram in hists for a in alarms[ls]
        )
    ]
    assert flagged, [a.message for al in alarms[INJECT_AT:] for a in al]
    if name in ("dead_region", "hot_channel"):
        a = next(a for a in alarms[flagged[0]] if a.kind in kinds)
        (eta_lo, eta_hi), (phi_lo, phi_hi) = a.region
        eta, phi = (2.25, 0.5) if name == "dead_region" else (-1.2, 2.0)
        assert eta_lo <= eta <= eta_hi and phi_lo <= phi <= phi_hi, a.region
    # faulty lumisections stay out of the running reference
    assert m._running.n_lumisections == INJECT_AT


def test_dqm_file_and_alarm_json(tmp_path, clean_hw, stream):
    m = new_monitor(run=42)
    rng = np.random.default_rng(4)
    clean = bootstrap(clean_hw, 4)
    fault = faults.EnergyScale(0.05)
    source = lambda ls: clean(ls) if ls < 4 else faults.inject(fault, clean(ls), rng)  # noqa: E731
    run_lumisections(m, stream, source, 6)
    m.fill(6, to_physical(clean_hw[:100]), np.zeros(100), np.zeros((100, 3), bool), 1e-3)
    result = m.end_run(tmp_path)  # ends LS 6 (too few events to compare)
    assert result.n_lumisections == 7 and result.n_errors >= 2
    summary = json.loads(result.summary_path.read_text())
    assert summary["format"] == SUMMARY_FORMAT and summary["version"] == 1
    assert summary["run"] == 42 and summary["root_file"] == result.root_path.name
    assert summary["seed_names"] == list(SEEDS) and summary["score_names"] == ["ad"]
    assert summary["events_per_lumisection"] == {str(i): PER_LS for i in range(6)} | {"6": 100}
    assert summary["n_errors"] == sum(a["severity"] == "error" for a in summary["alarms"])
    assert summary["lumisections_with_errors"] == [4, 5]
    assert summary["histograms_compared_per_lumisection"]["6"] == 0
    for a in summary["alarms"]:
        assert set(a) == ALARM_KEYS
        assert a["severity"] in ("warning", "error") and isinstance(a["message"], str)
    assert [a["message"] for a in summary["alarms"]] == [a.message for a in m.alarms]
    with uproot.open(result.root_path) as f:
        assert sorted(summary["histograms"]) == sorted(book_histograms(m.config, 3, ("ad",)))
        for name in summary["histograms"]:
            h = f[name]
            total = m._totals[name]
            flow = total.ndim == 1 and total.axes[0].traits.underflow
            np.testing.assert_array_equal(h.values(flow=flow), compared_values(total))
            # a regular axis is stored as (bins, low, high): its edges come back within 1 ulp
            np.testing.assert_allclose(h.axes[0].edges(), total.axes[0].edges, rtol=0, atol=1e-12)
            for ls in range(7):
                per_ls = f[f"lumisections/ls{ls:05d}/{name}"].values(flow=flow)
                np.testing.assert_array_equal(
                    per_ls, compared_values(m.lumisection_histograms(ls)[name])
                )
        assert f["events"].values().sum() == 6 * PER_LS + 100
        counts = f["trigger/counts_vs_lumisection"].values()
        assert counts.shape == (7, 3)
        np.testing.assert_array_equal(
            counts[6], m.lumisection_histograms(6)["trigger/rates"].values()
        )


def test_reference_from_a_dqm_file(tmp_path, clean_hw, stream):
    m = new_monitor()
    run_lumisections(m, stream, bootstrap(clean_hw, 5), 8)
    ref_path = m.end_run(tmp_path).root_path
    raw = default_raw()
    raw["reference"].update(mode="file", path=str(ref_path))
    config = make_config(raw)
    rng = np.random.default_rng(6)
    clean = bootstrap(clean_hw, 7)
    # no warm-up with a reference file: the very first lumisections are compared
    m2 = new_monitor(config)
    alarms = run_lumisections(m2, stream, clean, 2)
    assert m2.histograms_compared(0) >= 14
    assert [a for al in alarms for a in al if a.severity == "error"] == []
    shifted = lambda ls: faults.inject(faults.EnergyScale(0.05), clean(ls), rng)  # noqa: E731
    alarms = run_lumisections(m2, stream, shifted, 1, first=2)
    assert any(a.severity == "error" and a.histogram == "jet/pt" for a in alarms[0])
    bad = replace(config, binning=replace(config.binning, phi_bins=30))
    with pytest.raises(DataFormatError, match="same DQM configuration"):
        DQMReference.from_root(ref_path, book_histograms(bad, 3, ("ad",)))


def test_fill_checks_its_input(clean_hw):
    m = new_monitor()
    x = to_physical(clean_hw[:10])
    with pytest.raises(DataFormatError, match=r"objects_phys"):
        m.fill(0, x[:, :18], np.zeros(10), np.zeros((10, 3), bool), 1e-3)
    with pytest.raises(DataFormatError, match="scores"):
        m.fill(0, x, np.zeros((10, 2)), np.zeros((10, 3), bool), 1e-3)
    with pytest.raises(DataFormatError, match="seed_bits"):
        m.fill(0, x, np.zeros(10), np.zeros((10, 2), bool), 1e-3)
    m.fill(0, x, np.zeros(10), np.zeros((10, 3), bool), 1e-3)
    assert m.end_lumisection(0) == []  # 10 events < min_events: histogrammed, not compared
    with pytest.raises(LumisectionClosedError, match="already ended"):
        m.fill(0, x, np.zeros(10), np.zeros((10, 3), bool), 1e-3)


def test_latency_excursion(clean_hw):
    m = new_monitor()
    x = to_physical(clean_hw[:10])
    for latency in (0.01, 0.02, 3.0):
        m.fill(0, x, np.zeros(10), np.zeros((10, 3), bool), latency)
    (a,) = m.end_lumisection(0)
    assert (a.kind, a.severity, a.histogram) == ("latency_excursion", "error", "backend/latency")


def test_histogram_groups():
    assert histogram_group("jet/pt") == "input" and histogram_group("met/phi") == "input"
    assert histogram_group("egamma/occupancy") == "occupancy"
    assert histogram_group("score/ad") == "score" and histogram_group("trigger/rates") == "rates"
    with pytest.raises(KeyError):
        histogram_group("jet/mass")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(colour=1), r"dqm\.colour: unknown key"),
        (
            lambda r: r["checks"]["input"].update(ks_pvalue={"warning": 1e-7, "error": 1e-4}),
            r"dqm\.checks\.input\.ks_pvalue\.error: must be at most",
        ),
        (
            lambda r: r["checks"]["occupancy"].pop("min_entries"),
            r"dqm\.checks\.occupancy\.min_entries: missing",
        ),
        (
            lambda r: r["checks"]["occupancy"].update(chi2_pvalue={"warning": 0.1, "error": 0.01}),
            r"dqm\.checks\.occupancy\.chi2_pvalue: unknown key",
        ),
        (lambda r: r["binning"]["pt_bins"].update(jet=0), r"dqm\.binning\.pt_bins\.jet"),
        (lambda r: r["reference"].update(mode="file"), r"dqm\.reference\.path"),
        (lambda r: r["reference"].update(exclude="info"), r"dqm\.reference\.exclude"),
        (
            lambda r: r["checks"]["occupancy"].update(window_sizes=[]),
            r"dqm\.checks\.occupancy\.window_sizes",
        ),
    ],
)
def test_config_errors_name_the_key(edit, match, tmp_path):
    raw = default_raw()
    edit(raw)
    path = tmp_path / "dqm.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


@pytest.mark.parametrize(("exclude", "joins"), [("warning", False), ("error", True)])
def test_lumisections_with_warnings_stay_out_of_the_reference(exclude, joins, clean_hw, stream):
    # every alarm is a warning here: errors need p < 1e-300 or a pull above 1000 sigma
    raw = default_raw()
    raw["reference"]["exclude"] = exclude
    for check in raw["checks"].values():
        for stat in ("chi2_pvalue", "ks_pvalue"):
            if stat in check:
                check[stat] = {"warning": 1e-4, "error": 1e-300}
        if "pull" in check:
            check["pull"] = {"warning": 5.0, "error": 1000.0}
    m = new_monitor(make_config(raw))
    pool = clean_hw[:1500]
    hot = faults.HotChannel("jet", eta=-1.2, phi=2.0, pt_gev=40.0, fraction=0.05)
    rng = np.random.default_rng(9)
    source = lambda ls: pool if ls < 4 else faults.inject(hot, pool, rng)  # noqa: E731
    alarms = run_lumisections(m, stream, source, 5)
    assert any(a.kind == "hot_region" for a in alarms[4])
    assert all(a.severity == "warning" for al in alarms for a in al)
    assert m._running.n_lumisections == (5 if joins else 4)
