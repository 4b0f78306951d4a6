"""SSL methods end to end on tiny backbones: views, batches, losses, gradients, federation state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedecho.config.ssl import SSL_METHOD_NAMES, AugmentConfig, SSLConfig
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import Sample
from fedecho.ssl import (
    PERMUTATIONS,
    SSL_METHODS,
    build_method,
    collate_views,
    group_by_study,
    inverse_permutation,
    permute_chunks,
)
from fedecho.ssl.ema import cosine_momentum
from fedecho.ssl.views import pick_pair, random_clip


class TinyBackbone(nn.Module):
    """Satisfies the Backbone contract (fedecho/models/base.py) at a few thousand parameters."""

    feature_channels: tuple[int, ...] = ()
    feature_strides: tuple[int, ...] = ()
    in_channels = 1
    embed_dim = 16

    def __init__(self, input_kind: str = "image", norm: str = "batch") -> None:
        super().__init__()
        self.input_kind = input_kind
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if input_kind == "image" else (nn.Conv3d, nn.BatchNorm3d)
        self.lora_targets = ("conv",)
        self.conv = conv(1, 8, 3, stride=2, padding=1)
        self.norm = bn(8) if norm == "batch" else nn.GroupNorm(2, 8)
        self.proj = nn.Linear(8, self.embed_dim)

    @property
    def has_spatial_neck(self) -> bool:
        return False

    def forward_embed(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.conv(x)))
        return self.proj(h.flatten(2).mean(dim=2))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise ValueError("TinyBackbone has no spatial neck")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_embed(x)


def small_config(method: str, **changes) -> SSLConfig:
    augment = AugmentConfig(image_size=16, dino_local_size=8, dino_num_local_crops=2)
    fields = {
        "method": method, "projection_dim": 8, "clip_length": 4, "frame_order_hidden_dim": 16,
        "dino_out_dim": 32, "dino_hidden_dim": 16, "dino_bottleneck_dim": 8, "augment": augment,
    }
    fields.update(changes)
    return SSLConfig(**fields)


def video(patient: str, study: str, item: str, seed: int, frames: int = 6) -> Sample:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (frames, 20, 24), dtype=np.uint8)
    return Sample(source="synthetic", patient_id=patient, study_id=study, item_id=item, frames=pixels)


#: Methods the tiny CNN can run; dinov2 needs ViT patch tokens (tests/ssl/test_dinov2_method.py).
TINY_METHODS = tuple(n for n in SSL_METHOD_NAMES if n != "dinov2")

SAMPLES = [video(f"p{i // 2}", f"s{i // 2}", f"v{i}", seed=i) for i in range(8)]  # 4 studies x 2 videos


def items_for(method) -> list:
    return group_by_study(SAMPLES) if method.input_unit == "study" else SAMPLES[:4]


def make_batch(method, seed: int = 0) -> dict[str, torch.Tensor]:
    items = items_for(method)
    return method.collate([method.make_views(item, np.random.default_rng((seed, i))) for i, item in enumerate(items)])


def backbone_for(method_name: str, norm: str = "batch") -> TinyBackbone:
    return TinyBackbone(SSL_METHODS.get(method_name).input_kind, norm)


EXPECTED_KEYS = {
    "simclr": {"view_a": (4, 1, 16, 16), "view_b": (4, 1, 16, 16)},
    "multi_instance": {"view_a": (4, 1, 4, 16, 16), "view_b": (4, 1, 4, 16, 16), "group": (4,)},
    "echoclr": {
        "view_a": (4, 1, 4, 16, 16), "view_b": (4, 1, 4, 16, 16), "group": (4,),
        "order_clip": (4, 1, 4, 16, 16), "order_label": (4,),
    },
    "dino": {"global_crops": (4, 2, 1, 16, 16), "local_crops": (4, 2, 1, 8, 8)},
}


def train(method, batch, steps: int, teacher_update: bool = True) -> list[float]:
    """Adam steps on a fixed batch; checks finite losses and gradients reaching the encoder."""
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss, logs = method.loss(batch)
        loss.backward()
        grad = method.backbone.conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        optimizer.step()
        if teacher_update:
            method.after_optimizer_step()
        assert np.isfinite(loss.item()) and logs["loss"] == pytest.approx(loss.item())
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", TINY_METHODS)
def test_each_method_trains_end_to_end(name: str) -> None:
    torch.manual_seed(0)
    method = build_method(backbone_for(name), small_config(name))
    batch = make_batch(method)
    assert {k: tuple(v.shape) for k, v in batch.items()} == EXPECTED_KEYS[name]
    losses = train(method, batch, 5)
    if name == "dino":
        # DINO's targets move (EMA teacher, centre), so its loss need not fall on a fixed batch;
        # with teacher and centre held (eval mode, no EMA) the student must fit them.
        method.eval()
        losses = train(method, batch, 5, teacher_update=False)
    assert losses[-1] < losses[0], losses


def test_registry_matches_config_and_is_loud() -> None:
    assert SSL_METHODS.names() == sorted(SSL_METHOD_NAMES)
    with pytest.raises(ValueError, match="unknown SSL method 'byol'.*dino, dinov2, echoclr, multi_instance, simclr"):
        SSL_METHODS.get("byol")
    kinds = {n: SSL_METHODS.get(n).per_sample_loss for n in SSL_METHOD_NAMES}
    assert kinds == {"simclr": False, "multi_instance": False, "echoclr": False, "dino": True, "dinov2": False}


def test_wrong_backbone_kind_names_the_fix() -> None:
    with pytest.raises(ValueError, match="needs a backbone with input_kind='clip'.*r3d18"):
        build_method(TinyBackbone("image"), small_config("echoclr"))
    with pytest.raises(ValueError, match="needs a backbone with input_kind='image'"):
        build_method(TinyBackbone("clip"), small_config("simclr"))


@pytest.mark.parametrize("name", TINY_METHODS)
def test_shared_and_local_state_partition_the_method(name: str) -> None:
    method = build_method(backbone_for(name), small_config(name))
    shared, local = set(method.shared_parameter_names()), set(method.local_state_dict())
    assert shared.isdisjoint(local) and shared | local == set(method.state_dict())
    assert any(n.startswith("backbone.") for n in shared)
    assert not any(n.startswith("teacher_") for n in shared)
    assert "backbone.norm.running_mean" in local  # BatchNorm statistics stay on the site
    if name == "dino":
        assert {"dino_loss.center", "step", "teacher_initialized"} <= local
        assert any(n.startswith("teacher_backbone.") for n in local)
        assert "head.last_layer.weight_g" not in shared  # frozen gain


def test_dino_state_round_trips_into_a_fresh_method() -> None:
    torch.manual_seed(1)
    cfg = small_config("dino")
    trained = build_method(backbone_for("dino"), cfg)
    batch = make_batch(trained)
    optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        trained.loss(batch)[0].backward()
        optimizer.step()
        trained.after_optimizer_step()
    fresh = build_method(backbone_for("dino"), cfg)
    fresh.load_shared_state_dict(trained.shared_state_dict())
    fresh.load_local_state_dict(trained.local_state_dict())
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert int(fresh.step) == 2 and bool(fresh.teacher_initialized)
    trained.eval(), fresh.eval()
    assert fresh.loss(batch)[0].item() == pytest.approx(trained.loss(batch)[0].item(), rel=1e-6)
    with pytest.raises(ValueError, match="missing.*unexpected"):
        fresh.load_local_state_dict({"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shared state does not match"):
        fresh.load_shared_state_dict({})


def test_dino_teacher_starts_from_the_student_loaded_before_the_first_step() -> None:
    cfg = small_config("dino")
    global_model = build_method(backbone_for("dino"), cfg)
    torch.manual_seed(123)
    site = build_method(backbone_for("dino"), cfg)  # different random init
    site.load_shared_state_dict(global_model.shared_state_dict())
    site.loss(make_batch(site))
    for (name, t), s in zip(site.teacher_backbone.state_dict().items(), site.backbone.state_dict().values()):
        if t.is_floating_point() and "running" not in name:
            assert torch.equal(t, s), name


def test_dino_teacher_gets_no_gradient_and_follows_ema_schedule() -> None:
    cfg = small_config("dino", teacher_momentum=0.75, teacher_momentum_final=1.0, schedule_steps=10)
    method = build_method(backbone_for("dino"), cfg)
    batch = make_batch(method)
    loss, _ = method.loss(batch)
    loss.backward()
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    assert all(p.grad is None for p in method.teacher_head.parameters())
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)  # a visible student change
    teacher_before = {k: v.clone() for k, v in method.teacher_backbone.named_parameters()}
    method.after_optimizer_step()
    m = cosine_momentum(0, 10, 0.75, 1.0)
    assert m == 0.75
    for name, student in method.backbone.named_parameters():
        expected = m * teacher_before[name] + (1 - m) * student
        assert torch.equal(dict(method.teacher_backbone.named_parameters())[name], expected), name
    assert int(method.step) == 1


def test_dino_loss_is_a_mean_of_per_sample_losses() -> None:
    # per_sample_loss=True promises DP-SGD compatibility: with per-sample norms (GroupNorm) and the
    # centre frozen (eval mode), the batch loss is the mean of each sample's loss.
    torch.manual_seed(2)
    method = build_method(backbone_for("dino", norm="group"), small_config("dino"))
    method.reset_teacher()
    method.dino_loss.center.normal_()
    method.eval()
    batch = make_batch(method)
    whole = method.loss(batch)[0].item()
    singles = [method.loss({k: v[i : i + 1] for k, v in batch.items()})[0].item() for i in range(4)]
    assert whole == pytest.approx(float(np.mean(singles)), rel=1e-5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_dino_per_sample_gradients_with_opacus_match_single_sample_gradients() -> None:
    import copy

    from opacus import GradSampleModule

    torch.manual_seed(3)
    method = build_method(backbone_for("dino", norm="group"), small_config("dino"))
    method.reset_teacher()
    centre = torch.randn(1, 32)
    method.dino_loss.center.copy_(centre)
    batch = make_batch(method)
    reference = copy.deepcopy(method)
    GradSampleModule(method)  # hooks the method's modules in place (training mode)
    method.loss(batch)[0].backward()
    for i in range(4):
        reference.dino_loss.center.copy_(centre)
        single = reference.loss({k: v[i : i + 1] for k, v in batch.items()})[0]
        grads = torch.autograd.grad(single, [reference.backbone.conv.weight, reference.head.last_layer.weight_v])
        torch.testing.assert_close(method.backbone.conv.weight.grad_sample[i], grads[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(method.head.last_layer.weight_v.grad_sample[i], grads[1], rtol=1e-4, atol=1e-6)


def test_dino_without_local_crops_uses_the_two_global_crops() -> None:
    cfg = small_config("dino", augment=AugmentConfig(image_size=16, dino_num_local_crops=0))
    method = build_method(backbone_for("dino"), cfg)
    batch = make_batch(method)
    assert batch["local_crops"].shape[:2] == (4, 0)
    loss, logs = method.loss(batch)
    assert torch.isfinite(loss) and logs["teacher_temp"] == pytest.approx(0.04)


def test_multi_instance_views_come_from_two_different_videos_of_one_study() -> None:
    # constant frames and no intensity/crop randomness: a view's value tells which video it is
    augment = AugmentConfig(image_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0, blur_prob=0.0)
    method = build_method(TinyBackbone("clip"), small_config("echoclr", augment=augment))
    values = [40, 80, 120, 160, 200]
    studies = [
        Sample("synthetic", "p1", "s1", f"v{v}", np.full((6, 16, 16), v, np.uint8)) for v in values[:3]
    ] + [Sample("synthetic", "p1", "s2", f"v{v}", np.full((6, 16, 16), v, np.uint8)) for v in values[3:]]
    groups = group_by_study(studies + [Sample("synthetic", "p9", "s9", "lonely", np.zeros((6, 16, 16), np.uint8))])
    assert [[s.item_id for s in g] for g in groups] == [["v40", "v80", "v120"], ["v160", "v200"]]
    assert [len(g) for g in group_by_study(studies, level="patient")] == [5]
    rng = np.random.default_rng(0)
    for _ in range(20):
        views = method.make_views(groups[0], rng)
        a, b = (round(float(views[k].mean() * 0.5 + 0.5) * 255) for k in ("view_a", "view_b"))
        assert a != b and {a, b} <= set(values[:3])
        assert views["group"] == "p1/s1"
        restored = permute_chunks(views["order_clip"], inverse_permutation(PERMUTATIONS[views["order_label"]]), 1)
        np.testing.assert_array_equal(restored, views["view_a"])


def test_video_level_positives_are_two_clips_of_one_video() -> None:
    """positive_level=video (one video per study, e.g. EchoNet-LVH): every video is its own group
    and both views come from it, at different clip positions."""
    augment = AugmentConfig(image_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0, blur_prob=0.0)
    method = build_method(TinyBackbone("clip"), small_config("echoclr", augment=augment, positive_level="video"))
    ramp = np.stack([np.full((16, 16), 10 * t, np.uint8) for t in range(24)])  # frame t has value 10 t
    only = Sample("synthetic", "p1", "s1", "v1", ramp)
    groups = group_by_study([only, Sample("synthetic", "p2", "s2", "v2", ramp)], level="video")
    assert [[s.item_id for s in g] for g in groups] == [["v1"], ["v2"]]
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(10):
        views = method.make_views(groups[0], rng)
        assert views["group"] == "p1/s1/v1"
        starts.add((float(views["view_a"].mean()), float(views["view_b"].mean())))
    assert any(a != b for a, b in starts)  # the two clips start at different frames
    with pytest.raises(ValueError, match="'study', 'patient' or 'video'"):
        small_config("echoclr", positive_level="frame")


def test_pick_pair_covers_all_ordered_pairs() -> None:
    rng = np.random.default_rng(0)
    pairs = {pick_pair("abc", rng) for _ in range(300)}
    assert pairs == {(x, y) for x in "abc" for y in "abc" if x != y}
    with pytest.raises(ValueError, match=">= 2 videos"):
        pick_pair(["a"], rng)


def test_random_clip_windows_and_loops() -> None:
    frames = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    sample = Sample("synthetic", "p", "s", "v", frames, path="/data/v.avi")
    clip = random_clip(sample, 4, 2, np.random.default_rng(0))
    t = np.rint(clip[0, :, 0, 0] * 255).astype(int)
    assert clip.shape == (1, 4, 2, 2) and clip.dtype == np.float32 and np.all(np.diff(t) == 2)
    looped = random_clip(Sample("synthetic", "p", "s", "v", frames[:3]), 5, 1, np.random.default_rng(0))
    assert np.rint(looped[0, :, 0, 0] * 255).astype(int).tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(EchoDataError, match="single image"):
        image = Sample("synthetic", "p", "s", "img", frames[0], path="/data/img.png")
        random_clip(image, 4, 1, np.random.default_rng(0))
    bad = Sample("synthetic", "p", "s", "v", frames.astype(np.float32) * 2, path="/data/bad.avi")
    with pytest.raises(EchoDataError, match="/data/bad.avi.*must lie in \\[0, 1\\]"):
        random_clip(bad, 4, 1, np.random.default_rng(0))


def test_collate_turns_strings_into_group_ids() -> None:
    batch = collate_views([
        {"x": np.zeros(2, np.float32), "group": "p1/s1", "label": 3},
        {"x": np.ones(2, np.float32), "group": "p2/s1", "label": 5},
        {"x": np.ones(2, np.float32), "group": "p1/s1", "label": 7},
    ])
    assert batch["group"].tolist() == [0, 1, 0] and batch["label"].dtype == torch.long
    assert batch["x"].shape == (3, 2)


def test_config_validation_names_the_fix() -> None:
    assert SSLConfig(method="simclr").temperature == 0.5
    assert SSLConfig(method="echoclr").temperature == 0.05
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SSLConfig(temperature=0.0)
    with pytest.raises(ValueError, match="set it to 4"):
        SSLConfig(method="echoclr", frame_order_frames=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        SSLConfig(method="echoclr", clip_length=10)
    with pytest.raises(ValueError, match="choose one of simclr, multi_instance, echoclr, dino"):
        SSLConfig(method="moco")
    with pytest.raises(ValueError, match="center_momentum"):
        SSLConfig(method="dino", center_momentum=1.0)
    assert isinstance(SSLConfig(augment={"image_size": 64}).augment, AugmentConfig)


@pytest.mark.parametrize(
    ("method_name", "backbone_name", "size"),
    [("dino", "vit-tiny", 32), ("echoclr", "r3d-tiny", 16), ("simclr", "resnet18", 16)],
)
def test_methods_on_fedecho_backbones(method_name: str, backbone_name: str, size: int) -> None:
    from fedecho import models
    from fedecho.config.model import BackboneConfig

    overrides = {"layers": [1, 1, 1, 1]} if backbone_name == "resnet18" else {}
    backbone = models.build_backbone(BackboneConfig(name=backbone_name, image_size=size, overrides=overrides))
    augment = AugmentConfig(image_size=size, dino_local_size=16, dino_num_local_crops=1)
    method = build_method(backbone, small_config(method_name, augment=augment, clip_length=4))
    items = group_by_study(SAMPLES[:4]) if method.input_unit == "study" else SAMPLES[:2]
    batch = method.collate([method.make_views(it, np.random.default_rng(i)) for i, it in enumerate(items)])
    loss, _ = method.loss(batch)
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and any(g is not None and g.abs().sum() > 0 for g in grads)
    method.after_optimizer_step()
