"""The DQM service: it follows the monitoring tap, fills the monitor per lumisection, counts
what it refuses, and names an endpoint it cannot subscribe to."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import uproot
import zmq

from l1forge.online.datapath.wire import ResultBatch, encode_results
from l1forge.online.dqm.service import DQMService, DQMServiceError, seed_matrix

from .samples import PER_LS, SEEDS, bootstrap


def test_seed_matrix():
    bits = np.array([0, 1, 5, 0xFFFFFFFF], np.uint32)
    np.testing.assert_array_equal(
        seed_matrix(bits, 3),
        [[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]],
    )


def _result(run, ls, first_seq, hw, stream):
    s, bits = stream.results(hw)
    packed = (bits.astype(np.uint32) << np.arange(bits.shape[1], dtype=np.uint32)).sum(axis=1)
    n = len(hw)
    return ResultBatch(
        run=run,
        first_seq=first_seq,
        lumisection=ls,
        event=np.arange(first_seq, first_seq + n, dtype=np.uint64),
        scores=s[:, None].astype(np.float64),
        seed_bits=packed.astype(np.uint32),
        objects_hw=hw.astype(np.int32),
        accepted_index=np.arange(n, dtype=np.uint32),
        latency_s=1e-3,
        worker="w0",
    )


def _wait(predicate, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_service_fills_per_lumisection_from_the_tap(
    tmp_path, clean_hw, stream, zmq_ctx, running_dqm
):
    pub = zmq_ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    svc = running_dqm(
        f"tcp://127.0.0.1:{port}",
        run=7,
        out_dir=tmp_path,
        seed_names=SEEDS,
        score_names=("ad",),
        lag_lumisections=1,
        context=zmq_ctx,
    )
    draw = bootstrap(clean_hw, 8)
    probe = _result(7, 0, 0, clean_hw[:50], stream)
    # PUB drops messages until the subscription arrives: send the probe until one is seen
    assert _wait(
        lambda: pub.send_multipart([b"mon", *encode_results(probe)]) or svc.counts().batches
    )
    seq = 1000
    for ls in range(6):
        hw = draw(ls)
        for i in range(0, PER_LS, 1000):
            r = _result(7, ls, seq, hw[i : i + 1000], stream)
            pub.send_multipart([b"mon", *encode_results(r)])
            seq += 1000
    pub.send_multipart([b"mon", b"garbage", b"x"])
    other_run = _result(8, 5, seq, clean_hw[:10], stream)
    pub.send_multipart([b"mon", *encode_results(other_run)])
    accepted_only = replace(
        _result(7, 5, seq + 10, clean_hw[:10], stream),
        objects_hw=clean_hw[:2].astype(np.int32),
        accepted_index=np.arange(2, dtype=np.uint32),
    )
    pub.send_multipart([b"mon", *encode_results(accepted_only)])
    assert _wait(lambda: sum(svc.counts().rejected.values()) >= 3)
    c = svc.counts()
    assert c.rejected.get("run") == 1 and c.rejected.get("not_all_events") == 1
    # the tap is at LS 5: with a lag of 1, LS 0..3 are ended
    assert c.lumisections_ended == 4
    late = _result(7, 1, seq + 100, clean_hw[:10], stream)
    pub.send_multipart([b"mon", *encode_results(late)])
    assert _wait(lambda: svc.counts().late_batches == 1)
    view = svc.view()
    json.dumps(view)  # JSON-ready
    assert view["run"] == 7 and view["lumisection"] == 3 and view["open_lumisections"] == [4, 5]
    assert view["n_events"] == PER_LS
    h = view["histograms"]["jet/pt"]
    assert len(h["values"]) == len(h["edges"]) - 1 == len(h["reference"])
    occ = view["histograms"]["jet/occupancy"]
    assert len(occ["edges"]) == 2 and np.shape(occ["values"]) == np.shape(occ["reference"])
    assert sorted(view["seed_rates"]) == ["0", "1", "2", "3"]
    hz = view["seed_rates_hz"]["3"]["AD_Loose"]
    assert hz == pytest.approx(view["seed_rates"]["3"]["AD_Loose"] * 40e6)
    filled = svc.counts().events
    result = svc.stop()
    assert result.n_lumisections == 6
    summary = json.loads(result.summary_path.read_text())
    # one or more 50-event probes went into LS 0
    assert summary["run"] == 7 and summary["n_events"] == filled
    assert (filled - 6 * PER_LS) % 50 == 0 and filled > 6 * PER_LS
    assert summary["n_errors"] == 0
    with uproot.open(result.root_path) as f:
        assert f["events"].values().sum() == filled


def test_service_names_a_bad_endpoint(tmp_path, zmq_ctx):
    with pytest.raises(DQMServiceError, match="cannot subscribe to nonsense://x"):
        DQMService("nonsense://x", run=1, out_dir=tmp_path, context=zmq_ctx).start()
