"""Flower simulation of a run on this machine: the project's own ServerApp and ClientApp over
``federation.num_sites`` virtual sites (``flwr.simulation.run_simulation``, Ray backend).

A simulation that outgrows one machine runs on a Ray cluster: start ``ray start --head`` on one
machine and ``ray start --address=HEAD:6379`` on the others, then run ``flwr run .`` with a
federation whose ``[superlink.*]`` entry points at a SuperLink started with the Ray backend (see
the README, "Simulation on a Ray cluster"); Flower's Ray backend places the sites on the cluster.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

__all__ = ["simulate"]


def simulate(experiment: str, overrides: list[str], *, cpus_per_site: float = 1.0,
             total_cpus: int | None = None, resume: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run ``experiment`` (a config name in conf/) with Hydra ``overrides`` as a Flower simulation;
    ``resume`` continues the run in ``federation.run_dir`` from its last completed round.

    The terminal shows one line per phase and round and a final table; Flower's and Ray's logs go
    to ``<run_dir>/flower.log`` (``verbose``: to the terminal as well)."""
    import shlex

    from flwr.simulation import run_simulation

    from client.app import build_app as client_app
    from fedecho.config.compose import compose_run_config
    from fedecho.federation import progress
    from server.app import build_app as server_app

    cfg = compose_run_config(overrides, config_name=experiment)  # validate before starting Ray
    run_config = {"experiment": experiment, "overrides": shlex.join(overrides), "resume": resume}
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # Ray starts its workers (the virtual sites) at nice 15: on a shared machine they then starve
    # behind any other process (measured: a CAMUS round took 7.6x its CPU time). Sites are the work.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray starts one ClientApp actor (a process importing torch and the engine) per cpus_per_site of
    # the CPUs it is given: actors beyond the sites only cost start-up, and a site's runtime (data,
    # model) is cached per process, so a spare actor taking the site's next message builds it again.
    cpus = min(total_cpus or os.cpu_count() or 1, math.ceil(cfg.federation.num_sites * cpus_per_site))
    start = time.perf_counter()
    run_dir = os.path.abspath(cfg.federation.run_dir)
    log_path = os.path.join(run_dir, "flower.log")
    progress.emit(f"{experiment}: {cfg.federation.num_sites} simulated sites; Flower's log: {log_path}")
    with progress.quiet_console(log_path, verbose=verbose):
        try:
            run_simulation(
                server_app(run_config), client_app(run_config), num_supernodes=cfg.federation.num_sites,
                backend_config={"client_resources": {"num_cpus": cpus_per_site},
                                "init_args": {"num_cpus": cpus,
                                              "include_dashboard": False}},
            )
        except BaseException as err:
            progress.emit(f"the simulation failed ({type(err).__name__}: {err}); details in {log_path}")
            raise
    return {"run_dir": run_dir, "seconds": time.perf_counter() - start, "log": log_path}
