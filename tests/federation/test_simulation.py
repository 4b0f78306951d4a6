"""End to end: the project's ServerApp and ClientApp in Flower's in-process simulation, tiny models,
synthetic data. Learning happens, only declared tensors leave the sites, a NaN update from one
site is rejected while the run finishes, and a run interrupted after a round, or during one,
resumes to the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import shlex

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TINY = [
    "data.synthetic_patients=12", "data.synthetic_image_size=64", "model.image_size=32",
    "task.image_size=[32,32]", "ssl.augment.image_size=32", "ssl.projection_dim=16",
    "train.batch_size=8", "train.lr=0.003", "federation.num_sites=2", "federation.strategy.min_sites=1",
]


def run(tmp_path, name, overrides, mods=None, resume=False):
    from flwr.simulation import run_simulation

    from client.app import build_app as client_app
    from server.app import build_app as server_app

    run_dir = tmp_path / name
    rc = {"experiment": "federated",
          "overrides": shlex.join([*TINY, f"federation.run_dir={run_dir}", *overrides]), "resume": resume}
    run_simulation(server_app(rc), client_app(rc, mods=mods), num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}})
    return run_dir, json.loads((run_dir / "history.json").read_text())


def record_and_corrupt(log_path, corrupt_site=None, corrupt_round=None):
    """A Flower mod on the site: records what each reply carries; optionally replaces one site's
    update with NaN (a broken site)."""
    import numpy as np
    import torch

    def mod(message, context, call_next):
        reply = call_next(message, context)
        site = int(context.node_config["partition-id"])
        arrays = reply.content.array_records.get("arrays") if reply.has_content() else None
        metrics = reply.content.metric_records.get("metrics") if reply.has_content() else None
        config = message.content.config_records["config"]
        entry = {"site": site, "type": message.metadata.message_type, "phase": config.get("phase-name"),
                 "round": config.get("server-round"), "arrays": sorted(arrays) if arrays is not None else None,
                 "records": sorted(reply.content.keys()) if reply.has_content() else [],
                 "metrics": {k: type(v).__name__ for k, v in (metrics or {}).items()}}
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if (arrays is not None and site == corrupt_site and config.get("server-round") == corrupt_round
                and message.metadata.message_type == "train"):
            from flwr.app import ArrayRecord

            reply.content["arrays"] = ArrayRecord(
                {k: torch.full(v.shape, float("nan")) if np.issubdtype(v.numpy().dtype, np.floating)
                 else torch.from_numpy(v.numpy().copy()) for k, v in arrays.items()})
        return reply

    return mod


def test_federated_run_learns_sends_only_declared_tensors_and_survives_a_nan_site(tmp_path):
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_pretrain_learner, build_task_learner

    log_path = tmp_path / "wire.jsonl"
    overrides = ["federation.pretrain.rounds=1", "federation.adapt.rounds=3", "federation.tasks=[lv_seg]",
                 "federation.adapt.local_epochs=2"]
    run_dir, history = run(tmp_path, "run", overrides,
                           mods=[record_and_corrupt(str(log_path), corrupt_site=1, corrupt_round=2)])
    cfg = compose_run_config([*TINY, *overrides], "federated")

    # only declared tensors and scalar metrics left the sites
    declared = {"pretrain": set(build_pretrain_learner(cfg).shared_state_dict()),
                "adapt:lv_seg": set(build_task_learner(cfg, "lv_seg").shared_state_dict())}
    wire = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {w["type"] for w in wire} == {"train", "evaluate", "query"}
    for entry in wire:
        assert set(entry["records"]) <= {"arrays", "metrics"}
        assert set(entry["metrics"].values()) <= {"float", "int"}
        if entry["type"] == "train":
            assert set(entry["arrays"]) == declared[entry["phase"]]
        elif entry["arrays"] is not None:
            assert entry["arrays"] == []  # evaluate / setup replies carry no tensors
    adapter_bytes = sum(v.numel() for v in build_task_learner(cfg, "lv_seg").shared_state_dict().values())
    encoder_params = sum(v.numel() for v in build_task_learner(cfg, "lv_seg").backbone.parameters())
    assert adapter_bytes < 0.2 * encoder_params

    # the NaN update of site 1 in round 2 was rejected and the run finished
    rounds = {(r["phase"], r["round"]): r for r in history}
    assert "NaN/Inf" in rounds[("adapt:lv_seg", 2)]["rejected"]["site_1"]
    assert not rounds[("adapt:lv_seg", 1)]["rejected"] and not rounds[("adapt:lv_seg", 3)]["rejected"]
    final = rounds[("evaluate:lv_seg", 1)]
    assert (run_dir / "report" / "report.md").is_file()

    # learning happened: the adapt loss fell and the LV Dice is well above an empty prediction's
    losses = [rounds[("adapt:lv_seg", r)]["train"]["train-loss"] for r in (1, 2, 3)]
    assert losses[-1] < losses[0]
    assert final["evaluate"]["dice/lv_cavity"] > 0.3 and final["central"]["dice/lv_cavity"] > 0.3
    assert all(math.isfinite(v) for k, v in final["central"].items() if "auroc" not in k)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from fedecho.federation import state

    overrides = ["federation.adapt.rounds=3", "federation.tasks=[view]", "federation.central_eval=false"]
    full_dir, _ = run(tmp_path, "full", overrides)

    original = state.RunCheckpoint.save_round

    def crash_after_round_2(self, phase, round_, arrays, strategy_state):
        original(self, phase, round_, arrays, strategy_state)
        if round_ == 2 and not os.environ.get("FEDECHO_TEST_RESUMED"):
            raise RuntimeError("coordinator killed after round 2")

    monkeypatch.setattr(state.RunCheckpoint, "save_round", crash_after_round_2)
    with pytest.raises(RuntimeError, match="killed after round 2"):
        run(tmp_path, "resumed", overrides)
    monkeypatch.setenv("FEDECHO_TEST_RESUMED", "1")
    resumed_dir, history = run(tmp_path, "resumed", overrides, resume=True)

    assert [(r["phase"], r["round"]) for r in history if r["phase"] == "adapt:view"] == [
        ("adapt:view", 1), ("adapt:view", 2), ("adapt:view", 3)]
    a = np.load(full_dir / "checkpoint" / "final_adapt_view.npz")
    b = np.load(resumed_dir / "checkpoint" / "final_adapt_view.npz")
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_coordinator_killed_mid_round_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Sites trained round 2 (and saved their state), then the coordinator died before it
    checkpointed the round: on resume it sends round 2 again, and each site trains it from its
    snapshot after round 1, so the run ends bit-identical to an uninterrupted one."""
    from fedecho.federation import state

    overrides = ["federation.adapt.rounds=3", "federation.tasks=[view]", "federation.central_eval=false",
                 "federation.adapt.local_steps=2"]
    full_dir, _ = run(tmp_path, "full", overrides)

    original = state.RunCheckpoint.save_round

    def crash_during_round_2(self, phase, round_, arrays, strategy_state):
        if round_ == 2 and not os.environ.get("FEDECHO_TEST_RESUMED"):
            raise RuntimeError("coordinator killed during round 2")
        original(self, phase, round_, arrays, strategy_state)

    monkeypatch.setattr(state.RunCheckpoint, "save_round", crash_during_round_2)
    with pytest.raises(RuntimeError, match="killed during round 2"):
        run(tmp_path, "resumed", overrides)
    snapshots = sorted(p.name for p in (tmp_path / "resumed" / "sites").glob("site_*/rounds/adapt_view/r*.pt"))
    assert snapshots == ["r1.pt", "r1.pt", "r2.pt", "r2.pt"]  # the sites had trained round 2
    monkeypatch.setenv("FEDECHO_TEST_RESUMED", "1")
    resumed_dir, _ = run(tmp_path, "resumed", overrides, resume=True)

    a = np.load(full_dir / "checkpoint" / "final_adapt_view.npz")
    b = np.load(resumed_dir / "checkpoint" / "final_adapt_view.npz")
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_dp_sgd_sites_report_composing_epsilon_and_stop_at_their_budget(tmp_path):
    dp = ["federation.adapt.rounds=3", "federation.tasks=[view]", "federation.central_eval=false",
          "model.norm=group", "federation.privacy.mode=sample", "federation.privacy.noise_multiplier=1.0",
          "federation.privacy.max_grad_norm=1.0"]
    dp_dir, history = run(tmp_path, "dp", dp)
    assert "ε is per **patient**" in (dp_dir / "report" / "report.md").read_text()
    rounds = [r for r in history if r["phase"] == "adapt:view"]
    for site in ("site_0", "site_1"):
        eps = [r["sites_train"][site]["epsilon"] for r in rounds]
        assert 0 < eps[0] < eps[1] < eps[2]
        # the default unit is the patient (several images each): a larger epsilon than per image
        per_image = [r["sites_train"][site]["epsilon-example"] for r in rounds]
        assert all(0 < e < p for e, p in zip(per_image, eps, strict=True))
        assert all(r["sites_train"][site]["delta"] == pytest.approx(1e-5) for r in rounds)
    # a budget too small for even one round: every site stops, and the run says why
    with pytest.raises(Exception, match="privacy budget spent"):
        run(tmp_path, "dp_spent", [*dp, "federation.privacy.target_epsilon=0.01"])
