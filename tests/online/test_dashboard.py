"""The dashboard in a real headless Chromium: it loads, follows a run live, shows a DQM alarm.

The run is real data through real parts: Pythia events, the emulator scoring them with a real
qnet, the default trigger menu calibrated on them, and a real ``DQMMonitor`` comparing each
lumisection with its running reference. A calorimeter energy-scale fault from
``l1forge.sim.faults`` is injected part-way, and the page must show the alarm it raises.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from l1forge.online.backends import EmulatorBackend
from l1forge.online.browser import Browser, find_chromium
from l1forge.online.dqm import DQMMonitor
from l1forge.online.menu import Menu, Seed, seed_counts
from l1forge.online.metrics import make_metrics
from l1forge.online.webserver import WebServer
from l1forge.sim.dataset import read_events
from l1forge.sim.faults import EnergyScale, inject
from l1forge.sim.l1objects import to_physical

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed"),
]

ARTIFACT = Path(__file__).resolve().parents[2] / "out" / "test-artifacts" / "dashboard.png"
RUN = 314
EVENTS_PER_LS = 600
CLEAN_LS = 5  # 3 build the running reference, 2 are compared clean
FAULT = EnergyScale(shift=0.35)
# The default menu's 10 kHz .. 400 Hz seeds fire nothing in a few thousand events: this one is
# scaled to the sample (pass fractions 5 % .. 0.25 %) so every lumisection has counts.
MENU = Menu(
    (
        Seed("AD_Loose", "ad", target_rate_hz=2e6),
        Seed("AD_Nominal", "ad", target_rate_hz=4e5),
        Seed("AD_Tight", "ad", target_rate_hz=1e5),
        Seed("Classifier", "classifier", target_rate_hz=4e5),
        Seed("ZeroBias", "", prescale=100),
    )
)


class LiveRun:
    """A run fed lumisection by lumisection by the test; status and DQM view read by the server."""

    def __init__(self, events_path: Path, ad_ir: Path, classifier_ir: Path):
        ev = read_events(events_path)
        self.objects_hw = ev.objects_hw
        self.backends = {"ad": EmulatorBackend(ad_ir), "classifier": EmulatorBackend(classifier_ir)}
        self.menu = MENU.calibrate(self.scores(ev.inputs))
        self.dqm = DQMMonitor(seed_names=self.menu.names, run=RUN)
        self.rng = np.random.default_rng(2026)
        self.lock = threading.Lock()
        self.state = "configured"
        self.ls = -1
        self.n_processed = 0
        self.accepted = 0
        self.counts = np.zeros(len(self.menu.seeds), np.int64)
        self.rates: dict[str, float] = {}
        self.fault: EnergyScale | None = None
        self.view: dict | None = None

    def scores(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Real-valued scores of every model of the run."""
        out = {}
        for name, b in self.backends.items():
            _, y = b.infer_float(inputs)
            out[name] = y[:, 0]
        return out

    def status(self) -> dict:
        """What run control reports: state and run, the pipeline's counters while running."""
        with self.lock:
            doc = {"state": self.state, "run": RUN, "error": None}
            if self.state == "running":
                doc["pipeline"] = {
                    "events_in": self.n_processed,
                    "events_processed": self.n_processed,
                    "events_accepted": int(self.accepted),
                    "lumisection": self.ls,
                    "seeds": {
                        s: {"count": int(c), "rate_hz": self.rates.get(s, 0.0)}
                        for s, c in zip(self.menu.names, self.counts, strict=True)
                    },
                    "rejected": {},
                    "lost": 0,
                    "duplicated": 0,
                }
            return doc

    def dqm_view(self) -> dict:
        with self.lock:
            return self.view or {"lumisection": None, "histograms": {}, "alarms": []}

    def advance(self) -> list:
        """Process one lumisection of events (with the fault if injected); return its alarms."""
        idx = self.rng.choice(len(self.objects_hw), EVENTS_PER_LS, replace=False)
        hw = self.objects_hw[idx]  # what the daemon receives: hardware units
        if self.fault is not None:
            hw = inject(self.fault, hw)
        phys = to_physical(hw)
        scores = self.scores(hw.reshape(len(hw), -1))
        seqs = np.arange(self.n_processed, self.n_processed + len(idx), dtype=np.uint64)
        bits = self.menu.decide(scores, seqs)
        fired = (bits[:, None] >> np.arange(len(self.menu.seeds), dtype=np.uint32)) & 1
        ls = self.ls + 1
        self.dqm.fill(ls, phys, scores["ad"], fired.astype(bool), 1e-3)
        alarms = self.dqm.end_lumisection(ls)
        c = seed_counts(bits, len(self.menu.seeds))
        view = dqm_view_of(self.dqm, ls)
        with self.lock:
            self.ls = ls
            self.n_processed += len(idx)
            self.accepted += int(np.count_nonzero(bits))
            self.counts += c
            self.rates = self.menu.rates_hz(self.menu.counts(bits), len(idx))
            self.view = view
        return alarms


def dqm_view_of(dqm: DQMMonitor, ls: int) -> dict:
    """The dashboard's DQM view of lumisection ``ls`` (1D histograms include flow bins)."""
    ref = dqm.reference_counts()
    hists = {}
    for name, h in dqm.lumisection_histograms(ls).items():
        if name == "backend/latency":
            continue
        flow = h.ndim == 1 and h.axes[0].traits.underflow
        edges = [ax.edges for ax in h.axes] if h.ndim == 2 else h.axes[0].edges
        hists[name] = {
            "edges": edges,
            "values": h.values(flow=flow),
            "reference": ref.get(name),
            "xlabel": h.axes[0].label,
        }
    return {
        "run": dqm.run,
        "lumisection": ls,
        "histograms": hists,
        "alarms": [a.to_dict() for a in dqm.alarms],
        "seed_rates": dqm.seed_rates(),
    }


@pytest.fixture(scope="module")
def live(events_h5, tiny_ir_path, tiny_classifier_ir_path):
    run = LiveRun(events_h5.parent / "minbias.h5", tiny_ir_path, tiny_classifier_ir_path)
    metrics = make_metrics()
    with WebServer(registry=metrics.registry, status=run.status, dqm_view=run.dqm_view) as web:
        yield run, web


def _shown(page, selector: str, attr: str = "data-value") -> str | None:
    q = f"document.querySelector({selector!r})"
    return page.evaluate(f"{q} ? {q}.getAttribute({attr!r}) : null")


def test_dashboard_follows_a_run_and_shows_the_fault_alarm(live, tmp_path):
    run, web = live
    with Browser(executable=find_chromium(), log_path=tmp_path / "chromium.log") as browser:
        page = browser.new_page(web.url)
        page.wait_for("window.dashboard && window.dashboard.updates >= 1")
        assert page.evaluate("document.getElementById('run-number').textContent") == str(RUN)
        assert page.evaluate("document.getElementById('run-state').textContent") == "configured"

        run.state = "running"
        seen_rates = []
        for _ in range(CLEAN_LS):
            alarms = run.advance()
            assert not [a for a in alarms if a.severity == "error"], alarms
            st = run.status()["pipeline"]
            # The page follows without a reload: the processed count and every seed's numbers.
            page.wait_for(
                "document.getElementById('v-events_processed')?.getAttribute('data-value') === "
                f"'{st['events_processed']}'"
            )
            for name, seed in st["seeds"].items():
                row = f'#seed-table tr[data-seed="{name}"]'
                assert int(_shown(page, row + " td.count")) == seed["count"]
                assert float(_shown(page, row + " td.rate")) == seed["rate_hz"]
            seen_rates.append(float(_shown(page, '#seed-table tr[data-seed="AD_Loose"] td.rate')))
        assert page.evaluate("document.getElementById('run-state').textContent") == "running"
        assert len(set(seen_rates)) > 1  # the rates move from lumisection to lumisection
        assert page.evaluate("document.querySelectorAll('#alarm-table tr.sev-error').length") == 0
        # Rate history is drawn: one line per seed in the rate plot.
        n_lines = page.evaluate("document.querySelectorAll('#rate-plot path[data-series]').length")
        assert n_lines == len(run.menu.seeds)

        run.fault = FAULT
        fault_ls = run.ls + 1
        alarms = run.advance()
        errors = [a for a in alarms if a.severity == "error"]
        assert errors, "the energy-scale fault raised no DQM error"
        page.wait_for(
            f"document.querySelector('#alarm-table tr.sev-error[data-lumisection=\"{fault_ls}\"]')"
        )
        shown = page.evaluate(
            "[...document.querySelectorAll('#alarm-table tr.sev-error')]"
            ".map(r => r.getAttribute('data-histogram'))"
        )
        assert {a.histogram for a in errors} <= set(shown)
        flag = page.evaluate(
            "(() => { const f = document.getElementById('alarm-flag');"
            " return getComputedStyle(f).display !== 'none' ? f.textContent : ''; })()"
        )
        assert flag == f"ALARM LS {fault_ls}"
        # The alarmed histograms lead the grid, framed, with this lumisection and its reference.
        first = page.evaluate("document.querySelector('#hist-grid .hist').className")
        assert "alarm-error" in first
        assert page.evaluate("document.querySelectorAll('#hist-grid .hist .ref-steps').length") > 10
        assert page.exceptions() == []

        png = page.screenshot(tmp_path / "dashboard.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, ARTIFACT)


def test_dashboard_without_dqm_and_with_a_failed_run(tmp_path):
    """A run without DQM and a run-control error: the page says so instead of breaking."""
    status = {"state": "error", "run": 9, "error": "storage: disk full at /data (0 MB free)"}
    with (
        WebServer(registry=make_metrics().registry, status=lambda: status) as web,
        Browser(log_path=tmp_path / "chromium.log") as browser,
    ):
        page = browser.new_page(web.url)
        page.wait_for("window.dashboard && window.dashboard.updates >= 2")
        assert page.evaluate("document.getElementById('run-state').textContent") == "error"
        assert "disk full" in page.evaluate("document.getElementById('run-error').textContent")
        assert "no DQM" in page.evaluate("document.getElementById('hist-grid').textContent")
        assert "no DQM" in page.evaluate("document.getElementById('alarm-table').textContent")
        assert page.exceptions() == []
