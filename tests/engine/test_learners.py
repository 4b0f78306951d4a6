"""Which tensors a learner declares (and so which leave a site) in each encoder mode, FedBN, and
that a frozen encoder's BatchNorm does not move."""

from __future__ import annotations

import pytest
import torch

from fedecho.config.compose import compose_run_config
from fedecho.engine.build import build_pretrain_learner, build_task_learner

TINY = ["model.image_size=32", "task.image_size=[32,32]"]


def declared(*overrides, task=None):
    cfg = compose_run_config([*TINY, *overrides])
    return build_task_learner(cfg, task)


def test_full_lora_and_frozen_declare_the_right_tensors():
    full = declared("encoder=full").shared_state_dict()
    assert any(k.startswith("backbone.") for k in full) and any(k.startswith("head.") for k in full)
    lora = declared("encoder=lora").shared_state_dict()
    assert lora and all("lora_" in k or k.startswith("head.") for k in lora)
    frozen = declared("encoder=frozen").shared_state_dict()
    assert frozen and all(k.startswith("head.") for k in frozen)
    assert not any(k.endswith("num_batches_tracked") for k in full)


def test_fedbn_keeps_normalisation_layers_local():
    shared = declared("encoder=full", "federation.strategy.local_norms=true").shared_state_dict()
    plain = declared("encoder=full").shared_state_dict()
    norms = {k for k in plain if ".bn" in k or "downsample.1" in k or k.endswith(("running_mean", "running_var"))}
    assert norms and not (norms & set(shared))
    assert set(shared) == set(plain) - norms - {k for k in plain if "norm" in k.split(".")[-2]}


def test_frozen_encoder_batchnorm_statistics_do_not_move_in_training():
    learner = declared("encoder=lora", task="view")
    before = {k: v.clone() for k, v in learner.backbone.state_dict().items() if "running" in k}
    learner.train()
    batch = {"image": torch.rand(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    loss, _ = learner.loss(batch)
    loss.backward()
    after = learner.backbone.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def test_pretrain_learner_shares_the_student_not_the_teacher():
    cfg = compose_run_config([*TINY, "model=vit-s16", "model.name=vit-tiny", "ssl=dino", "ssl.dino_out_dim=64",
                              "ssl.dino_hidden_dim=32", "ssl.dino_bottleneck_dim=16"])
    learner = build_pretrain_learner(cfg)
    shared = learner.shared_state_dict()
    assert shared and not any("teacher" in k for k in shared)
    assert any(k.startswith("method.backbone.") for k in shared)


def test_local_state_is_what_the_site_keeps_and_round_trips():
    """The learner alone splits its state: declared tensors travel; local ones stay (FedBN norms,
    the DINO teacher); a frozen encoder is neither (the coordinator hands it out)."""
    fedbn = declared("encoder=full", "federation.strategy.local_norms=true")
    shared, local = set(fedbn.shared_state_dict()), set(fedbn.local_state_dict())
    assert not shared & local and local and all("bn" in k or "downsample.1" in k or "norm" in k
                                                 for k in local if not k.endswith("num_batches_tracked"))
    assert shared | local == set(fedbn.state_dict())

    lora = declared("encoder=lora")
    assert not any(k.startswith("backbone.") for k in lora.local_state_dict())  # frozen base: from setup

    cfg = compose_run_config([*TINY, "model=vit-s16", "model.name=vit-tiny", "ssl=dino", "ssl.dino_out_dim=64",
                              "ssl.dino_hidden_dim=32", "ssl.dino_bottleneck_dim=16"])
    dino = build_pretrain_learner(cfg)
    teacher = dino.local_state_dict()
    assert any("teacher" in k for k in teacher)
    with torch.no_grad():
        for k, v in teacher.items():
            if v.is_floating_point():
                v.add_(1.0)
    fresh = build_pretrain_learner(cfg)
    fresh.load_local_state_dict(teacher)
    assert all(torch.equal(v, fresh.local_state_dict()[k]) for k, v in teacher.items())
    with pytest.raises(ValueError, match="unexpected tensor 'nope'.*missing tensor"):
        fresh.load_local_state_dict({"nope": torch.zeros(1)})
