"""A simulation whose Ray runtime cannot start fails promptly with a clear error, and leaves no
ServerApp thread waiting for sites (before: the ServerApp waited up to ``round_timeout``, an hour,
and the process could not exit)."""

from __future__ import annotations

import threading
import time

import pytest

TINY = [
    "data.synthetic_patients=12", "data.synthetic_image_size=64", "model.image_size=32",
    "task.image_size=[32,32]", "ssl.augment.image_size=32", "ssl.projection_dim=16",
    "train.batch_size=8", "federation.num_sites=2", "federation.strategy.min_sites=1",
]


def test_ray_that_does_not_start_fails_the_simulation_promptly(tmp_path, monkeypatch):
    import ray

    from fedecho.federation.simulation import SimulationRuntimeError, simulate

    def init(*args, **kwargs):
        raise TimeoutError("patched: the node timed out during startup")

    monkeypatch.setattr(ray, "init", init)
    before = {t for t in threading.enumerate() if not t.daemon}
    start = time.monotonic()
    with pytest.raises(SimulationRuntimeError,
                       match=r"the simulation's Ray runtime did not start: TimeoutError: patched: the node timed out"):
        simulate("federated", [*TINY, f"federation.run_dir={tmp_path / 'run'}"], total_cpus=2)
    assert time.monotonic() - start < 120
    left = [t for t in threading.enumerate() if not t.daemon and t not in before and t.is_alive()]
    assert not left, f"threads still waiting: {left}"
