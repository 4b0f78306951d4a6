"""Benchmark 1: a simulated federation (K sites, Flower on Ray) vs pooled training of about the
same total optimiser steps, and where the federation's extra time goes.

Setting: ResNet-18 LoRA, LV segmentation at 64 px on 30 synthetic CAMUS patients, batch 16.
Pooled: ``train_local`` (one process, ``train.threads`` = the harness's threads, validation once,
test at the end). Federated: ``simulate`` with K sites, 1 CPU each on Ray, R rounds of L local
steps (L chosen so that R·K·L is close to the pooled step count), final test evaluation, no
per-round evaluation. The row is the wall-time ratio per optimiser step (the two counts differ
by the rounding of L; both are in the details). Repetitions alternate the two sides.

Breakdown of the federated wall time (details):

- ``ray_start_s``: ``ray.init`` + ``ray.shutdown`` alone, measured once beside the runs;
- ``outside_rounds_s``: wall time outside the adapt rounds (Ray and app start-up, data generation
  and scan, encoder hand-out, final evaluation);
- ``site_setup_s``: per-site set-up inside round 1 (learner, loaders), estimated as the site's
  round-1 time minus its median later-round time, summed over sites;
- ``site_training_s``: site time in later rounds (training), summed over sites;
- ``serialisation_s``: ArrayRecord encode + decode of the adapter state, both ways, for every site
  and round (measured in-process on the same tensors);
- ``idle_s``: round wall time x min(K, cores) minus all site time: cores waiting for stragglers
  and the coordinator.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedecho.bench.common import BenchOptions, Goal, Row, summarize, timed, usable_cores

__all__ = ["FEDERATION_GOAL", "federated_breakdown", "run"]

FEDERATION_GOAL = Goal("<=", 1.10)


def _serialisation_seconds(cfg: Any) -> float:
    """Seconds for one encode + decode round trip of the adapter phase's shared state."""
    from fedecho.engine.build import build_task_learner
    from fedecho.federation.arrays import to_arrayrecord, torch_dict

    state = build_task_learner(cfg).shared_state_dict()
    return statistics.median(timed(lambda: torch_dict(to_arrayrecord(state))) for _ in range(5))


def _ray_start_seconds(cpus: int) -> float:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - start


def federated_breakdown(history: list[dict], total_s: float, sites: int, cores: int,
                        round_trip_s: float) -> dict[str, float]:
    """Where a federated run's wall time went, from its ``history.json`` rows (see module doc)."""
    rounds = [r for r in history if r["phase"].startswith("adapt")]
    per_site: dict[str, list[float]] = {}
    for record in rounds:
        for site, metrics in record["sites_train"].items():
            per_site.setdefault(site, []).append(float(metrics.get("seconds", 0.0)))
    setup = sum(max(0.0, s[0] - statistics.median(s[1:])) for s in per_site.values() if len(s) > 1)
    site_total = sum(sum(s) for s in per_site.values())
    rounds_wall = sum(r["seconds"] for r in rounds)
    return {"total_s": total_s, "rounds_wall_s": rounds_wall, "outside_rounds_s": total_s - rounds_wall,
            "site_setup_s": setup, "site_training_s": site_total - setup,
            "serialisation_s": 2 * round_trip_s * sites * len(rounds),
            "idle_s": max(0.0, rounds_wall * min(sites, cores) - site_total)}


def run(options: BenchOptions) -> list[Row]:
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.data import load_site
    from fedecho.engine.local import train_local
    from fedecho.federation.simulation import simulate

    if options.quick:
        sites_list, rounds, epochs, patients, size = (2,), 1, 1, 8, 32
    else:
        sites_list, rounds, epochs, patients, size = (3, 10), 3, 3, 30, 64
    reps = options.repetitions(1, quick=1)
    cores = usable_cores()
    ray_start = _ray_start_seconds(cores)
    rows = []
    for sites in sites_list:
        with tempfile.TemporaryDirectory(prefix="fedecho-bench-") as tmp:
            base = [f"data.synthetic_patients={patients}", f"data.synthetic_image_size={max(size, 64)}",
                    f"model.image_size={size}", f"task.image_size=[{size},{size}]", "train.batch_size=16",
                    "encoder=lora", "task=lv_seg", f"data.root={tmp}/data"]
            cfg = compose_run_config(base)
            n_train = len(load_site(cfg.data).train)  # also generates the data, outside the timing
            pooled_steps = epochs * math.ceil(n_train / cfg.train.batch_size)
            local_steps = max(1, round(pooled_steps / (rounds * sites)))
            fed_steps = local_steps * rounds * sites
            round_trip = _serialisation_seconds(cfg)
            pooled_s, fed_s, breakdowns = [], [], []
            for rep in range(reps):
                def pooled(base: list[str] = base, rep: int = rep) -> None:
                    train_local(compose_run_config([*base, f"train.epochs={epochs}", f"train.eval_every={epochs}",
                                                    f"train.threads={options.threads}",
                                                    f"train.out_dir={tmp}/pooled{rep}", "train.progress=false"]))

                def federated(base: list[str] = base, rep: int = rep, sites: int = sites,
                              local_steps: int = local_steps) -> dict:
                    return simulate("federated", [
                        *base, f"federation.num_sites={sites}", "federation.tasks=[lv_seg]",
                        f"federation.adapt.rounds={rounds}", f"federation.adapt.local_steps={local_steps}",
                        "federation.central_eval=false", "federation.strategy.fraction_evaluate=0",
                        f"federation.run_dir={tmp}/fed{rep}"], total_cpus=cores)

                order = ("pooled", "federated") if rep % 2 == 0 else ("federated", "pooled")
                for side in order:
                    if side == "pooled":
                        pooled_s.append(timed(pooled))
                    else:
                        result = federated()
                        fed_s.append(result["seconds"])
                        history = json.loads(Path(f"{tmp}/fed{rep}/history.json").read_text())
                        breakdowns.append(federated_breakdown(history, result["seconds"], sites, cores, round_trip))
            ratios = [(f / fed_steps) / (p / pooled_steps) for f, p in zip(fed_s, pooled_s, strict=True)]
            last = {k: round(v, 2) for k, v in breakdowns[-1].items()}
            rows.append(Row(
                f"K={sites}, {rounds} rounds x {local_steps} local steps", "federated / pooled wall per step", "ratio",
                summarize(ratios), FEDERATION_GOAL,
                details={"pooled_s": summarize(pooled_s).as_dict(), "federated_s": summarize(fed_s).as_dict(),
                         "pooled_steps": pooled_steps, "federated_steps": fed_steps, "ray_start_s": round(ray_start, 2),
                         "breakdown": last, "threads_pooled": options.threads, "cpus_federated": cores},
                note=(f"pooled {statistics.median(pooled_s):.1f} s / {pooled_steps} steps, federated "
                      f"{statistics.median(fed_s):.1f} s / {fed_steps} steps; federated time: outside rounds "
                      f"{last['outside_rounds_s']} s (Ray start alone {ray_start:.1f} s), site set-up "
                      f"{last['site_setup_s']} s, site training {last['site_training_s']} s, serialisation "
                      f"{last['serialisation_s']} s, idle cores {last['idle_s']} s (site times summed)")))
    os.environ.pop("RAY_ADDRESS", None)
    return rows
