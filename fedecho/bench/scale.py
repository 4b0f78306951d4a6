"""Benchmark 6: 10, 30 and 100 simulated sites on one machine — round time, peak memory, and a
least-squares line of round time against the number of sites.

Setting: ResNet-18 LoRA view classification at 32 px, one local step per site per round, 5
synthetic patients per site (at least 30), Ray with every usable core, 1 CPU per site, at least
half of the sites needed per round. Peak memory is the resident memory of this process and all
its descendants (Ray workers), sampled every 0.5 s.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Self

from fedecho.bench.common import BenchOptions, Goal, Row, summarize, usable_cores

__all__ = ["LINEAR_GOAL", "PeakMemory", "linear_fit", "run"]

#: "Round time should grow linearly with sites": R^2 of the straight-line fit.
LINEAR_GOAL = Goal(">=", 0.95)


class PeakMemory:
    """Context manager: peak resident memory (bytes) of this process and all its descendants."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.peak = 0
        self._every = every
        self._stop = threading.Event()
        self._root = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares ``y = slope * x + intercept`` and its coefficient of determination R^2."""
    import numpy as np

    if len(x) < 2 or len(x) != len(y):
        raise ValueError(f"linear_fit needs >= 2 paired points, got {len(x)} x and {len(y)} y")
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    predicted = slope * np.asarray(x, float) + intercept
    residual = float(np.sum((np.asarray(y, float) - predicted) ** 2))
    total = float(np.sum((np.asarray(y, float) - np.mean(y)) ** 2))
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1.0 - residual / total if total else 1.0}


def run(options: BenchOptions) -> list[Row]:
    from fedecho.federation.simulation import simulate

    sites_list, rounds = ((2, 3), 1) if options.quick else ((10, 30, 100), options.repetitions(2))
    cores = usable_cores()
    rows, medians = [], []
    for sites in sites_list:
        with tempfile.TemporaryDirectory(prefix="fedecho-bench-") as tmp:
            overrides = [f"data.synthetic_patients={max(5 * sites, 30)}", "data.synthetic_image_size=48",
                         "model.image_size=32", "task.image_size=[32,32]", "train.batch_size=4", "encoder=lora",
                         "task=view", f"federation.num_sites={sites}", "federation.tasks=[view]",
                         f"federation.adapt.rounds={rounds}", "federation.adapt.local_steps=1",
                         "federation.central_eval=false", "federation.strategy.fraction_evaluate=0",
                         f"federation.strategy.min_sites={max(1, sites // 2)}", "data.partition.min_patients=1",
                         f"data.root={tmp}/data", f"federation.run_dir={tmp}/run"]
            with PeakMemory() as memory:
                result = simulate("federated", overrides, total_cpus=cores)
            history = json.loads(Path(f"{tmp}/run/history.json").read_text())
        adapt = [r for r in history if r["phase"].startswith("adapt")]
        summary = summarize([r["seconds"] for r in adapt])
        medians.append(summary.median)
        completed = [len(r["sites_train"]) for r in adapt]
        rows.append(Row(f"{sites} sites", "round time", "s", summary,
                        details={"sites_returned": completed, "run_s": round(result["seconds"], 1)},
                        note=f"{completed} sites returned per round; whole run {result['seconds']:.0f} s"))
        rows.append(Row(f"{sites} sites", "peak RSS, all processes", "GiB", summarize([memory.peak / 2**30])))
    fit = linear_fit([float(s) for s in sites_list], medians)
    rows.append(Row(f"{', '.join(map(str, sites_list))} sites", "R² of round time = a·sites + b", "R²",
                    summarize([fit["r2"]]), LINEAR_GOAL, details=fit,
                    note=f"a = {fit['slope']:.3f} s per site, b = {fit['intercept']:.2f} s"))
    return rows
