"""Several simulations of one process (an experiment's arms) share one Ray instance
(fedecho.federation.ray_session): Ray starts once, each simulation still gets its own fresh
ClientApp actors (as many as its own CPUs allow), Flower's backend is back after the block, and a
Ray that does not start still fails the simulation promptly."""

from __future__ import annotations

import json
import os
import shlex
import threading
import time

import pytest

TINY = [
    "data.synthetic_patients=12", "data.synthetic_image_size=64", "model.image_size=32",
    "task.image_size=[32,32]", "ssl.augment.image_size=32", "ssl.projection_dim=16",
    "train.batch_size=8", "train.lr=0.003", "federation.strategy.min_sites=1",
    "federation.adapt.rounds=1",
]


def _pid_mod(log_path):
    """A Flower mod on the site: records the process that handled each message."""
    def mod(message, context, call_next):
        with open(log_path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "site": int(context.node_config["partition-id"])}) + "\n")
        return call_next(message, context)

    return mod


def _simulation(tmp_path, name, sites, cpus):
    """One tiny run through Flower's run_simulation (with the CPUs ``simulate`` would give it);
    the processes that served its sites."""
    from flwr.simulation import run_simulation

    from client.app import build_app as client_app
    from server.app import build_app as server_app

    run_dir, log_path = tmp_path / name, tmp_path / f"{name}.pids"
    rc = {"experiment": "federated", "resume": False, "overrides": shlex.join(
        [*TINY, f"federation.num_sites={sites}", f"federation.run_dir={run_dir}"])}
    run_simulation(server_app(rc), client_app(rc, mods=[_pid_mod(log_path)]), num_supernodes=sites,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": cpus}})
    assert any(r["phase"].startswith("evaluate:") for r in json.loads((run_dir / "history.json").read_text()))
    return {json.loads(line)["pid"] for line in log_path.read_text().splitlines()}


@pytest.mark.slow
def test_simulations_in_a_session_start_ray_once_with_fresh_actors_each(tmp_path):
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedecho.federation.ray_session import active_session, shared_ray

    flower_backend = raybackend.RayBackend
    starts = []
    real_init = ray.init

    def counting_init(*args, **kwargs):
        starts.append(kwargs.get("num_cpus"))
        return real_init(*args, **kwargs)

    ray.init = counting_init
    try:
        with shared_ray(2) as session:
            assert active_session() is session and raybackend.RayBackend is not flower_backend
            first = _simulation(tmp_path, "two_sites", sites=2, cpus=2)
            assert ray.is_initialized()  # Flower's terminate would have shut it down
            second = _simulation(tmp_path, "one_site", sites=1, cpus=1)
    finally:
        ray.init = real_init
    assert starts == [2] and session.starts == 1  # one Ray, with the session's CPUs
    assert len(session.session_names) == 2 and len(set(session.session_names)) == 1  # both ran on it
    assert session.actors == [2, 1]  # each simulation's own actor count, as Flower would size it alone
    assert first and second and not first & second  # fresh actor processes: no site state carried over
    assert not ray.is_initialized() and raybackend.RayBackend is flower_backend and active_session() is None


def test_ray_that_does_not_start_in_a_session_fails_promptly_and_the_session_ends_clean(tmp_path, monkeypatch):
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedecho.federation.ray_session import shared_ray
    from fedecho.federation.simulation import SimulationRuntimeError, simulate

    def init(*args, **kwargs):
        raise TimeoutError("patched: the node timed out during startup")

    monkeypatch.setattr(ray, "init", init)
    flower_backend = raybackend.RayBackend
    before = {t for t in threading.enumerate() if not t.daemon}
    start = time.monotonic()
    with pytest.raises(SimulationRuntimeError,
                       match=r"the simulation's Ray runtime did not start: TimeoutError: patched: the node timed out"):
        with shared_ray(2) as session:
            simulate("federated", [*TINY, "federation.num_sites=2", f"federation.run_dir={tmp_path / 'run'}"],
                     total_cpus=2)
    assert time.monotonic() - start < 120
    assert session.starts == 0 and raybackend.RayBackend is flower_backend and not ray.is_initialized()
    left = [t for t in threading.enumerate() if not t.daemon and t not in before and t.is_alive()]
    assert not left, f"threads still waiting: {left}"


def test_a_session_needs_a_cpu():
    from fedecho.federation.ray_session import RaySession

    with pytest.raises(ValueError, match="at least one CPU"):
        RaySession(0)


def _dying_mod(log_path, marker):
    """A Flower mod on the site: the first message site 1 gets kills the actor's process (as Ray's
    memory monitor does), once; every message's process is recorded."""
    def mod(message, context, call_next):
        site = int(context.node_config["partition-id"])
        with open(log_path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "site": site}) + "\n")
        if site == 1 and not marker.exists():
            marker.touch()
            os._exit(1)
        return call_next(message, context)

    return mod


@pytest.mark.slow
def test_an_actor_that_dies_is_replaced_and_its_site_stays_in_every_round(tmp_path):
    """Ray kills a ClientApp actor (memory) or its process crashes: the message runs again on a
    fresh actor, so the site is in that round and in every later one (Flower put the dead actor
    back in its pool, and the site dropped out of every round after)."""
    from flwr.simulation import run_simulation

    from client.app import build_app as client_app
    from fedecho.federation.ray_session import shared_ray
    from server.app import build_app as server_app

    run_dir, log_path, marker = tmp_path / "run", tmp_path / "pids", tmp_path / "died"
    rc = {"experiment": "federated", "resume": False, "overrides": shlex.join(
        [*TINY, "federation.num_sites=2", "federation.adapt.rounds=2", f"federation.run_dir={run_dir}"])}
    with shared_ray(1):
        run_simulation(server_app(rc), client_app(rc, mods=[_dying_mod(log_path, marker)]), num_supernodes=2,
                       backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 1}})
    assert marker.exists()
    calls = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len({c["pid"] for c in calls}) == 2  # the actor that died, and the one that replaced it
    history = json.loads((run_dir / "history.json").read_text())
    rounds = [r for r in history if r["phase"].startswith("adapt:")]
    assert len(rounds) == 2 and all(len(r["sites_train"]) == 2 and not r["rejected"] for r in rounds)
    assert any(r["phase"].startswith("evaluate:") and len(r["sites_evaluate"]) == 2 for r in history)
