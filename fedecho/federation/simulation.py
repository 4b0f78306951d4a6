"""Flower simulation of a run on this machine: the project's own ServerApp and ClientApp over
``federation.num_sites`` virtual sites (``flwr.simulation.run_simulation``, Ray backend).

A simulation that outgrows one machine runs on a Ray cluster: start ``ray start --head`` on one
machine and ``ray start --address=HEAD:6379`` on the others, then run ``flwr run .`` with a
federation whose ``[superlink.*]`` entry points at a SuperLink started with the Ray backend (see
the README, "Simulation on a Ray cluster"); Flower's Ray backend places the sites on the cluster.

Flower runs the ServerApp in a (non-daemon) thread and the simulation runtime (Ray backend, sites)
in the calling thread. When the runtime fails, e.g. ``ray.init`` timing out on a loaded machine,
``run_simulation`` raises but the ServerApp thread keeps waiting for replies up to
``round_timeout`` (an hour), and the process cannot exit. :func:`simulate` therefore gives the
ServerApp a :class:`WatchedGrid`: once the runtime has failed, the ServerApp's next call to the
Grid (it polls every 0.1 s while waiting) raises :class:`SimulationRuntimeError`, and ``simulate``
raises one naming the runtime's own error ("the simulation's Ray runtime did not start: ...").
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

__all__ = ["RuntimeWatch", "SimulationRuntimeError", "WatchedGrid", "simulate", "watched_server_app"]

#: Seconds ``simulate`` waits for the ServerApp thread to stop after the runtime failed.
SERVER_STOP_TIMEOUT_S = 60.0


class SimulationRuntimeError(RuntimeError):
    """The simulation's runtime (Flower's Ray backend and the sites' ClientApp actors) failed."""


class RuntimeWatch:
    """What the ServerApp thread and the runtime thread of one simulation know of each other: the
    runtime's failure (set by :func:`simulate`), whether any site replied, the ServerApp's thread
    and its own error."""

    def __init__(self) -> None:
        self.failure: SimulationRuntimeError | None = None
        self.replied = threading.Event()
        self.server_thread: threading.Thread | None = None
        self.server_error: BaseException | None = None

    def fail(self, error: SimulationRuntimeError) -> None:
        self.failure = error

    def check(self) -> None:
        """Raise the runtime's failure (in the ServerApp thread) once there is one."""
        if self.failure is not None:
            raise SimulationRuntimeError(f"stopping the ServerApp: {self.failure}")

    def join_server(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the ServerApp thread to end; whether it has."""
        thread = self.server_thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()


class WatchedGrid(InMemoryGrid):
    """The simulation's in-memory Grid (same link state, run and poll interval), raising
    :class:`SimulationRuntimeError` from every call once the runtime has failed."""

    def __init__(self, grid: InMemoryGrid, watch: RuntimeWatch) -> None:
        vars(self).update(vars(grid))
        self.watch = watch

    def get_node_ids(self) -> Iterable[int]:
        self.watch.check()
        return super().get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.watch.check()
        return super().push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.watch.check()
        replies = list(super().pull_messages(message_ids))
        if replies:
            self.watch.replied.set()
        return replies


def watched_server_app(app: ServerApp, watch: RuntimeWatch) -> ServerApp:
    """``app`` run on a :class:`WatchedGrid` (Flower's simulation passes an ``InMemoryGrid``);
    records the ServerApp's thread and any error it raises in ``watch``."""
    outer = ServerApp()

    @outer.main()
    def main(grid: Grid, context: Context) -> None:
        watch.server_thread = threading.current_thread()
        try:
            app(WatchedGrid(grid, watch) if isinstance(grid, InMemoryGrid) else grid, context)
        except BaseException as err:
            watch.server_error = err
            raise

    return outer


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def simulate(experiment: str, overrides: list[str], *, cpus_per_site: float = 1.0,
             total_cpus: int | None = None, resume: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run ``experiment`` (a config name in conf/) with Hydra ``overrides`` as a Flower simulation;
    ``resume`` continues the run in ``federation.run_dir`` from its last completed round. Inside
    :func:`fedecho.federation.ray_session.shared_ray` the simulation runs on the session's Ray
    instance (started once for all of them); otherwise Flower starts and stops Ray for it.

    The terminal shows one line per phase and round and a final table; Flower's and Ray's logs go
    to ``<run_dir>/flower.log`` (``verbose``: to the terminal as well)."""
    import shlex

    from flwr.simulation import run_simulation

    from client.app import build_app as client_app
    from fedecho.config.compose import compose_run_config
    from fedecho.federation import progress, ray_session
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
    watch = RuntimeWatch()
    with progress.quiet_console(log_path, verbose=verbose):
        finished = False
        try:
            run_simulation(
                watched_server_app(server_app(run_config), watch), client_app(run_config),
                num_supernodes=cfg.federation.num_sites,
                backend_config={"client_resources": {"num_cpus": cpus_per_site},
                                "init_args": {"num_cpus": cpus,
                                              "include_dashboard": False}},
            )
            finished = True
        except BaseException as err:
            if err is watch.server_error:  # the ServerApp's own failure; the runtime stopped after it
                progress.emit(f"the simulation failed ({type(err).__name__}: {err}); details in {log_path}")
                raise
            if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: stop the ServerApp too
                watch.fail(SimulationRuntimeError(f"the simulation was stopped ({type(err).__name__})"))
                raise
            root = _root_cause(err)
            started = "failed" if watch.replied.is_set() else "did not start"
            runtime_error = SimulationRuntimeError(
                f"the simulation's Ray runtime {started}: {type(root).__name__}: {root} (Flower's and Ray's "
                f"log: {log_path})")
            watch.fail(runtime_error)  # the ServerApp's next Grid call raises
            stopped = watch.join_server(SERVER_STOP_TIMEOUT_S)
            progress.emit(f"{runtime_error}" + ("" if stopped else
                                                f"; the ServerApp did not stop within {SERVER_STOP_TIMEOUT_S:.0f} s"))
            raise runtime_error from err
        finally:
            if not finished:  # inside a shared Ray session (ray_session): the next simulation starts a fresh Ray
                ray_session.discard()
    return {"run_dir": run_dir, "seconds": time.perf_counter() - start, "log": log_path}
