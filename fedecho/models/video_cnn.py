"""R3D-18 and R(2+1)D-18 (Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions for
Action Recognition") for grayscale echo clips, as in EchoCLR (Holste et al. 2023).

torchvision's ``VideoResNet`` with an ``in_channels``-channel stem and no classifier. Input
(B, C, T, H, W); the embedding is the global (T, H, W) average of layer4, 512 channels. No
spatial neck: ``forward_features`` raises.

peft 0.21 builds a conv layer's LoRA factors by calling ``type(base_layer)(in, r, k, stride,
padding, bias=False)``; torchvision's ``Conv3DSimple`` (R3D's block convolution) subclasses
``nn.Conv3d`` with another constructor signature, so peft fails with a TypeError on it. The
backbone therefore turns every ``Conv3DSimple`` into a plain ``nn.Conv3d`` with the same
hyper-parameters and weights (identical outputs, identical state-dict keys): see
:func:`plain_conv3d`. R(2+1)D's convolutions are plain ``nn.Conv3d`` already.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.video.resnet import (
    BasicBlock,
    BasicStem,
    Conv2Plus1D,
    Conv3DSimple,
    R2Plus1dStem,
    VideoResNet,
)

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone
from fedecho.models.resnet import check_layers, grayscale_conv

__all__ = ["VideoResNetBackbone", "plain_conv3d"]

_EMBED_DIM = 512


def plain_conv3d(module: nn.Module) -> int:
    """Replace (in place) every strict subclass of ``nn.Conv3d`` below ``module`` by a plain
    ``nn.Conv3d`` with the same configuration and parameters; returns how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv3d) and type(child) is not nn.Conv3d:
            plain = nn.Conv3d(
                child.in_channels,
                child.out_channels,
                kernel_size=child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
                padding_mode=child.padding_mode,
            ).to(child.weight.device, child.weight.dtype)
            plain.load_state_dict(child.state_dict())
            setattr(module, name, plain)
            count += 1
        else:
            count += plain_conv3d(child)
    return count


class VideoResNetBackbone(Backbone):
    """R3D-18 (``kind="r3d"``) or R(2+1)D-18 (``kind="r2plus1d"``) over (B, C, T, H, W).

    ``self.model`` is a torchvision ``VideoResNet``; ``overrides={"layers": [...]}`` sets the
    blocks per stage (the ``*-tiny`` variants use one block per stage).
    """

    first_conv_key = "stem.0.weight"
    head_weight_prefixes = ("fc.",)

    def __init__(self, cfg: BackboneConfig, *, name: str, kind: str, layers: tuple[int, ...]) -> None:
        blocks = check_layers(name, cfg.overrides, layers)
        if kind == "r3d":
            model = VideoResNet(BasicBlock, [Conv3DSimple] * 4, blocks, BasicStem)
            # stem conv, the blocks' 3x3x3 convs, the 1x1x1 shortcut convs
            targets = ("stem.0", "conv1.0", "conv2.0", "downsample.0")
        elif kind == "r2plus1d":
            model = VideoResNet(BasicBlock, [Conv2Plus1D] * 4, blocks, R2Plus1dStem)
            # each (2+1)D convolution is a Sequential(spatial conv, BN, ReLU, temporal conv)
            targets = ("stem.0", "stem.3", "conv1.0.0", "conv1.0.3", "conv2.0.0", "conv2.0.3", "downsample.0")
        else:
            raise ValueError(f"unknown video ResNet kind {kind!r}; choose r3d or r2plus1d")
        model.stem[0] = grayscale_conv(model.stem[0], cfg.in_channels)
        plain_conv3d(model)
        model.fc = nn.Identity()
        super().__init__(
            name=name,
            model=model,
            input_kind="clip",
            in_channels=cfg.in_channels,
            embed_dim=_EMBED_DIM,
            feature_channels=(),
            feature_strides=(),
            lora_targets=targets,
        )

    def _embed(self, x: Tensor) -> Tensor:
        m = self.model
        x = m.stem(x)
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return m.avgpool(x).flatten(1)
