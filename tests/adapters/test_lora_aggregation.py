"""Federated LoRA (federation.lora_aggregation): which factors a learner declares, and that the
averaged global update is exact under ffa (B̄·A == mean of the sites' B_k·A) but not under fedavg
(B̄·Ā != mean of B_k·A_k); fedsa sends no B and keeps it on the site."""

from __future__ import annotations

import pytest
import torch

from fedecho.adapters.lora import lora_delta_weights
from fedecho.config.compose import compose_run_config
from fedecho.engine.build import build_task_learner

UNET = ["model=unet", "model.image_size=16", "model.norm=group", "model.overrides.width=4", "model.overrides.depth=1",
        "task=lv_seg", "task.image_size=[16,16]", "task.decoder_dim=8", "encoder=lora", "lora.rank=2"]


def learner(mode: str, *extra: str):
    return build_task_learner(compose_run_config([*UNET, f"federation.lora_aggregation={mode}", *extra]))


def train_site(site, seed: int, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    batch = {"image": torch.rand(2, 1, 16, 16, generator=generator), "mask": torch.randint(0, 4, (2, 16, 16), generator=generator)}
    opt = torch.optim.SGD(site.trainable_parameters(), lr=0.5)
    site.train()
    for _ in range(steps):
        opt.zero_grad()
        site.loss(batch)[0].backward()
        opt.step()


def federated_round(mode: str, sites: int = 3):
    """Each site trains on its own batch; the coordinator averages the declared tensors (equal weights)."""
    trained = []
    for k in range(sites):
        site = learner(mode)
        train_site(site, seed=k)
        trained.append(site)
    replies = [s.shared_state_dict() for s in trained]
    mean = {key: torch.stack([r[key] for r in replies]).mean(0) for key in replies[0]}
    glob = learner(mode)
    glob.load_shared_state_dict(mean)
    return glob, trained, replies


def test_declared_factors_per_mode():
    fedavg, ffa, fedsa = (set(learner(m).shared_state_dict()) for m in ("fedavg", "ffa", "fedsa"))
    a = {k for k in fedavg if ".lora_A." in k}
    b = {k for k in fedavg if ".lora_B." in k}
    head = {k for k in fedavg if k.startswith("head.")}
    assert a and b and head and fedavg == a | b | head
    assert ffa == b | head  # A stays at its seeded init on every site: never sent
    assert fedsa == a | head  # B is the site's own: never sent
    frozen = learner("ffa")
    assert all(not p.requires_grad for n, p in frozen.named_parameters() if ".lora_A." in n)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {n for n in b | head}
    assert all(p.requires_grad for n, p in learner("fedsa").named_parameters() if ".lora_B." in n)


def test_ffa_global_update_is_the_exact_mean_of_site_updates():
    glob, sites, replies = federated_round("ffa")
    site_deltas = [lora_delta_weights(s.backbone, "lv_seg") for s in sites]
    global_delta = lora_delta_weights(glob.backbone, "lv_seg")
    assert set(global_delta) and all(d.abs().max() > 0 for d in global_delta.values())
    for name, delta in global_delta.items():
        mean = torch.stack([d[name] for d in site_deltas]).mean(0)
        assert torch.allclose(delta, mean, atol=1e-6), name
    # A never moved and is the same everywhere (seeded): the reply carries only B and the head
    a = {n: p for n, p in glob.named_parameters() if ".lora_A." in n}
    assert all(torch.equal(p, dict(s.named_parameters())[n]) for s in sites for n, p in a.items())
    assert not any(".lora_A." in k for r in replies for k in r)


def test_fedavg_of_factors_is_not_the_mean_update():
    """The negative control: averaging A and B apart gives B̄·Ā, off the mean of B_k·A_k."""
    glob, sites, _ = federated_round("fedavg")
    site_deltas = [lora_delta_weights(s.backbone, "lv_seg") for s in sites]
    gaps = [(delta - torch.stack([d[name] for d in site_deltas]).mean(0)).abs().max().item()
            for name, delta in lora_delta_weights(glob.backbone, "lv_seg").items()]
    assert max(gaps) > 1e-4


def test_fedsa_keeps_b_on_the_site(tmp_path):
    """Through the site runtime: the reply of a training round carries A and the head, never B;
    the trained B is saved in the site's state directory (its personal model)."""
    from fedecho.federation.phases import Phase
    from fedecho.federation.site import SiteRuntime

    cfg = compose_run_config([*UNET, "federation.lora_aggregation=fedsa", "data=synthetic", "data.synthetic_format=camus",
                              "data.synthetic_patients=6", "data.synthetic_image_size=32", "federation.num_sites=2",
                              "federation.strategy.min_sites=1", "federation.tasks=[lv_seg]", "train.batch_size=4",
                              "train.threads=1", "train.lr=0.05", "federation.adapt.local_steps=2"],
                             config_name="federated")
    site = SiteRuntime(cfg, site_index=0, num_sites=2, state_dir=tmp_path)
    phase = Phase("adapt:lv_seg", "adapt", "lv_seg", rounds=1, local_steps=2)
    reference = build_task_learner(cfg, "lv_seg")
    encoder = {k.replace(".base_layer.", "."): v for k, v in reference.backbone.state_dict().items() if "lora_" not in k}
    site.setup(phase, encoder)
    reply, metrics = site.train(phase, 1, reference.shared_state_dict())
    assert metrics["num-examples"] > 0
    assert set(reply) == set(reference.shared_state_dict())
    assert any(".lora_A." in k for k in reply) and not any(".lora_B." in k for k in reply)
    saved: dict[str, torch.Tensor] = {}

    def collect(state):  # the site's saved state, however it nests it (e.g. {"learner": {...}})
        for key, value in state.items():
            if isinstance(value, dict):
                collect(value)
            elif isinstance(key, str) and ".lora_B." in key and torch.is_tensor(value):
                saved[key] = value

    for path in tmp_path.rglob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            collect(state)
    assert saved and any(v.abs().max() > 0 for v in saved.values())  # trained, kept at the site


@pytest.mark.parametrize(("overrides", "message"), [
    (["federation.lora_aggregation=ffa", "encoder=full"], "needs encoder=lora"),
    (["federation.lora_aggregation=fedx"], "unknown; valid: fedavg, ffa, fedsa"),
])
def test_config_errors_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        compose_run_config([*UNET, *overrides])
