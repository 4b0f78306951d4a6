"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition") for grayscale echo.

torchvision's ResNet with a ``in_channels``-channel first convolution and no classifier. Used by
the SimCLR-RHD seed (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"). Feature maps are the outputs of layer1..layer4: channels (64, 128, 256, 512)
at strides (4, 8, 16, 32); the embedding is the global average of layer4 (512).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone

__all__ = ["ResNetBackbone", "check_layers", "grayscale_conv"]

_CHANNELS = (64, 128, 256, 512)
_STRIDES = (4, 8, 16, 32)


def check_layers(name: str, overrides: dict[str, Any], default: Sequence[int]) -> list[int]:
    """Blocks per stage from ``overrides`` (only key: "layers", four positive integers)."""
    unknown = sorted(set(overrides) - {"layers"})
    if unknown:
        raise ValueError(
            f"{name}: unknown overrides {unknown}; the only size override is 'layers' "
            f"(blocks per stage, e.g. [{', '.join(map(str, default))}])"
        )
    layers = list(overrides.get("layers", default))
    if len(layers) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers):
        raise ValueError(f"{name}: overrides['layers']={layers!r} must be four positive integers")
    return layers


def grayscale_conv(conv: nn.Module, in_channels: int) -> nn.Module:
    """A copy of the Conv2d/Conv3d ``conv`` taking ``in_channels`` inputs, Kaiming-initialised
    as torchvision initialises its first convolutions (fan_out, ReLU)."""
    cls = nn.Conv3d if conv.weight.dim() == 5 else nn.Conv2d
    new = cls(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


class ResNetBackbone(Backbone):
    """ResNet-18 over (B, in_channels, H, W); ``self.model`` is a torchvision ``ResNet``."""

    first_conv_key = "conv1.weight"
    head_weight_prefixes = ("fc.",)

    def __init__(self, cfg: BackboneConfig, *, name: str = "resnet18") -> None:
        layers = check_layers(name, cfg.overrides, (2, 2, 2, 2))
        model = ResNet(BasicBlock, layers)
        model.conv1 = grayscale_conv(model.conv1, cfg.in_channels)
        model.fc = nn.Identity()
        super().__init__(
            name=name,
            model=model,
            input_kind="image",
            in_channels=cfg.in_channels,
            embed_dim=_CHANNELS[-1],
            feature_channels=_CHANNELS,
            feature_strides=_STRIDES,
            # every convolution: stem conv1, the blocks' conv1/conv2, the 1x1 shortcut convs
            lora_targets=("conv1", "conv2", "downsample.0"),
        )

    def _features(self, x: Tensor) -> list[Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        maps = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def _embed(self, x: Tensor) -> Tensor:
        return torch.flatten(self.model.avgpool(self._features(x)[-1]), 1)
