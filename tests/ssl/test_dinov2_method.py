"""DINOv2 as a method on a tiny ViT: the DINO contract (all DINOv2 parts off = DINO exactly), iBOT
masking end to end, federation state, layer-wise lr decay, weight-decay schedule, DP refusal."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fedecho import models
from fedecho.config.model import BackboneConfig
from fedecho.config.ssl import AugmentConfig, SSLConfig
from fedecho.config.train import TrainConfig
from fedecho.data.schema import Sample
from fedecho.engine.learners import PretrainLearner
from fedecho.engine.trainer import Trainer
from fedecho.ssl import build_method
from fedecho.ssl.ema import cosine_momentum

SIZE = 32  # 2 x 2 patches of 16 px per global crop
OFF = {"ibot_weight": 0.0, "koleo_weight": 0.0, "centering": "softmax", "layerwise_decay": 1.0,
       "patch_embed_lr_mult": 1.0, "norm_bias_weight_decay": True, "weight_decay_final": None}


def config(method: str = "dinov2", **changes) -> SSLConfig:
    fields = {"method": method, "dino_out_dim": 32, "dino_hidden_dim": 16, "dino_bottleneck_dim": 8,
              "augment": AugmentConfig(image_size=SIZE, dino_local_size=16, dino_num_local_crops=2)}
    return SSLConfig(**{**fields, **changes})


def vit(seed: int = 0):
    torch.manual_seed(seed)
    return models.build_backbone(BackboneConfig(name="vit-tiny", image_size=SIZE))


def build(cfg: SSLConfig, seed: int = 0):
    backbone = vit(seed)
    torch.manual_seed(seed + 100)
    return build_method(backbone, cfg)


SAMPLES = [
    Sample(source="synthetic", patient_id=f"p{i}", study_id="s", item_id="v",
           frames=np.random.default_rng(i).integers(0, 256, (3, 40, 44), dtype=np.uint8))
    for i in range(4)
]


def batch_for(method, seed: int = 0) -> dict[str, torch.Tensor]:
    return method.collate([method.make_views(s, np.random.default_rng((seed, i))) for i, s in enumerate(SAMPLES)])


def test_dinov2_with_every_part_off_is_dino_step_for_step() -> None:
    train_cfg = TrainConfig(lr=1e-3, weight_decay=0.05, optimizer="adamw", schedule="cosine", progress=False)
    runs = {}
    for name, cfg in (("dino", config("dino")), ("dinov2", config(**OFF))):
        method = build(cfg)
        batches = [batch_for(method, seed) for seed in range(3)]
        trainer = Trainer(PretrainLearner(method), train_cfg, total_steps=3)
        result = trainer.train_epoch(batches)
        runs[name] = (method, batches, result)
    (dino, dino_batches, dino_result), (v2, v2_batches, v2_result) = runs["dino"], runs["dinov2"]
    for a, b in zip(dino_batches, v2_batches):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert dino_result.loss == v2_result.loss and dino_result.logs == v2_result.logs
    assert dino.state_dict().keys() == v2.state_dict().keys()
    for key, value in dino.state_dict().items():
        assert torch.equal(v2.state_dict()[key], value), key
    assert int(v2.step) == 3


def test_full_dinov2_trains_and_the_mask_token_learns() -> None:
    cfg = config(mask_probability=1.0, mask_ratio=(0.25, 0.5), ibot_separate_head=True, ibot_out_dim=24)
    method = build(cfg)
    batch = batch_for(method)
    assert batch["masks"].shape == (4, 2, 4) and batch["masks"].dtype == torch.bool
    assert (batch["masks"].sum(-1) >= 1).all()  # int(4 patches x ratio >= 0.25) >= 1
    optimizer = torch.optim.AdamW(method.optimizer_groups(1e-3, 0.04))
    logs = []
    for _ in range(3):
        optimizer.zero_grad()
        loss, log = method.loss(batch)
        loss.backward()
        assert method.mask_token.token.grad.abs().sum() > 0
        assert method.ibot_head.last_layer.weight_v.grad.abs().sum() > 0
        assert all(p.grad is None for p in method.teacher_ibot_head.parameters())
        method.before_optimizer_step(optimizer)
        optimizer.step()
        method.after_optimizer_step()
        logs.append(log)
    for log in logs:
        assert all(math.isfinite(v) for v in log.values())
        total = log["dino"] + cfg.ibot_weight * log["ibot"] + cfg.koleo_weight * log["koleo"]
        assert log["loss"] == pytest.approx(total, rel=1e-5)
    assert not torch.equal(method.teacher_ibot_head.last_layer.weight_v, method.ibot_head.last_layer.weight_v)


def test_ibot_sees_only_masked_patches() -> None:
    # changing the pixels of an unmasked-everywhere batch cannot change the iBOT term: it is 0
    method = build(config(mask_probability=0.0, koleo_weight=0.0))
    batch = batch_for(method)
    assert not batch["masks"].any()
    _, logs = method.loss(batch)
    assert logs["ibot"] == 0.0 and logs["masked_fraction"] == 0.0


def test_masked_student_input_differs_only_at_masked_patches() -> None:
    method = build(config())
    x = torch.randn(2, 1, SIZE, SIZE)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    seen = {}
    hook = method.backbone.model.embeddings.register_forward_hook(lambda m, a, out: seen.setdefault("emb", out))
    with method._masked(masks):
        method._tokens(method.backbone, x)
    hook.remove()
    plain = method.backbone.model.embeddings(x, interpolate_pos_encoding=True)
    differs = (seen["emb"] != plain).any(-1)[:, 1:]  # per patch, [CLS] dropped
    assert torch.equal(differs, masks)


def test_ibot_needs_a_vit() -> None:
    from tests.ssl.test_methods import TinyBackbone

    with pytest.raises(ValueError, match="needs a ViT backbone.*ssl.ibot_weight=0"):
        build_method(TinyBackbone(), config())
    build_method(TinyBackbone(), config(ibot_weight=0.0))  # DINO + KoLeo + Sinkhorn on a CNN


def test_student_and_heads_travel_teacher_and_centres_stay() -> None:
    cfg = config(ibot_separate_head=True, centering="softmax", mask_probability=1.0)
    method = build(cfg)
    shared, local = set(method.shared_parameter_names()), set(method.local_state_dict())
    assert shared.isdisjoint(local) and shared | local == set(method.state_dict())
    assert {"mask_token.token", "ibot_head.last_layer.weight_v"} <= shared
    assert {"dino_loss.center", "patch_centre.center", "step", "teacher_initialized"} <= local
    assert not any(n.startswith("teacher_") for n in shared)
    learner = PretrainLearner(method)
    sent = set(learner.shared_state_dict())
    assert "method.mask_token.token" in sent
    assert not any("teacher" in k or "centre" in k or "center" in k for k in sent)
    # a site restart: the saved shared + local state gives the same method
    batch = batch_for(method)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        method.loss(batch)[0].backward()
        optimizer.step()
        method.after_optimizer_step()
    assert method.patch_centre.center.abs().sum() > 0
    fresh = build(cfg, seed=7)
    fresh.load_shared_state_dict(method.shared_state_dict())
    fresh.load_local_state_dict(method.local_state_dict())
    for key, value in method.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    method.eval(), fresh.eval()
    assert fresh.loss(batch)[0].item() == pytest.approx(method.loss(batch)[0].item(), rel=1e-6)


def test_layerwise_lr_decay_and_weight_decay_groups_follow_the_closed_form() -> None:
    cfg = config(layerwise_decay=0.8, patch_embed_lr_mult=0.5, weight_decay_final=0.3, schedule_steps=4)
    method = build(cfg)
    trainer = Trainer(PretrainLearner(method), TrainConfig(lr=0.01, weight_decay=0.04, schedule="constant",
                                                           progress=False), total_steps=10)
    layers = method.backbone.model.config.num_hidden_layers
    names = {id(p): n for n, p in method.named_parameters()}
    seen = set()
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            if name.startswith(("head.", "backbone.model.layernorm.")):
                depth = 0
            elif ".layers." in name:
                depth = layers - int(name.split(".layers.")[1].split(".")[0])
            else:  # embeddings and mask token
                depth = layers + 1
            expected = 0.01 * 0.8**depth * (0.5 if "patch_embeddings" in name else 1.0)
            assert group["lr"] == pytest.approx(expected), name
            no_decay = name.endswith(".bias") or "norm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.04), name
    assert seen == {n for n, p in method.named_parameters() if p.requires_grad}
    trainer.train_epoch([batch_for(method, s) for s in range(3)])
    # the hook ran before steps 0, 1, 2: the last one set the cosine value at step 2
    decayed = [g for g in trainer.optimizer.param_groups if g["wd_multiplier"] == 1.0]
    assert decayed and all(g["weight_decay"] == pytest.approx(cosine_momentum(2, 4, 0.04, 0.3)) for g in decayed)
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups if g["wd_multiplier"] == 0.0)
    restored = Trainer(PretrainLearner(build(cfg)), trainer.cfg, total_steps=10)
    restored.load_state_dict(trainer.state_dict())  # the schedule's start survives a site restart
    assert [g["weight_decay_start"] for g in restored.optimizer.param_groups] == [0.04] * len(decayed + [
        g for g in trainer.optimizer.param_groups if g["wd_multiplier"] == 0.0])


def test_sample_level_dp_refuses_koleo_and_sinkhorn_naming_site_dp() -> None:
    from fedecho.config.compose import compose_run_config

    base = ["mode=pretrain", "ssl=dinov2", "model=vit-s16", "federation.privacy.mode=sample"]
    with pytest.raises(ValueError, match="KoLeo .* and Sinkhorn-Knopp .*federation.privacy.mode=site"):
        compose_run_config(base)
    with pytest.raises(ValueError, match="Sinkhorn-Knopp.*ssl.koleo_weight=0 ssl.centering=softmax"):
        compose_run_config(base + ["ssl.koleo_weight=0"])
    cfg = compose_run_config(base + ["ssl.koleo_weight=0", "ssl.centering=softmax"])
    assert cfg.ssl.batch_coupled_parts() == []
    assert config(koleo_weight=0.0, centering="softmax").batch_coupled_parts() == []
    assert build(config(koleo_weight=0.0, centering="softmax")).per_sample_loss
    assert not build(config()).per_sample_loss


def test_dp_compatible_dinov2_loss_is_a_mean_of_per_sample_losses() -> None:
    # iBOT + DINO with softmax centring: frozen centres (eval) -> batch loss = mean of per-item losses
    torch.manual_seed(4)
    method = build(config(koleo_weight=0.0, centering="softmax", mask_probability=1.0, mask_ratio=(0.25, 0.5)))
    method.reset_teacher()
    method.dino_loss.center.normal_()
    method.patch_centre.center.normal_()
    method.eval()
    batch = batch_for(method)
    whole = method.loss(batch)[0].item()
    singles = [method.loss({k: v[i:i + 1] for k, v in batch.items()})[0].item() for i in range(4)]
    assert whole == pytest.approx(float(np.mean(singles)), rel=1e-5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_opacus_per_sample_gradients_of_the_mask_token_match_single_samples() -> None:
    from opacus import GradSampleModule

    # global crops only: opacus replays ViTEmbeddings per sample without interpolate_pos_encoding,
    # so crops of another size than model.image_size fail there (DINO v1 on a ViT alike)
    torch.manual_seed(5)
    augment = AugmentConfig(image_size=SIZE, dino_local_size=16, dino_num_local_crops=0)
    method = build(config(koleo_weight=0.0, centering="softmax", mask_probability=1.0, mask_ratio=(0.25, 0.5),
                          augment=augment))
    method.reset_teacher()
    batch = batch_for(method)
    reference = copy.deepcopy(method)
    centres = (method.dino_loss.center.clone(), method.patch_centre.center.clone())
    GradSampleModule(method)  # training mode: opacus records activations only then
    method.loss(batch)[0].backward()
    for i in range(4):
        reference.dino_loss.center.copy_(centres[0])  # the loss uses the centres from before the batch
        reference.patch_centre.center.copy_(centres[1])
        single = reference.loss({k: v[i:i + 1] for k, v in batch.items()})[0]
        grads = torch.autograd.grad(single, [reference.mask_token.token, reference.head.last_layer.weight_v])
        # per-sample (opacus' einsum) and single-sample (autograd) sums run in another order: the
        # tolerance is relative to each gradient's scale, not to each (possibly near-zero) element
        for got, want in zip((method.mask_token.token.grad_sample[i], method.head.last_layer.weight_v.grad_sample[i]),
                             grads, strict=True):
            assert want.abs().max() > 0
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
