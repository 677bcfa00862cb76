"""l1forge.measure: resident memory read from /proc and a figure's spread over seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from l1forge.measure import mean_std, rss_mb


def test_rss_of_a_process_grows_with_what_it_holds_and_is_zero_once_it_is_gone():
    code = (
        "import sys, numpy as np; a = np.ones(64 * 2**20 // 8); a[::512] = 2; "
        "print(1, flush=True); sys.stdin.read()"
    )
    small = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(1, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    big = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        for p in (small, big):
            assert p.stdout is not None and p.stdout.readline().strip() == b"1"
        # numpy's import and 64 MiB of touched pages: more than 50 MiB above a bare interpreter
        assert rss_mb(big.pid) > rss_mb(small.pid) + 50 > 50
        assert rss_mb(os.getpid()) > 0
    finally:
        for p in (small, big):
            p.communicate(b"", timeout=30)
    assert rss_mb(big.pid) == 0.0  # reaped: /proc has no such process


def test_mean_std_is_the_sample_spread_and_none_without_one():
    r = mean_std([1.0, 2.0, 4.0])
    assert r["mean"] == np.mean([1, 2, 4]) and r["std"] == np.std([1, 2, 4], ddof=1)
    assert (r["n"], r["values"]) == (3, [1.0, 2.0, 4.0])
    assert mean_std([0.5])["std"] is None and mean_std([0.5])["mean"] == 0.5
    assert mean_std([]) == {"mean": None, "std": None, "n": 0, "values": []}
