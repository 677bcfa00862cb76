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

from l1forge.online.config import run_config_from_dict
from l1forge.online.datapath.backends import EmulatorBackend
from l1forge.online.datapath.menu import Menu, Seed, seed_counts
from l1forge.online.datapath.wire import ResultBatch, encode_results
from l1forge.online.dqm.service import DQMService
from l1forge.online.web.metrics import make_metrics
from l1forge.online.web.server import WebServer
from l1forge.sim.dataset import concat_events, read_events, write_events
from l1forge.sim.faults import EnergyScale, inject

from .browser import Browser, BrowserError, find_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed"),
]

ARTIFACT = Path(__file__).resolve().parents[2] / "out" / "test-artifacts" / "dashboard.png"
RUN = 314
EVENTS_PER_LS = 600
CLEAN_LS = 6  # 3 build the running reference, the next are compared clean
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
    """A run the test advances one lumisection at a time.

    Each lumisection's events are scored by the emulator, decided by the menu, and sent as the
    collector's monitoring tap sends them (a ``ResultBatch`` through the wire format) to a real
    ``DQMService``. ``status`` reports what run control reports while the pipeline runs.
    """

    def __init__(self, events_path: Path, ad_ir: Path, classifier_ir: Path, out_dir: Path):
        ev = read_events(events_path)
        self.objects_hw = ev.objects_hw
        self.backends = {"ad": EmulatorBackend(ad_ir), "classifier": EmulatorBackend(classifier_ir)}
        self.menu = MENU.calibrate(self.scores(ev.inputs))
        # Not started: the test hands it the tap's messages itself (no subscriber socket).
        self.dqm = DQMService(
            "tcp://127.0.0.1:0",
            run=RUN,
            out_dir=out_dir,
            seed_names=self.menu.names,
            score_names=tuple(self.backends),
            lag_lumisections=0,
        )
        self.metrics = make_metrics()
        self.rng = np.random.default_rng(2026)
        self.lock = threading.Lock()
        self.state = "configured"
        self.ls = -1
        self.n_processed = 0
        self.accepted = 0
        self.counts = np.zeros(len(self.menu.seeds), np.int64)
        self.fault: EnergyScale | None = None

    def scores(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Real-valued scores of every model of the run."""
        return {name: b.infer_float(inputs)[1][:, 0] for name, b in self.backends.items()}

    def status(self) -> dict:
        """Run control's status: state and run, with the pipeline's counters while running."""
        with self.lock:
            doc = {"state": self.state, "run": RUN, "error": None}
            if self.state == "running":
                counts = dict(zip(self.menu.names, self.counts.tolist(), strict=True))
                doc["pipeline"] = {
                    "state": "running",
                    "events_in": self.n_processed,
                    "events_processed": self.n_processed,
                    "events_accepted": self.accepted,
                    "seed_counts": counts,
                    "seed_rates_hz": self.menu.rates_hz(counts, self.n_processed),
                    "rejected": {},
                    "in_flight_batches": 0,
                    "workers_alive": len(self.backends),
                    "latency_ms": {"p50": 1.0, "p99": 2.0},
                }
            return doc

    def advance(self) -> None:
        """One lumisection of events (with the fault if injected) through menu and DQM."""
        idx = self.rng.choice(len(self.objects_hw), EVENTS_PER_LS, replace=False)
        hw = self.objects_hw[idx]  # what the daemon receives: hardware units
        if self.fault is not None:
            hw = inject(self.fault, hw)
        scores = self.scores(hw.reshape(len(hw), -1))
        first = self.n_processed
        seqs = np.arange(first, first + len(idx), dtype=np.uint64)
        bits = self.menu.decide(scores, seqs)
        tap = ResultBatch(
            run=RUN,
            first_seq=first,
            lumisection=self.ls + 1,
            event=seqs,
            scores=np.stack([scores[m] for m in self.backends], axis=1),
            seed_bits=bits,
            objects_hw=hw.astype(np.int32),
            accepted_index=np.arange(len(hw), dtype=np.uint32),
            latency_s=1e-3,
            worker="test",
        )
        self.dqm.handle(encode_results(tap))
        m = self.metrics
        m.events_in.inc(len(idx))
        m.events_processed.inc(len(idx))
        m.events_accepted.inc(int(np.count_nonzero(bits)))
        with self.lock:
            self.ls += 1
            self.n_processed += len(idx)
            self.accepted += int(np.count_nonzero(bits))
            self.counts += seed_counts(bits, len(self.menu.seeds))

    def alarms(self, ls: int) -> list:
        """The DQM alarms of lumisection ``ls`` (once it has ended)."""
        return [a for a in self.dqm.monitor.alarms if a.lumisection == ls]


@pytest.fixture(scope="module")
def live(events_h5, tiny_ir_path, tiny_classifier_ir_path, tmp_path_factory):
    run = LiveRun(
        events_h5.parent / "minbias.h5",
        tiny_ir_path,
        tiny_classifier_ir_path,
        tmp_path_factory.mktemp("dqm"),
    )
    with WebServer(registry=run.metrics.registry, status=run.status, dqm_view=run.dqm.view) as web:
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
            run.advance()
            st = run.status()["pipeline"]
            # The page follows without a reload: the processed count and every seed's numbers.
            page.wait_for(
                "document.getElementById('v-events_processed')?.getAttribute('data-value') === "
                f"'{st['events_processed']}'"
            )
            for name, count in st["seed_counts"].items():
                row = f'#seed-table tr[data-seed="{name}"]'
                assert int(_shown(page, row + " td.count")) == count
                assert float(_shown(page, row + " td.rate")) == st["seed_rates_hz"][name]
            seen_rates.append(float(_shown(page, '#seed-table tr[data-seed="AD_Loose"] td.rate')))
        assert page.evaluate("document.getElementById('run-state').textContent") == "running"
        assert len(set(seen_rates)) > 1  # the rates move as the run goes
        assert not [a for a in run.dqm.monitor.alarms if a.severity == "error"]
        assert page.evaluate("document.querySelectorAll('#alarm-table tr.sev-error').length") == 0
        # Rate history is drawn, in time and per lumisection: every seed in the legend, and
        # a line for each (a seed whose rate was always 0 has none on a log scale).
        for plot in ("rate-plot", "ls-rate-plot"):
            legend = f"#{plot} text.legend"
            names = f"[...document.querySelectorAll('{legend}')].map(t => t.dataset.series)"
            assert page.evaluate(names) == list(run.menu.names), plot
            lines = f"document.querySelectorAll('#{plot} path[data-series]').length"
            assert page.evaluate(lines) >= len(run.menu.seeds) - 1, plot
        # The page's /metrics link serves the same run's counters.
        metrics = page.evaluate("fetch('metrics').then(r => r.text())")
        assert f"l1forge_events_processed_total {float(run.n_processed)}" in metrics

        # The fault stays on from this lumisection; the DQM ends it when the next one arrives.
        run.fault = FAULT
        fault_ls = run.ls + 1
        run.advance()
        run.advance()
        errors = [a for a in run.alarms(fault_ls) if a.severity == "error"]
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
        first = page.evaluate(
            "document.querySelector('#hist-grid .hist').getAttribute('data-name')"
        )
        assert first in {a.histogram for a in errors}
        assert "alarm-error" in page.evaluate(
            "document.querySelector('#hist-grid .hist').className"
        )
        assert page.evaluate("document.querySelectorAll('#hist-grid .hist .ref-steps').length") > 10
        assert page.exceptions() == []

        png = page.screenshot(tmp_path / "dashboard_steps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


# ---- a real run: replay -> dispatcher -> worker processes -> collector -> tap -> DQM service ----
REPLAY_LS = 9  # lumisections in the replay file
REPLAY_FAULT_LS = 6  # the energy-scale fault is on from this lumisection
REPLAY_RATE_HZ = 600.0  # slow enough for the page to poll the run several times
MENU_SEEDS = [
    {"name": s.name, "model": s.model, "target_rate_hz": s.target_rate_hz}
    if s.model
    else {"name": s.name, "model": s.model, "prescale": s.prescale}
    for s in MENU.seeds
]


@pytest.fixture(scope="module")
def faulty_replay(events_h5, tmp_path_factory) -> Path:
    """A replay file: lumisections of resampled minimum-bias events, the last ones faulty."""
    ev = read_events(events_h5.parent / "minbias.h5")
    rng = np.random.default_rng(7)
    parts = [ev.select(rng.choice(len(ev), EVENTS_PER_LS, replace=False)) for _ in range(REPLAY_LS)]
    parts[REPLAY_FAULT_LS:] = [inject(FAULT, p) for p in parts[REPLAY_FAULT_LS:]]
    return write_events(tmp_path_factory.mktemp("replay") / "replay.h5", concat_events(parts))


def test_dashboard_of_a_real_pipeline_run(
    faulty_replay, tiny_ir_path, tiny_classifier_ir_path, tmp_path, running_pipeline, running_dqm
):
    cfg = run_config_from_dict(
        {
            "source": {"kind": "replay", "paths": [str(faulty_replay)], "rate_hz": REPLAY_RATE_HZ},
            "backend": {
                "kind": "emulator",
                "models": {"ad": str(tiny_ir_path), "classifier": str(tiny_classifier_ir_path)},
            },
            "workers": {"n": 2},
            "menu": {"seeds": MENU_SEEDS},
            "storage": {"out_dir": str(tmp_path / "data"), "events_per_lumisection": EVENTS_PER_LS},
            "monitor": {"fraction": 1.0},
            "batch_size": 200,
            "state_dir": str(tmp_path / "state"),
        }
    )
    run = 2718
    metrics = make_metrics()
    pipeline = running_pipeline(cfg, run, tmp_path / "run", start=False, metrics=metrics)
    dqm: DQMService | None = None
    with (
        WebServer(
            registry=metrics.registry, status=pipeline.status, dqm_view=lambda: dqm.view()
        ) as web,
        Browser(log_path=tmp_path / "chromium.log") as browser,
    ):
        pipeline.start()
        dqm = running_dqm(
            pipeline.monitor_endpoint,
            run=run,
            out_dir=tmp_path / "dqm",
            seed_names=pipeline.menu.names,
            score_names=pipeline.model_names,
            input_rate_hz=pipeline.menu.input_rate_hz,
        )
        page = browser.new_page(web.url)
        page.wait_for(f"document.getElementById('run-number').textContent === '{run}'")
        processed = "document.getElementById('v-events_processed')?.getAttribute('data-value')"
        seen = set()
        while not pipeline.wait_source_done(0.25):
            seen.add(page.evaluate(processed))
        seen.discard(None)
        assert len(seen) >= 3, f"the page showed only {sorted(seen)} while the run went"
        assert page.evaluate("document.getElementById('run-state').textContent") == "running"
        summary = pipeline.stop()
        dqm_result = dqm.stop()
        assert summary.lost == summary.duplicated == 0
        assert summary.n_processed == REPLAY_LS * EVENTS_PER_LS
        errors = [a for a in dqm.monitor.alarms if a.severity == "error"]
        assert errors and min(a.lumisection for a in errors) == REPLAY_FAULT_LS
        assert dqm_result.n_errors == len(errors)

        # Once stopped, the page settles on the run's final numbers and its alarms.
        page.wait_for("document.getElementById('run-state').textContent === 'stopped'")
        page.wait_for(f"{processed} === '{summary.n_processed}'")
        final = pipeline.status()
        for name, count in summary.per_seed.items():
            row = f'#seed-table tr[data-seed="{name}"]'
            assert int(_shown(page, row + " td.count")) == count
            assert float(_shown(page, row + " td.rate")) == final["seed_rates_hz"][name]
        page.wait_for(
            "document.querySelector("
            f"'#alarm-table tr.sev-error[data-lumisection=\"{REPLAY_FAULT_LS}\"]')"
        )
        # The page refreshes its alarms on a timer: the first faulty lumisection can be
        # shown before the later ones, so wait until it shows at least as many as were raised.
        page.wait_for(
            f"document.querySelectorAll('#alarm-table tr.sev-error').length >= {len(errors)}"
        )
        shown = page.evaluate(
            "[...document.querySelectorAll('#alarm-table tr.sev-error')]"
            ".map(r => [Number(r.getAttribute('data-lumisection')),"
            " r.getAttribute('data-histogram')])"
        )
        assert sorted(map(tuple, shown)) == sorted((a.lumisection, a.histogram) for a in errors)
        assert page.exceptions() == []
        png = page.screenshot(tmp_path / "dashboard.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, ARTIFACT)


def test_a_browser_that_does_not_start_is_a_clear_error(tmp_path):
    log_path = tmp_path / "not-a-browser.log"
    with pytest.raises(BrowserError, match="closed its DevTools pipe"):
        with Browser(executable="/bin/false", log_path=log_path, timeout_s=10):
            pass
    assert log_path.is_file()
