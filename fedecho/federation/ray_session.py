"""One Ray instance for the several Flower simulations of one process (the arms of an experiment).

Flower's Ray backend (``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend``) starts Ray
when it is not running and shuts it down at the end of every simulation: an experiment of ten arms
started Ray ten times (measured on 2 loaded cores: 12-20 s of ``ray.init`` and 1.5 s of
``ray.shutdown`` per arm, besides the arm's own work). Inside :func:`shared_ray`, every simulation
gets a :class:`SharedRayBackend` instead, which

- starts Ray through Flower's own ``init_ray`` (same init arguments and runtime environment) the
  first time, with the session's CPU count, and reuses the running instance afterwards;
- creates as many ClientApp actors as Flower would have created for the simulation's own
  ``init_args.num_cpus`` (a one-site arm still gets one actor, not one per CPU of the session);
- replaces an actor that died (Ray killed it for memory, or its process crashed) by a fresh one
  and runs the message once more on it; Flower's backend puts the dead actor back in its pool,
  so every later message drawn on it fails too and its sites drop out of every later round;
- at the end of the simulation kills its actors and waits until Ray has released them (their
  processes, with every site's in-process state, end with them: each arm's sites begin in fresh
  actor processes, as before), but leaves Ray running.

The session shuts Ray down when it ends, and after a simulation whose runtime failed
(:func:`discard`), so that the next one starts a fresh Ray. Outside a session nothing changes.

The hook is Flower's backend lookup: ``vce_api.start_vce`` imports ``RayBackend`` from the
``raybackend`` module each time it builds a backend; the session puts the subclass there while it
is active and puts Flower's class back when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["RaySession", "SharedRayBackend", "active_session", "discard", "shared_ray"]

log = logging.getLogger(__name__)

#: Seconds a finished simulation waits for Ray to release its killed actors' CPUs.
ACTOR_EXIT_TIMEOUT_S = 30.0

_lock = threading.Lock()
_session: RaySession | None = None


class RaySession:
    """What the simulations of one :func:`shared_ray` block share: the CPU count Ray is started
    with, how many times it was started, and the Ray session each simulation ran on."""

    def __init__(self, num_cpus: int) -> None:
        if num_cpus < 1:
            raise ValueError(f"a Ray session needs at least one CPU, got num_cpus={num_cpus}")
        self.num_cpus = int(num_cpus)
        self.starts = 0
        #: per simulation, the Ray node and session it ran on ("<node id>@<session name>")
        self.session_names: list[str] = []
        #: per simulation, the ClientApp actors it was given
        self.actors: list[int] = []

    def shutdown(self) -> None:
        """Stop Ray (if it runs); the next simulation of the session starts it again."""
        import ray

        if ray.is_initialized():
            ray.shutdown()


def active_session() -> RaySession | None:
    """The session of the enclosing :func:`shared_ray` block, if any."""
    return _session


def discard() -> None:
    """After a failed simulation: stop the session's Ray (its state is unknown), if a session is
    active; the session's next simulation starts a fresh one."""
    if _session is not None:
        _session.shutdown()


_BACKEND: type | None = None


def _backend_class() -> type:
    """:class:`SharedRayBackend`, defined on first use (importing this module imports neither
    flwr's backend nor Ray)."""
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    class SharedRayBackend(RayBackend):
        """Flower's Ray backend over the active session's Ray instance (see the module docstring)."""

        def init_ray(self, backend_config: dict[str, Any]) -> None:
            import ray

            session = _session
            if session is None:
                raise RuntimeError("SharedRayBackend is used only inside fedecho.federation.ray_session.shared_ray")
            init_args = dict(backend_config.get(self.init_args_key) or {})
            # Flower sizes the actor pool by the CPUs Ray has: on the session's own Ray, the
            # simulation's own CPUs decide (on a Ray someone else started, Flower's rule stands).
            self.actor_cpus: float | None = None
            if not ray.is_initialized():
                super().init_ray({**backend_config, self.init_args_key: {**init_args, "num_cpus": session.num_cpus}})
                session.starts += 1
            if session.starts:
                self.actor_cpus = float(init_args.get("num_cpus", session.num_cpus))
            session.session_names.append(ray.get_runtime_context().get_node_id() + "@" + _session_name())

        def build(self, app_fn: Callable[[], Any]) -> None:
            per_actor = float(self.client_resources.get("num_cpus", 1)) or 1.0
            self.pool = BasicActorPool(actor_type=ClientAppActor, client_resources=self.client_resources,
                                       actor_kwargs=self.actor_kwargs)
            capacity = self.pool.actors_capacity
            self.pool.add_actors_to_pool(capacity if self.actor_cpus is None else
                                         min(capacity, int(self.actor_cpus / per_actor)))
            self.app_fn = app_fn
            _session.actors.append(self.pool.num_actors)

        def process_message(self, message: Any, context: Any, *, retry: bool = True) -> tuple[Any, Any]:
            """Flower's ``process_message``, except that an actor that died is replaced by a fresh
            one and the message runs once more on it (see the module docstring). A ClientApp's own
            exception is not an actor death: it is raised as in Flower, and the actor stays."""
            import ray
            from flwr.common.constant import PARTITION_ID_KEY
            from ray.exceptions import OutOfMemoryError, RayActorError, WorkerCrashedError

            pool = self.pool
            if pool is None or self.app_fn is None:
                return super().process_message(message, context)  # Flower's errors for an unbuilt backend
            site = str(context.node_config[PARTITION_ID_KEY])
            future = pool.submit(lambda a, a_fn, mssg, cid, state: a.run.remote(a_fn, mssg, cid, state),
                                 (self.app_fn, message, site, context))
            try:
                return pool.fetch_result_and_return_actor_to_pool(future)
            except (RayActorError, OutOfMemoryError, WorkerCrashedError) as err:
                dead = pool._future_to_actor.pop(future)  # noqa: SLF001
                with contextlib.suppress(Exception):
                    ray.kill(dead)
                pool.pool.append(pool.create_actor_fn())
                log.warning("site %s: its ClientApp actor died (%s); a fresh actor %s", site, type(err).__name__,
                            "runs the message again" if retry else "is in the pool")
                if not retry:
                    raise
            except Exception:
                pool.add_actor_back_to_pool(future)
                raise
            return self.process_message(message, context, retry=False)

        def terminate(self) -> None:
            """Kill the simulation's actors (as ``ray.shutdown`` did: their messages are all answered;
            a graceful ``exit_actor`` took tens of seconds of teardown on a loaded machine) and
            wait until Ray has them dead; Ray keeps running."""
            import ray

            pool = self.pool
            if pool is None:
                return
            for actor in [*pool.pool, *pool._future_to_actor.values()]:  # idle, and busy (failed)  # noqa: SLF001
                ray.kill(actor)
            if self.actor_cpus is not None:  # the session's own Ray: nothing else holds its CPUs
                deadline = time.monotonic() + ACTOR_EXIT_TIMEOUT_S
                while _cpus_in_use() > 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _cpus_in_use() > 0:
                    log.warning("ClientApp actors still hold CPUs %.0f s after they were killed", ACTOR_EXIT_TIMEOUT_S)
            self.pool = None

    _BACKEND = SharedRayBackend
    return SharedRayBackend


def _cpus_in_use() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0)) - float(ray.available_resources().get("CPU", 0.0))


def _session_name() -> str:
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)  # the running Ray's session (private API)
    node = getattr(getattr(node, "global_worker", None), "node", None)
    return str(getattr(node, "session_name", ""))


def __getattr__(name: str) -> Any:
    if name == "SharedRayBackend":
        return _backend_class()
    raise AttributeError(name)


@contextlib.contextmanager
def shared_ray(num_cpus: int) -> Iterator[RaySession]:
    """Run the simulations inside the block on one Ray instance of ``num_cpus`` CPUs (started by the
    first of them), shut down when the block ends. A nested block joins the outer session."""
    global _session
    from flwr.server.superlink.fleet.vce.backend import raybackend

    with _lock:
        outer = _session
        if outer is None:
            flower_backend = raybackend.RayBackend
            raybackend.RayBackend = _backend_class()
            _session = RaySession(num_cpus)
        session = _session
    if outer is not None:
        yield outer
        return
    try:
        yield session
    finally:
        with _lock:
            raybackend.RayBackend = flower_backend
            _session = None
        session.shutdown()
