"""A site's private state (issue 12 items 1, 8, 10, 11), through the real SiteRuntime on tiny
synthetic data: DP noise the coordinator cannot recompute while the site can; one atomic snapshot
per round, a re-sent round trained bit-identically from the snapshot before it; a crash while
saving never lets ε under-count; skipped items reported per round."""

from __future__ import annotations

import shutil
import stat

import pytest
import torch

from fedecho.federation.contract import MetricKey
from fedecho.federation.phases import Phase

TINY = [
    "data.synthetic_patients=12", "data.synthetic_image_size=64", "model.image_size=32",
    "task.image_size=[32,32]", "model.overrides={layers:[1,1,1,1]}", "ssl.augment.image_size=32",
    "train.batch_size=4", "train.lr=0.003",
    "federation.num_sites=2", "federation.strategy.min_sites=1", "federation.adapt.rounds=3",
    "federation.tasks=[view]", "federation.central_eval=false", "model.norm=group",
    "federation.adapt.local_steps=3",
]
DP = ["federation.privacy.mode=sample", "federation.privacy.noise_multiplier=1.0",
      "federation.privacy.max_grad_norm=1.0"]
PHASE = Phase("adapt:view", "adapt", "view", rounds=3, local_epochs=1, local_steps=3, lr=0.003)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDECHO_CACHE", str(tmp_path / "cache"))
    from fedecho.config.compose import compose_run_config

    return lambda extra=(): compose_run_config([*TINY, f"federation.run_dir={tmp_path / 'run'}", *extra],
                                               "federated")


def start(cfg, state_dir):
    """A site process: its runtime with the encoder handed out (as the coordinator would)."""
    from fedecho.engine.build import build_task_learner, plain_encoder_state
    from fedecho.federation.site import SiteRuntime

    learner = build_task_learner(cfg, "view")
    runtime = SiteRuntime(cfg, site_index=0, num_sites=2, state_dir=state_dir)
    runtime.setup(PHASE, plain_encoder_state(learner.state_dict(), "backbone."))
    return runtime, learner.shared_state_dict()


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dp_noise_comes_from_the_site_secret_not_from_anything_the_coordinator_knows(cfg, tmp_path):
    c = cfg(DP)
    site, initial = start(c, tmp_path / "site")
    secret = tmp_path / "site" / "dp-secret.key"
    assert secret.is_file()  # created when the site starts, before any training
    shutil.copytree(tmp_path / "site", tmp_path / "site_copy")  # same state, before any training
    update, metrics = site.train(PHASE, 1, initial)
    assert secret.is_file() and stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    assert set(metrics) >= {MetricKey.EPSILON, MetricKey.EPSILON_EXAMPLE, MetricKey.DELTA}
    assert all(isinstance(v, float) for v in metrics.values())

    # the same site (same state directory) repeats its noisy update bit for bit
    again, _ = start(c, tmp_path / "site_copy")[0].train(PHASE, 1, initial)
    assert same(update, again)
    # the coordinator, knowing the seed, the site index, phase and round, but not the secret, cannot
    coordinator, _ = start(c, tmp_path / "coordinator")[0].train(PHASE, 1, initial)
    assert not same(update, coordinator)


def test_without_dp_a_run_stays_reproducible_from_the_public_seed(cfg, tmp_path):
    c = cfg()
    a, initial = start(c, tmp_path / "a")
    b, _ = start(c, tmp_path / "b")
    assert same(a.train(PHASE, 1, initial)[0], b.train(PHASE, 1, initial)[0])
    assert not (tmp_path / "a" / "dp-secret.key").exists()


def test_a_re_sent_round_trains_from_the_snapshot_before_it(cfg, tmp_path):
    c = cfg(DP)
    site, initial = start(c, tmp_path / "site")
    shutil.copytree(tmp_path / "site", tmp_path / "straight")  # the same site (secret), untouched
    after1, _ = site.train(PHASE, 1, initial)
    after2, metrics2 = site.train(PHASE, 2, after1)
    assert site.snapshots.rounds(PHASE.name) == [1, 2]
    # the coordinator crashed during round 2 and sends it again: same process, then a new one
    resent, metrics_resent = site.train(PHASE, 2, after1)
    assert same(resent, after2)
    restarted, _ = start(c, tmp_path / "site")
    resent2, metrics_restarted = restarted.train(PHASE, 2, after1)
    assert same(resent2, after2)
    # the repeated round released the same update: it is counted once
    for m in (metrics_resent, metrics_restarted):
        assert m[MetricKey.EPSILON] == pytest.approx(metrics2[MetricKey.EPSILON], rel=1e-12)
    # and round 3 continues as in an uninterrupted run of the same site
    straight, _ = start(c, tmp_path / "straight")
    s1, _ = straight.train(PHASE, 1, initial)
    s2, _ = straight.train(PHASE, 2, s1)
    assert same(straight.train(PHASE, 3, s2)[0], restarted.train(PHASE, 3, after2)[0])


def test_a_crash_while_saving_the_round_never_under_counts_epsilon(cfg, tmp_path, monkeypatch):
    from fedecho.engine import snapshots

    c = cfg(DP)
    site, initial = start(c, tmp_path / "site")
    shutil.copytree(tmp_path / "site", tmp_path / "straight")  # the same site, uninterrupted
    straight, _ = start(c, tmp_path / "straight")
    u1, _ = straight.train(PHASE, 1, initial)
    _, m2 = straight.train(PHASE, 2, u1)
    assert straight._phases[PHASE.name].privacy.accountant.steps == 2 * PHASE.local_steps

    site.train(PHASE, 1, initial)
    real_replace = snapshots.os.replace

    def killed(src, dst):  # the process dies after training, before its state is in place
        raise KeyboardInterrupt("site killed while saving round 2")

    monkeypatch.setattr(snapshots.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        site.train(PHASE, 2, u1)  # nothing was sent: the reply goes out after the save
    monkeypatch.setattr(snapshots.os, "replace", real_replace)
    assert site.snapshots.rounds(PHASE.name) == [1]

    restarted, _ = start(c, tmp_path / "site")
    _, m2_again = restarted.train(PHASE, 2, u1)
    privacy = restarted._phases[PHASE.name].privacy
    assert privacy.accountant.steps == 2 * PHASE.local_steps  # every step of both rounds, once
    assert m2_again[MetricKey.EPSILON] == pytest.approx(m2[MetricKey.EPSILON], rel=1e-12)
    assert m2_again[MetricKey.EPSILON_EXAMPLE] == pytest.approx(m2[MetricKey.EPSILON_EXAMPLE], rel=1e-12)


def test_skipped_items_are_reported_per_round(cfg, tmp_path):
    c = cfg()
    site, initial = start(c, tmp_path / "site")
    dataset = site._objects(PHASE, before=1).train_loader.dataset
    reader = dataset.reader
    broken = dataset.records[dataset.examples[0][0]]
    original = reader.load
    failures = [0]

    def load(record, *args, **kwargs):
        if record.item_id == broken.item_id:
            failures[-1] += 1
            from fedecho.data.errors import EchoDataError
            from fedecho.data.schema import DataIssue

            raise EchoDataError([DataIssue(path=record.path, reason="unreadable (test)")])
        return original(record, *args, **kwargs)

    reader.load = load
    dataset._cache.clear()
    skipped = []
    arrays = initial
    for round_ in (1, 2, 3):
        arrays, metrics = site.train(PHASE, round_, arrays)
        skipped.append(metrics[MetricKey.SKIPPED])
        failures.append(0)
    assert failures[0] >= 1  # the broken item was met in round 1
    assert skipped == failures[:3]  # each round reports its own skips, not a running total


def test_state_of_an_older_fedecho_is_refused_rather_than_restarting_epsilon(cfg, tmp_path):
    from fedecho.federation.site import SiteRuntime

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "privacy.json").write_text('{"history": [[1.0, 0.1, 100]]}')
    with pytest.raises(RuntimeError, match="epsilon would restart at 0; start a new run"):
        SiteRuntime(cfg(DP), site_index=0, num_sites=2, state_dir=tmp_path / "old")
