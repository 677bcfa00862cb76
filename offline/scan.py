"""Budget scans on dask.distributed and the utility/cost/EBOPs Pareto front of their designs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from l1forge.offline.config import StudyConfig

log = logging.getLogger(__name__)


def run_point(config: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """One study at one budget point (runs on a dask worker; plain data in and out)."""
    from l1forge.offline.codesign import run
    from l1forge.offline.config import from_dict

    s = run(from_dict(config), out_dir)
    cost = s["config"]["cost"]
    return {
        "detector_budget_eur": cost["detector_budget_eur"],
        "ebops_budget": cost["ebops_budget"],
        "utility": s["evaluation"]["utility"],
        "cost_eur": s["cost_eur"],
        "ebops": s["ebops"],
        "lut_estimate": s["lut_estimate"],
        "delay_ns": s["delay_ns"],
        "latency_stages": s["latency_stages"],
        "within_budget": s["within_budget"],
        "design": s["design"],
        "out": out_dir,
    }


def pareto_front(points: list[dict[str, Any]]) -> list[int]:
    """Indices of points not dominated in (utility up, cost down, EBOPs down)."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ge = a["utility"] >= b["utility"] and a["cost_eur"] <= b["cost_eur"]
        ge = ge and a["ebops"] <= b["ebops"]
        gt = a["utility"] > b["utility"] or a["cost_eur"] < b["cost_eur"] or a["ebops"] < b["ebops"]
        return ge and gt

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


BINDS_WITHIN = 0.03  # a design within 3 % of its cost budget (or over it) sits at the budget


def at_detector_budget(point: dict[str, Any]) -> bool:
    """True when the point's design costs at least (1 - BINDS_WITHIN) of its detector budget:
    the steep penalty lets a design end a little over its budget, never far under a binding
    one."""
    return point["cost_eur"] >= (1 - BINDS_WITHIN) * point["detector_budget_eur"]


def scan(
    cfg: StudyConfig,
    detector_budgets: list[float],
    ebops_budgets: list[float],
    out_dir: str | Path,
    *,
    scheduler: str | None = None,
    n_workers: int = 2,
    processes: bool = True,
) -> dict[str, Any]:
    """Run the study at every budget pair on a dask cluster; write scan.json and pareto.png.

    ``scheduler``: address of an existing dask scheduler; otherwise a LocalCluster.
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, (b_eur, b_ops) in enumerate(itertools.product(detector_budgets, ebops_budgets)):
        cost = dataclasses.replace(cfg.cost, detector_budget_eur=b_eur, ebops_budget=b_ops)
        jobs.append((dataclasses.asdict(dataclasses.replace(cfg, cost=cost)), str(out / f"p{i}")))
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=None
        )
    with Client(scheduler or cluster) as client:
        futures = [client.submit(run_point, c, d, pure=False) for c, d in jobs]
        results = []
        for fut in tqdm(as_completed(futures), total=len(futures), desc="scan", unit="point"):
            results.append(fut.result())
    if cluster is not None:
        cluster.close()
    results.sort(key=lambda r: r["out"])
    front = pareto_front(results)
    for p in results:
        p["at_detector_budget"] = at_detector_budget(p)
    summary = {
        "points": results,
        "pareto": front,
        "detector_budget_binds": any(results[i]["at_detector_budget"] for i in front),
    }
    (out / "scan.json").write_text(json.dumps(summary, indent=1))
    _plot(results, front, out / "pareto.png")
    return summary


def _plot(points: list[dict[str, Any]], front: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "cost_eur", "detector cost [EUR]"),
                           (axes[1], "lut_estimate", "LUTs (calibrated model)")):  # fmt: skip
        ax.scatter([p[key] for p in points], [p["utility"] for p in points], c="0.6", label="all")
        ax.scatter([points[i][key] for i in front], [points[i]["utility"] for i in front],
                   c="C3", label="Pareto front")  # fmt: skip
        bound = [p for p in points if p["at_detector_budget"]]
        ax.scatter([p[key] for p in bound], [p["utility"] for p in bound], s=120,
                   facecolors="none", edgecolors="k", label="at its detector budget")  # fmt: skip
        for i, p in enumerate(sorted(points, key=lambda q: q[key])):
            text = f"{p['detector_budget_eur']:.0f} EUR, {p['latency_stages']} st"
            # neighbours' labels alternate above and below their points
            ax.annotate(text, (p[key], p["utility"]), fontsize=7,
                        xytext=(3, 4 if i % 2 else -10), textcoords="offset points")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("utility")
    axes[0].legend(fontsize=7)
    title = ("budget scan: designs re-evaluated on the reference simulator "
             "(labels: detector budget, pipeline stages at the study clock)")  # fmt: skip
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
