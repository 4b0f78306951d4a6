"""Every task on tiny contract backbones: heads, shapes, per-sample losses, training, metrics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fedecho.config.task import TaskConfig
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import AS_GRADES, VIEWS, ItemRecord, Sample
from fedecho.tasks import TASKS, build_task
from fedecho.tasks.heads import HeatmapLandmarkHead, SegFormerDecoder, TemporalPoolingHead
from fedecho.tasks.segmentation import soft_dice_loss

SIZE = 32
B = 4


# --- tiny backbones satisfying the models contract ------------------------------------------------
class TinyImageBackbone(nn.Module):
    """Image backbone with a two-scale spatial neck (strides 4 and 8)."""

    input_kind = "image"
    in_channels = 1
    embed_dim = 16
    feature_channels: tuple[int, ...] = (8, 16)
    feature_strides: tuple[int, ...] = (4, 8)
    lora_targets = ("stem",)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(self.in_channels, 8, 3, stride=4, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    @property
    def has_spatial_neck(self) -> bool:
        return bool(self.feature_channels)

    def _maps(self, x: Tensor) -> list[Tensor]:
        f1 = torch.relu(self.stem(x))
        return [f1, torch.relu(self.down(f1))]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        if not self.feature_channels:
            raise ValueError("no spatial neck")
        return self._maps(x)

    def forward_embed(self, x: Tensor) -> Tensor:
        return self._maps(x)[-1].mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_embed(x)


class TinyNoNeckBackbone(TinyImageBackbone):
    feature_channels = ()
    feature_strides = ()


class TinyRGBBackbone(TinyImageBackbone):
    in_channels = 3


class TinyClipBackbone(nn.Module):
    input_kind = "clip"
    in_channels = 1
    embed_dim = 12
    feature_channels: tuple[int, ...] = ()
    feature_strides: tuple[int, ...] = ()
    lora_targets = ("conv",)
    has_spatial_neck = False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 12, 3, stride=(1, 4, 4), padding=1)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        raise ValueError("no spatial neck")

    def forward_embed(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_embed(x)


# --- fixed tiny batches -------------------------------------------------------------------------
def _disk(center: tuple[float, float], radius: float, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2)


def _batch(task_name: str, gen: torch.Generator) -> dict[str, Tensor]:
    """A fixed batch whose labels the image determines (so a few steps can fit it)."""
    images = torch.zeros(B, 1, SIZE, SIZE)
    masks = torch.zeros(B, SIZE, SIZE, dtype=torch.int64)
    for i in range(B):
        disk = _disk((10 + 4 * i, 12 + 3 * i), 4 + i)
        ring = _disk((10 + 4 * i, 12 + 3 * i), 6 + i) & ~disk
        masks[i][torch.from_numpy(disk)] = 1
        masks[i][torch.from_numpy(ring)] = 2
        images[i, 0] = 0.2 + 0.6 * torch.from_numpy(disk).float() + 0.05 * torch.rand(SIZE, SIZE, generator=gen)
    batch: dict[str, Tensor] = {"image": images, "mask": masks}
    batch["label"] = torch.tensor([0, 1, 2, 1])
    batch["target"] = torch.tensor([[40.0], [55.0], [62.0], [70.0]])
    batch["phase"] = torch.tensor([0, 1, 0, 1])
    batch["clip"] = images[:, :, None].repeat(1, 1, 3, 1, 1)
    points = torch.tensor([[[10.0 + i, 8.0], [10.0 + i, 20.0]] for i in range(B)]).repeat(1, 3, 1)
    batch["points"] = points  # (B, 6, 2): 3 measurements
    batch["point_mask"] = torch.ones(B, 6)
    batch["point_mask"][0, 4:] = 0
    batch["mm_per_pixel"] = torch.full((B, 2), 0.5)
    return batch


def _cfg(name: str, **kwargs) -> TaskConfig:
    return TaskConfig(name=name, image_size=SIZE, clip_length=3, decoder_dim=16, **kwargs)


CASES = [
    ("view", TinyImageBackbone, (B, len(VIEWS))),
    ("as_severity", TinyImageBackbone, (B, len(AS_GRADES))),
    ("as_present", TinyImageBackbone, (B, 2)),
    ("lv_seg", TinyImageBackbone, (B, 4, SIZE, SIZE)),
    ("ef", TinyClipBackbone, (B, 1)),
    ("ef", TinyImageBackbone, (B, 1)),
    ("volumes", TinyImageBackbone, (B, 1)),
    ("age", TinyNoNeckBackbone, (B, 1)),
    ("lvh", TinyImageBackbone, (B, 6, 2)),
]


def _fix_labels(name: str, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    if name == "as_present":
        batch["label"] = batch["label"].clamp(max=1)
    return batch


@pytest.mark.parametrize(("name", "backbone_cls", "shape"), CASES, ids=[f"{c[0]}-{c[1].__name__}" for c in CASES])
def test_task_forward_loss_training_and_metrics(name, backbone_cls, shape):
    torch.manual_seed(0)
    task = build_task(_cfg(name))
    backbone = backbone_cls()
    head = task.build_head(backbone)
    batch = _fix_labels(name, _batch(name, torch.Generator().manual_seed(1)))
    outputs = task.forward(backbone, head, batch)
    assert tuple(outputs.shape) == shape

    # loss = mean of per-sample losses, and each depends on its own sample only (DP-SGD)
    per_sample = task.per_sample_loss(outputs, batch)
    assert per_sample.shape == (B,) and torch.isfinite(per_sample).all()
    assert torch.allclose(task.loss(outputs, batch), per_sample.mean())
    for i in range(B):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        assert torch.allclose(task.per_sample_loss(outputs[i : i + 1], one), per_sample[i : i + 1], atol=1e-6)

    # a few optimizer steps on the fixed batch reduce the loss
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        loss = task.loss(task.forward(backbone, head, batch), batch)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(task.loss(task.forward(backbone, head, batch), batch))
    assert final < 0.9 * first, (first, final)

    with torch.no_grad():
        metrics = task.metrics(task.forward(backbone, head, batch), batch)
    assert task.primary_metric in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert math.isfinite(metrics["loss"])


@pytest.mark.parametrize(("name", "backbone_cls", "shape"), CASES, ids=[f"{c[0]}-{c[1].__name__}" for c in CASES])
def test_default_heads_pass_opacus_validation(name, backbone_cls, shape):
    """Heads train under DP-SGD: no layer that mixes samples (BatchNorm only when asked for)."""
    validators = pytest.importorskip("opacus.validators")
    head = build_task(_cfg(name)).build_head(backbone_cls())
    assert validators.ModuleValidator.validate(head, strict=False) == []
    if name == "lv_seg":
        batch_norm_head = build_task(_cfg(name, head_norm="batch")).build_head(backbone_cls())
        assert validators.ModuleValidator.validate(batch_norm_head, strict=False)


def test_clip_task_on_image_backbone_uses_temporal_pooling():
    task = build_task(_cfg("ef", temporal_pool="attention"))
    head = task.build_head(TinyImageBackbone())
    assert isinstance(head, TemporalPoolingHead) and head.pool == "attention"
    weights = head.frame_weights(torch.randn(2, 5, 16))
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    # on a clip backbone the head reads forward_embed directly
    assert not isinstance(task.build_head(TinyClipBackbone()), TemporalPoolingHead)


def test_mean_pooled_clip_of_identical_frames_equals_the_frame_prediction():
    """EF on an image backbone: T copies of one frame predict what the frame alone gives."""
    torch.manual_seed(0)
    task = build_task(_cfg("ef"))
    backbone = TinyImageBackbone()
    head = task.build_head(backbone)
    image = torch.rand(2, 1, SIZE, SIZE)
    clip_out = task.forward(backbone, head, {"clip": image[:, :, None].repeat(1, 1, 3, 1, 1)})
    expected = task.offset + task.scale * head.mlp(backbone.forward_embed(image))
    assert torch.allclose(clip_out, expected, atol=1e-5)


def test_regression_outputs_are_in_target_units():
    task = build_task(_cfg("ef", target_offset=50.0, target_scale=10.0))
    backbone = TinyNoNeckBackbone()
    head = task.build_head(TinyClipBackbone())
    for p in head.parameters():
        nn.init.zeros_(p)
    with torch.no_grad():
        out = task.forward(TinyClipBackbone(), head, {"clip": torch.rand(2, 1, 3, SIZE, SIZE)})
    assert torch.allclose(out, torch.full((2, 1), 50.0))
    # MSE on standardised targets: (60 - 50) / 10 = 1 -> loss 1
    assert float(task.loss(out, {"target": torch.full((2, 1), 60.0)})) == pytest.approx(1.0)
    assert backbone.embed_dim == 16


def test_volumes_metrics_split_by_phase():
    task = build_task(_cfg("volumes"))
    outputs = torch.tensor([[110.0], [50.0], [130.0], [40.0]])
    batch = {"target": torch.tensor([[100.0], [45.0], [120.0], [45.0]]), "phase": torch.tensor([0, 1, 0, 1])}
    metrics = task.metrics(outputs, batch)
    assert metrics["mae/edv"] == pytest.approx(10.0)
    assert metrics["mae/esv"] == pytest.approx(5.0)
    assert metrics["mae"] == pytest.approx(7.5)
    assert metrics["bias"] == pytest.approx((10 + 5 + 10 - 5) / 4)


def test_soft_dice_loss_closed_form():
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    target[0, :2] = 1
    perfect = torch.where(torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).bool(), 50.0, -50.0)
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-5)
    # uniform logits: p = 0.5 everywhere; Σp·g = 4, Σp = 8, Σg = 8 -> Dice 0.5
    assert float(soft_dice_loss(torch.zeros(1, 2, 4, 4), target)) == pytest.approx(0.5, abs=1e-5)


def test_segmentation_logits_are_upsampled_to_input_resolution():
    task = build_task(_cfg("lv_seg", classes=("lv_cavity",)))
    backbone = TinyImageBackbone()
    head = task.build_head(backbone)
    assert isinstance(head, SegFormerDecoder)
    assert tuple(head(backbone.forward_features(torch.rand(1, 1, SIZE, SIZE))).shape) == (1, 2, SIZE // 4, SIZE // 4)
    assert tuple(task.forward(backbone, head, {"image": torch.rand(1, 1, SIZE, SIZE)}).shape) == (1, 2, SIZE, SIZE)


def test_segmentation_metrics_accept_argmaxed_labels():
    task = build_task(_cfg("lv_seg", num_classes=2))
    mask = torch.zeros(2, 8, 8, dtype=torch.int64)
    mask[:, 2:6, 2:6] = 1
    metrics = task.metrics(mask.clone(), {"mask": mask})
    assert metrics["dice"] == 1.0 and metrics["dice/lv_cavity"] == 1.0 and "loss" not in metrics


def test_lvh_metrics_hand_computed():
    task = build_task(_cfg("lvh", measurements=("IVSd", "LVIDd")))
    true = torch.tensor([[[10.0, 10.0], [10.0, 20.0], [10.0, 20.0], [10.0, 60.0]]])  # lengths 10 px, 40 px
    pred = torch.tensor([[[10.0, 10.0], [10.0, 22.0], [13.0, 20.0], [13.0, 56.0]]])  # 12 px, 36 px
    batch = {
        "image": torch.zeros(1, 1, SIZE, SIZE),
        "points": true,
        "point_mask": torch.ones(1, 4),
        "mm_per_pixel": torch.tensor([[0.5, 0.25]]),  # rows 0.5 mm, columns 0.25 mm: vertical calipers
    }
    metrics = task.metrics(pred, batch)
    assert metrics["mae_px/IVSd"] == pytest.approx(2.0) and metrics["mae_px/LVIDd"] == pytest.approx(4.0)
    assert metrics["mae_mm/IVSd"] == pytest.approx(1.0) and metrics["mae_mm/LVIDd"] == pytest.approx(2.0)
    assert metrics["mae_mm"] == pytest.approx(1.5)
    # endpoint errors: 0, 1 mm, 0.75 mm, hypot(0.75, 2) mm
    assert metrics["point_error_mm"] == pytest.approx((0 + 1 + 0.75 + math.hypot(0.75, 2)) / 4)


def test_heatmap_head_soft_argmax_finds_a_peak():
    head = HeatmapLandmarkHead((4,), num_points=1, embed_dim=8)
    heatmap = torch.full((1, 1, 8, 8), -30.0)
    heatmap[0, 0, 2, 5] = 30.0
    from fedecho.tasks.heads import _soft_argmax

    xy = _soft_argmax(heatmap, (32, 32))  # cell (row 2, col 5) of stride 4: centre (5.5·4 - 0.5, 2.5·4 - 0.5)
    assert torch.allclose(xy, torch.tensor([[[21.5, 9.5]]]), atol=1e-3)
    assert tuple(head([torch.rand(2, 4, 8, 8)], (32, 32)).shape) == (2, 1, 2)


def test_lvh_regression_head_runs_without_a_neck():
    task = build_task(_cfg("lvh", landmark_head="regression"))
    backbone = TinyNoNeckBackbone()
    head = task.build_head(backbone)
    out = task.forward(backbone, head, {"image": torch.rand(2, 1, SIZE, SIZE)})
    assert tuple(out.shape) == (2, 6, 2) and (out > -0.5).all() and (out < SIZE - 0.5).all()


def test_grey_input_is_repeated_for_rgb_backbones():
    task = build_task(_cfg("view"))
    backbone = TinyRGBBackbone()
    out = task.forward(backbone, task.build_head(backbone), {"image": torch.rand(2, 1, SIZE, SIZE)})
    assert tuple(out.shape) == (2, len(VIEWS))


# --- backbone checks and configuration errors -----------------------------------------------------
def test_check_backbone_errors_name_the_fix():
    with pytest.raises(ValueError, match="no spatial neck; use segformer-b0/resnet18/vit-s16"):
        build_task(_cfg("lv_seg")).check_backbone(TinyNoNeckBackbone())
    with pytest.raises(ValueError, match="takes single images .* use an image backbone"):
        build_task(_cfg("view")).check_backbone(TinyClipBackbone())
    with pytest.raises(ValueError, match="landmark_head='regression'"):
        build_task(_cfg("lvh")).build_head(TinyNoNeckBackbone())
    with pytest.raises(ValueError, match="does not follow the Backbone contract"):
        build_task(_cfg("view")).check_backbone(nn.Linear(2, 2))
    build_task(_cfg("ef")).check_backbone(TinyClipBackbone())  # clip tasks take both kinds
    build_task(_cfg("ef")).check_backbone(TinyImageBackbone())


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task 'segmentation'; valid tasks: age, as_present, .*view, volumes"):
        build_task(TaskConfig(name="segmentation"))
    assert len(TASKS) == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "view", "classes": ("A4C", "A5C")}, r"\['A5C'\] are not in its vocabulary"),
        ({"name": "view", "num_classes": 3}, "set classes to the 3 labels"),
        ({"name": "as_present", "classes": ("no_AS", "severe_AS")}, "use 'as_severity'"),
        ({"name": "lv_seg", "num_classes": 3}, "ambiguous"),
        ({"name": "lv_seg", "classes": ("aorta",)}, "not mask structures"),
        ({"name": "lv_seg", "classes": ("lv_cavity",), "num_classes": 4}, "make 2"),
        ({"name": "lvh", "measurements": ("IVSd", "EF")}, r"\['EF'\] unknown"),
        ({"name": "ef", "num_classes": 2}, "regression"),
        ({"name": "volumes", "label_key": "lv_volume"}, "leave TaskConfig.label_key unset"),
    ],
)
def test_task_configuration_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_task(TaskConfig(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 4}, "image_size"),
        ({"image_size": (112, 112, 3)}, "image_size"),
        ({"clip_length": 0}, "clip_length"),
        ({"frame_sampling": "first"}, "frame_sampling must be one of random, center"),
        ({"classes": "A4C"}, r"write classes=\['A4C'\]"),
        ({"classes": ("A4C", "A4C")}, "twice"),
        ({"num_classes": 1}, "num_classes must be an int >= 2"),
        ({"decoder_dim": 20}, "multiple of 8"),
        ({"target_scale": 0.0}, "target_scale must be > 0"),
        ({"dice_weight": 0.0, "ce_weight": 0.0}, "not both 0"),
        ({"head_dropout": 1.0}, "head_dropout"),
        ({"name": ""}, "task name"),
    ],
)
def test_task_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig(**kwargs)


def test_task_config_normalises_lists():
    cfg = TaskConfig(name="view", classes=["A4C", "A2C"], image_size=[64, 96], measurements=["IVSd"])
    assert cfg.classes == ("A4C", "A2C") and cfg.image_size == (64, 96) and cfg.measurements == ("IVSd",)
    assert TaskConfig(image_size=48).image_size == (48, 48)


# --- label mapping ----------------------------------------------------------------------------------
def _record(labels: dict, path: str = "/data/x.png") -> ItemRecord:
    return ItemRecord(source="t", patient_id="p", study_id="s", item_id="i", path=path, labels=labels)


def test_view_subset_maps_labels_and_excludes_the_rest():
    task = build_task(TaskConfig(name="view", classes=("A2C", "A4C")))
    assert task.class_to_index == {"A2C": 0, "A4C": 1}
    assert task.example_keys(_record({"view": "A4C"})) == [None]
    assert task.example_keys(_record({"view": "PLAX"})) == []  # valid view, not configured
    assert task.example_keys(_record({})) == []
    sample = Sample("t", "p", "s", "i", np.zeros((20, 20), np.uint8), labels={"view": "A4C"})
    assert task.make_example(sample, None, np.random.default_rng(0))["label"] == 1
    with pytest.raises(EchoDataError, match=r"/data/x.png: label view='A5C' is not one of"):
        task.example_keys(_record({"view": "A5C"}))


def test_configured_label_key_is_really_read():
    task = build_task(TaskConfig(name="view", label_key="expert_view", classes=("apical", "parasternal")))
    record = _record({"view": "A4C", "expert_view": "parasternal"})
    assert task.example_keys(record) == [None]
    assert task.example_keys(_record({"view": "A4C"})) == []
    sample = Sample("t", "p", "s", "i", np.zeros((20, 20), np.uint8), labels=dict(record.labels))
    assert task.make_example(sample, None, np.random.default_rng(0))["label"] == 1

    age = build_task(TaskConfig(name="age", label_key="age_at_scan"))
    assert age.example_keys(_record({"age": 50.0})) == []
    assert age.example_keys(_record({"age_at_scan": 50.0})) == [None]


def test_as_present_derives_binary_labels():
    task = build_task(TaskConfig(name="as_present"))
    frames = np.zeros((20, 20), np.uint8)
    samples = [Sample("t", "p", "s", "i", frames, labels={"as_grade": g}) for g in AS_GRADES]
    labels = [task.make_example(s, None, np.random.default_rng(0))["label"] for s in samples]
    assert labels == [0, 1, 1, 1, 1]


def test_regression_labels_missing_or_nan_give_no_example():
    task = build_task(TaskConfig(name="ef"))
    assert task.example_keys(_record({"ef": float("nan")})) == []
    assert task.example_keys(_record({"ef": 61.2})) == [None]
    assert task.example_keys(_record({"ef": 61.2, "phase": "ED"})) == []  # a CAMUS ED image is no clip
    with pytest.raises(EchoDataError, match="not a number"):
        task.example_keys(_record({"ef": "high"}))


# --- the registered backbones (fedecho.models) ---------------------------------------------------
REAL_CASES = [
    ("lv_seg", "segformer-tiny", (2, 4, 32, 32)),
    ("view", "resnet18", (2, len(VIEWS))),
    ("lvh", "vit-tiny", (2, 6, 2)),
    ("ef", "vit-tiny", (2, 1)),
    ("ef", "r3d-tiny", (2, 1)),
]


@pytest.mark.parametrize(("name", "backbone_name", "shape"), REAL_CASES)
def test_tasks_on_registered_backbones(name, backbone_name, shape):
    import fedecho.config.model as model_cfg
    import fedecho.models as models

    torch.manual_seed(0)
    backbone = models.build_backbone(model_cfg.BackboneConfig(name=backbone_name, image_size=SIZE))
    task = build_task(_cfg(name))
    head = task.build_head(backbone)
    batch = _batch(name, torch.Generator().manual_seed(1))
    batch = {k: v[:2] for k, v in batch.items()}
    outputs = task.forward(backbone, head, batch)
    assert tuple(outputs.shape) == shape
    loss = task.loss(outputs, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_image_task_on_registered_clip_backbone_names_the_fix():
    import fedecho.config.model as model_cfg
    import fedecho.models as models

    backbone = models.build_backbone(model_cfg.BackboneConfig(name="r3d-tiny", image_size=SIZE))
    with pytest.raises(ValueError, match=r"backbone 'r3d-tiny' .* use an image backbone"):
        build_task(_cfg("lv_seg")).build_head(backbone)
