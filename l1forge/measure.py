"""Small measurement helpers the benchmarks and tests share: a process's resident memory and
the mean and spread of a figure over seeds. Imports nothing of l1forge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS``), 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mean_std(xs: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, count and the values themselves. The spread of a single
    value is None (one seed gives none), and so is everything of no value."""
    vals = [float(x) for x in xs]
    mean = float(np.mean(vals)) if vals else None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}
