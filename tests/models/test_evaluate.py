"""TPR at a fixed FPR is quoted only where the background sample resolves that FPR."""

from __future__ import annotations

import json

import numpy as np
import pytest

from l1forge.models import evaluate


def _scores(n_bg: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, n_bg), {"sig": rng.normal(3, 1, 5000)}


@pytest.mark.parametrize(
    ("n_bg", "resolved"),
    [
        (2_000, {"1e-05": False, "1e-04": False}),  # the demo's test half: 0.02 and 0.2 above
        (100_000, {"1e-05": False, "1e-04": True}),  # 1 and exactly 10 above
        (1_000_000, {"1e-05": True, "1e-04": True}),
    ],
)
def test_unresolvable_fpr_gives_null_and_resolution(tmp_path, n_bg, resolved):
    bg, sig = _scores(n_bg)
    s = evaluate.evaluate_scores(bg, sig, tmp_path, rate_hz=1000.0)
    m = s["signals"]["sig"]
    assert s["smallest_resolvable_fpr"] == pytest.approx(10 / n_bg)
    for key, ok in resolved.items():
        assert s["fpr_points"][key]["resolvable"] is ok
        if ok:
            assert 0.0 <= m[f"tpr_at_fpr_{key}"] <= 1.0
            assert m[f"achieved_fpr_{key}"] <= float(key)
        else:
            assert m[f"tpr_at_fpr_{key}"] is None and m[f"achieved_fpr_{key}"] is None
    # 1 kHz of 40 MHz is an FPR of 2.5e-5: 400,000 background events are needed
    assert s["rate_resolvable"] is (n_bg * 2.5e-5 >= 10)
    assert (m["tpr_at_rate"] is None) is (not s["rate_resolvable"])
    on_disk = json.loads((tmp_path / "score_metrics.json").read_text())
    assert on_disk["signals"]["sig"] == json.loads(json.dumps(m))
    assert (tmp_path / "score_roc.png").is_file()


def test_resolvable_tpr_counts_the_events_above_the_threshold(tmp_path):
    bg = np.arange(200_000, dtype=float)  # exactly 20 events above the 1e-4 cut
    sig = {"sig": np.array([199_979.0, 199_980.0, 0.0, 1e9])}
    m = evaluate.evaluate_scores(bg, sig, tmp_path)["signals"]["sig"]
    assert m["achieved_fpr_1e-04"] == 20 / 200_000
    assert m["tpr_at_fpr_1e-04"] == 0.5  # 199979 is the threshold itself: it does not fire
    assert m["tpr_at_fpr_1e-05"] is None  # 2 events above: unresolved


def test_resolved_tpr_is_none_below_the_sample_resolution():
    bg = np.arange(100_000, dtype=float)
    sig = np.arange(1_000, dtype=float) + 99_990.5  # the 10 highest background events lie above
    # FPR 1e-4 keeps 10 background events above the cut: resolved with 5 or 10 required
    assert evaluate.resolved_tpr(bg, sig, 1e-4, 5) == evaluate.tpr_at_fpr(bg, sig, 1e-4)[0]
    assert evaluate.resolved_tpr(bg, sig, 1e-4, 10) is not None
    # FPR 1e-5 would keep 1 event: no TPR is quoted, whatever the signal does
    assert evaluate.resolved_tpr(bg, sig, 1e-5, 5) is None
    assert evaluate.fpr_resolvable(100_000, 5e-5, 5) and not evaluate.fpr_resolvable(
        99_999, 5e-5, 5
    )
