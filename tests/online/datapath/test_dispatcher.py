"""The dispatcher's choice of the batches published on the monitoring tap."""

from __future__ import annotations

import numpy as np
import pytest

from l1forge.online.datapath.dispatcher import is_sampled
from l1forge.online.datapath.sources import Chunk, Sequencer

EVENTS_PER_LS = 100_000  # the demo's lumisection
N_LUMISECTIONS = 1000
WINDOW = 75  # batches of the demo's online run (300,000 events in 4096-event batches)


def _batches(batch_size: int, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """(first_seq, n_events) of the batches the Sequencer cuts from a run of `n_events`."""
    seq = Sequencer(1, batch_size, EVENTS_PER_LS, max_events=n_events)
    chunk = Chunk(np.zeros(EVENTS_PER_LS, np.uint64), np.zeros((EVENTS_PER_LS, 19, 3), np.int32))
    batches = []
    while not seq.done:
        batches += seq.feed(chunk)
    batches += seq.flush()
    return np.array([b.first_seq for b in batches]), np.array([len(b) for b in batches])


@pytest.mark.parametrize(("batch_size", "fraction"), [(4096, 0.05), (512, 0.2), (1000, 0.05)])
def test_sampled_batches_follow_the_binomial_law_at_any_batch_size(batch_size, fraction):
    """Each batch is taken with probability `fraction`, independently of its neighbours.

    A bare multiplicative hash of first_seq passed the long-run share but not the spread: its
    counts per 75-batch window had a variance of 0.05-0.4 x the binomial one (a lattice), or, at
    4096 events and 5 %, 4.5 x too many windows without a sampled batch; the demo's 75 batches
    got none. The hash is deterministic, so these checks are exact; the tolerances are what a
    fair coin passes: 4 sigma on the share and on the number of empty windows, and the variance
    of the window counts within 35 % of n f (1 - f) (its sampling error over ~330 windows is ~8 %).
    """
    first_seq, size = _batches(batch_size, N_LUMISECTIONS * EVENTS_PER_LS)
    sampled = np.array([is_sampled(int(s), fraction) for s in first_seq])
    n = len(sampled)
    assert abs(sampled.sum() - n * fraction) < 4 * np.sqrt(n * fraction * (1 - fraction))
    share = size[sampled].sum() / size.sum()
    assert abs(share - fraction) < 4 * np.sqrt(fraction * (1 - fraction) * batch_size / size.sum())
    per_window = sampled[: n // WINDOW * WINDOW].reshape(-1, WINDOW).sum(axis=1)
    dispersion = per_window.var() / (WINDOW * fraction * (1 - fraction))
    assert 0.65 < dispersion < 1.35, dispersion
    p_empty = (1 - fraction) ** WINDOW
    n_windows = len(per_window)
    n_empty = int((per_window == 0).sum())
    assert abs(n_empty - n_windows * p_empty) < 4 * np.sqrt(n_windows * p_empty * (1 - p_empty))


def test_sampling_is_off_at_fraction_0_and_takes_every_batch_at_1():
    first_seq, _ = _batches(4096, 300_000)
    assert not any(is_sampled(int(s), 0.0) for s in first_seq)
    assert all(is_sampled(int(s), 1.0) for s in first_seq)
