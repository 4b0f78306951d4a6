"""U-Net backbone: shapes, parameter count against the closed form, norm option, LoRA on its
convolutions, lv_seg through the task contract, and DP-SGD (opacus) per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedecho.config.model import BackboneConfig, LoraConfig
from fedecho.models import build_backbone


def unet(width: int = 4, depth: int = 2, norm: str = "batch", **kw):
    return build_backbone(BackboneConfig(name="unet", norm=norm, overrides={"width": width, "depth": depth}, **kw))


def expected_parameters(in_ch: int, w: int, d: int, norm_params_per_channel: int = 2) -> int:
    """Closed form: DoubleConv(a, b) = 9ab + 9b² (no conv bias) + 2 norms × 2b affine;
    UpBlock(a -> b) = reduce (ab + b) + DoubleConv(2b, b)."""
    def double(a: int, b: int) -> int:
        return 9 * a * b + 9 * b * b + 2 * norm_params_per_channel * b

    ch = [w * 2**i for i in range(d + 1)]
    total = double(in_ch, ch[0]) + sum(double(ch[i - 1], ch[i]) for i in range(1, d + 1))
    total += sum(ch[i + 1] * ch[i] + ch[i] + double(2 * ch[i], ch[i]) for i in range(d))
    return total


@pytest.mark.parametrize(("width", "depth"), [(4, 2), (3, 3), (8, 1)])
def test_parameter_count_matches_closed_form(width, depth):
    backbone = unet(width, depth)
    assert sum(p.numel() for p in backbone.parameters()) == expected_parameters(1, width, depth)
    # width 4, depth 2 by hand: enc 9·1·4+9·16+16=196, 9·4·8+9·64+32=896, 9·8·16+9·256+64=3520;
    # dec level 1: 16·8+8 + 9·16·8+9·64+32 = 136+1760, level 0: 8·4+4 + 9·8·4+9·16+16 = 36+448
    assert expected_parameters(1, 4, 2) == 196 + 896 + 3520 + 136 + 1760 + 36 + 448


@pytest.mark.parametrize("side", [32, 37])
def test_shapes_features_and_embedding(side):
    backbone = unet(4, 3)
    x = torch.randn(2, 1, side, side)
    (features,) = backbone.forward_features(x)
    assert features.shape == (2, 4, side, side)
    assert backbone.feature_channels == (4,) and backbone.feature_strides == (1,)
    assert backbone.forward_embed(x).shape == (2, backbone.embed_dim) and backbone.embed_dim == 32


def test_defaults_and_bad_overrides():
    backbone = build_backbone(BackboneConfig(name="unet"))
    assert (backbone.width, backbone.depth) == (32, 4)
    tiny = build_backbone(BackboneConfig(name="unet-tiny"))
    assert (tiny.width, tiny.depth) == (8, 2)
    with pytest.raises(ValueError, match="unknown overrides.*'width' and 'depth'"):
        build_backbone(BackboneConfig(name="unet", overrides={"layers": [1, 1, 1, 1]}))
    with pytest.raises(ValueError, match="positive integer"):
        build_backbone(BackboneConfig(name="unet", overrides={"width": 0}))


@pytest.mark.parametrize(("norm", "cls"), [("batch", nn.BatchNorm2d), ("group", nn.GroupNorm),
                                           ("instance", nn.InstanceNorm2d)])
def test_norm_option_is_honoured(norm, cls):
    backbone = unet(4, 2, norm=norm)
    norms = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d))]
    assert norms and all(type(m) is cls for m in norms)
    # per-sample norms: a sample's output does not depend on the rest of the batch (train mode)
    x = torch.randn(3, 1, 16, 16)
    backbone.train()
    together = backbone.forward_features(x)[0][:1]
    alone = backbone.forward_features(x[:1])[0]
    assert torch.allclose(together, alone, atol=1e-5) == (norm != "batch")


def test_lora_on_convolutions_trains_only_lora():
    from fedecho.adapters import apply_lora, lora_state_dict

    backbone = unet(4, 2, norm="group")
    convs = {n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 3 * 2 + 2 * 3  # 3 encoder DoubleConvs, 2 up blocks (reduce + DoubleConv)
    apply_lora(backbone, LoraConfig(rank=2), "lv_seg")
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    adapted = {k.rsplit(".lora_", 1)[0] for k in lora_state_dict(backbone, "lv_seg")}
    assert adapted == convs  # every conv (conv1, conv2, reduce) carries an adapter
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    opt = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 1, 16, 16)
    for _ in range(2):  # B starts at 0: the second step also moves A
        opt.zero_grad()
        backbone.forward_features(x)[0].square().mean().backward()
        opt.step()
    for name, p in backbone.named_parameters():
        assert torch.equal(p, before[name]) != (".lora_" in name), name


def test_lv_seg_learner_on_unet():
    from fedecho.config.task import TaskConfig
    from fedecho.tasks import build_task

    task = build_task(TaskConfig(name="lv_seg", image_size=(24, 24), decoder_dim=8))
    backbone = unet(4, 2, norm="group")
    head = task.build_head(backbone)
    batch = {"image": torch.rand(2, 1, 24, 24), "mask": torch.randint(0, 4, (2, 24, 24))}
    logits = task.forward(backbone, head, batch)
    assert logits.shape == (2, 4, 24, 24)
    task.loss(logits, batch).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_group_norm_unet_takes_dp_sgd():
    """opacus' per-sample gradients of a GroupNorm U-Net equal the gradients of each sample alone;
    a BatchNorm U-Net is refused by the project's DP check."""
    from opacus import GradSampleModule

    from fedecho.privacy.compat import check_sample_dp

    with pytest.raises(ValueError, match="model.norm=group"):
        check_sample_dp(unet(2, 1, norm="batch").train(), per_sample_loss=True, what="unet")
    model = unet(2, 1, norm="group").train()
    check_sample_dp(model, per_sample_loss=True, what="unet")
    x = torch.randn(3, 1, 8, 8)
    reference = []
    for i in range(3):
        model.zero_grad()
        model.forward_features(x[i:i + 1])[0].square().sum().backward()
        reference.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    wrapped._module.forward_features(x)[0].square().sum().backward()
    for name, p in model.named_parameters():
        for i in range(3):
            assert torch.allclose(p.grad_sample[i], reference[i][name], atol=1e-4), name
