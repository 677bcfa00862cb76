"""Pattern files: written from the emulator, replayed through the trigger wrapper on Icarus and
Verilator, captured and compared; refused when their width, IR or length is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from l1forge.cli import main
from l1forge.fileio import sha256_file
from l1forge.firmware import packing, patterns
from l1forge.firmware.sim import run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.sim.dataset import EventSet, write_events

from .benches import LATENCY

N_VECTORS = 300


@pytest.fixture(scope="module")
def written(bench_net, firmware_dir, tmp_path_factory):
    """Input and expected patterns of the bench net's corners plus random vectors."""
    d = tmp_path_factory.mktemp("patterns")
    ir = qnet.save(bench_net, d / "bench.qnet.json")
    x = bench_vectors(bench_net, N_VECTORS, seed=31)
    spec = packing.load(firmware_dir / "packing.json")
    paths = patterns.write_patterns(ir, x, d / "pat", spec, source="bench_vectors seed 31")
    return {"ir": ir, "x": x, "spec": spec, **paths}


def test_expected_pattern_holds_the_emulator_outputs(written, bench_net):
    exp = patterns.read_pattern(written["expected"], "output")
    inp = patterns.read_pattern(written["input"], "input")
    assert exp.header["qnet_sha256"] == sha256_file(written["ir"])
    assert inp.bus_bits == written["spec"].input.bits and exp.valid.all()
    y = Emulator(bench_net).run(written["x"])
    assert exp.valid_words() == patterns.words_of(y, written["spec"].output)
    n_bytes = -(-inp.bus_bits // 8)
    x_back = packing.unpack(packing.from_ints(inp.valid_words(), n_bytes), written["spec"].input)
    np.testing.assert_array_equal(x_back, written["x"])


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_pattern_round_trip_through_the_trigger_wrapper(
    simulator, written, sim_builds, tmp_path, capsys
):
    captured = tmp_path / "captured.pattern"
    env = {
        "L1F_PATTERN_IN": str(written["input"]),
        "L1F_PATTERN_OUT": str(captured),
        "L1F_LATENCY": str(LATENCY),
    }
    run_bench(sim_builds(simulator, "trigger"), "l1forge.firmware.bench_pattern", env, tmp_path)
    cap = patterns.read_pattern(captured, "output")
    n = len(written["x"])
    assert len(cap.words) == n + LATENCY and int(cap.valid.sum()) == n
    assert not cap.valid[: LATENCY - 1].any()  # fixed latency: nothing before the pipeline fills
    cmp = ["firmware", "patterns", "compare", str(captured)]
    assert main([*cmp, "--expected", str(written["expected"])]) == 0
    assert main([*cmp, "--inputs", str(written["input"]), "--qnet", str(written["ir"])]) == 0
    summaries = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert all(s["ok"] and s["n_captured"] == n for s in summaries)


def _capture(written, path, corrupt: int | None = None, idle: int = 3):
    """A board-like capture: idle clocks first, then the expected words (one corrupted)."""
    exp = patterns.read_pattern(written["expected"], "output")
    words = list(exp.words)
    if corrupt is not None:
        words[corrupt] ^= 1 << (written["spec"].output.bits - 1)  # the score's top bit
    valid = np.r_[np.zeros(idle, bool), np.ones(len(words), bool)]
    keep = ("network", "qnet_sha256", "packing", "packing_sha256")
    header = {k: exp.header[k] for k in keep}
    return patterns.write_pattern(
        path, "output", valid, [0] * idle + words, written["spec"].output, header
    )


def test_compare_names_the_first_differing_event(written, tmp_path, capsys):
    bad = _capture(written, tmp_path / "cap.pattern", corrupt=17)
    argv = ["firmware", "patterns", "compare", str(bad), "--expected", str(written["expected"])]
    assert main(argv) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["n_differing"] == 1
    n_header = sum(1 for t in bad.read_text().splitlines() if t.startswith("#"))
    line = n_header + 3 + 17 + 1  # after the header and 3 idle clocks, 1-based
    assert f"event 17 (line {line} of cap.pattern): score[0]=" in out.err


def _event_file(path, obj: np.ndarray, run: int):
    """An event file of minimum-bias events whose objects (hardware units) are `obj`."""
    n = len(obj)
    ev = EventSet(
        obj.astype(np.float32),
        obj,
        np.full(n, run, np.uint64),
        np.arange(n, dtype=np.uint64),
        np.zeros(n, np.int16),
        np.ones(n, np.float32),
        ("minbias",),
    )
    return write_events(path, ev)


def _bad_case(written, tmp_path, case):
    cap = _capture(written, tmp_path / "cap.pattern")
    cmp = ["firmware", "patterns", "compare", str(cap)]
    if case == "wrong width":
        text = cap.read_text().splitlines()
        text[-1] = text[-1] + "0"
        cap.write_text("\n".join(text) + "\n")
        return [*cmp, "--expected", str(written["expected"])], "wrong bus width"
    if case == "wrong sha256":
        other = qnet.save(random_mlp(16, (8,), 3, score=True, seed=6), tmp_path / "o.qnet.json")
        return [*cmp, "--inputs", str(written["input"]), "--qnet", str(other)], "different network"
    if case == "truncated":
        text = cap.read_text().splitlines()
        cap.write_text("\n".join(text[:-5]) + "\n")
        return [*cmp, "--expected", str(written["expected"])], "(truncated?)"
    if case == "events of another width":
        rng = np.random.default_rng(0)
        obj = rng.integers(0, 100, (20, 19, 3)).astype(np.int32)
        events = _event_file(tmp_path / "ev.h5", obj, run=0)
        argv = ["firmware", "patterns", "write", "--qnet", str(written["ir"])]
        return [*argv, "--events", str(events), "--out", str(tmp_path / "p")], "16 inputs"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["wrong width", "wrong sha256", "truncated", "events of another width"]
)
def test_bad_pattern_input_is_one_line_and_exit_2(written, tmp_path, capsys, case):
    argv, needle = _bad_case(written, tmp_path, case)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l1forge: error:") and needle in err and len(err.splitlines()) == 1


def test_write_from_an_event_file(tmp_path, capsys):
    ir = qnet.save(random_mlp(57, (8,), 2, score=True, seed=8, name="enc57"), tmp_path / "e.json")
    rng = np.random.default_rng(1)
    obj = rng.integers(-200, 800, (64, 19, 3)).astype(np.int32)
    events = _event_file(tmp_path / "ev.h5", obj, run=1)
    out = tmp_path / "pat"
    argv = ["firmware", "patterns", "write", "--qnet", str(ir), "--events", str(events)]
    assert main([*argv, "--n", "40", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 40
    inp = patterns.read_pattern(out / "input.pattern", "input")
    assert len(inp.words) == 40 and "ev.h5 rows 0..39" in inp.header["source"]
    exp = out / "expected.pattern"
    assert (
        main(
            [
                "firmware",
                "patterns",
                "compare",
                str(exp),
                "--inputs",
                str(out / "input.pattern"),
                "--qnet",
                str(ir),
            ]
        )
        == 0
    )
