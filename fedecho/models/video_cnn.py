"""R3D-18 and R(2+1)D-18 (Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions for
Action Recognition") for grayscale echo clips, as in EchoCLR (Holste et al. 2023).

torchvision's ``VideoResNet`` with an ``in_channels``-channel stem and no classifier. Input
(B, C, T, H, W); the embedding is the global (T, H, W) average of layer4, 512 channels. No
spatial neck: ``forward_features`` raises.

Sizes (``BackboneConfig.overrides``): ``layers`` (blocks per stage) and ``width`` (channels of the
first stage, default 64; the stages have width x (1, 2, 4, 8), the embedding 8 x width, and the
R(2+1)D stem's middle channels scale with it from 45). Width 64 builds torchvision's network
exactly (same modules, same initial weights for a given seed).

peft 0.21 builds a conv layer's LoRA factors by calling ``type(base_layer)(in, r, k, stride,
padding, bias=False)``; torchvision's ``Conv3DSimple`` (R3D's block convolution) subclasses
``nn.Conv3d`` with another constructor signature, so peft fails with a TypeError on it. The
backbone therefore turns every ``Conv3DSimple`` into a plain ``nn.Conv3d`` with the same
hyper-parameters and weights (identical outputs, identical state-dict keys): see
:func:`plain_conv3d`. R(2+1)D's convolutions are plain ``nn.Conv3d`` already.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DSimple,
    VideoResNet,
)

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone
from fedecho.models.resnet import check_layers, grayscale_conv

__all__ = ["SizedVideoResNet", "VideoResNetBackbone", "plain_conv3d", "video_sizes"]

_WIDTH = 64


def video_sizes(name: str, overrides: dict[str, Any], layers: tuple[int, ...]) -> tuple[list[int], int]:
    """(blocks per stage, first-stage width) from the variant's ``layers`` and ``overrides``
    (keys: layers, width)."""
    unknown = sorted(set(overrides) - {"layers", "width"})
    if unknown:
        raise ValueError(
            f"{name}: unknown overrides {unknown}; video ResNet size overrides are 'layers' "
            f"(blocks per stage, e.g. [{', '.join(map(str, layers))}]) and 'width' (first-stage channels, e.g. {_WIDTH})"
        )
    blocks = check_layers(name, {k: v for k, v in overrides.items() if k == "layers"}, layers)
    width = overrides.get("width", _WIDTH)
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"{name}: overrides['width']={width!r} must be a positive integer")
    return blocks, width


def _stem(kind: str, width: int) -> nn.Sequential:
    """torchvision's BasicStem (r3d) or R2Plus1dStem (r2plus1d) with ``width`` output channels."""
    if kind == "r3d":
        return nn.Sequential(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    middle = max(1, round(45 * width / _WIDTH))
    return nn.Sequential(
        nn.Conv3d(3, middle, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(middle),
        nn.ReLU(inplace=True),
        nn.Conv3d(middle, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class SizedVideoResNet(VideoResNet):
    """torchvision's ``VideoResNet`` (BasicBlock, 400-class ``fc``) with stages of ``width`` x
    (1, 2, 4, 8) channels. Modules are made and initialised in torchvision's order, so
    ``width=64`` equals ``VideoResNet(BasicBlock, [conv] * 4, blocks, stem)`` under one seed."""

    def __init__(self, kind: str, blocks: list[int], width: int) -> None:
        nn.Module.__init__(self)
        if kind not in ("r3d", "r2plus1d"):
            raise ValueError(f"unknown video ResNet kind {kind!r}; choose r3d or r2plus1d")
        conv = Conv3DSimple if kind == "r3d" else Conv2Plus1D
        self.inplanes = width
        self.stem = _stem(kind, width)
        self.layer1 = self._make_layer(BasicBlock, conv, width, blocks[0], stride=1)
        self.layer2 = self._make_layer(BasicBlock, conv, 2 * width, blocks[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, conv, 4 * width, blocks[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, conv, 8 * width, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(8 * width, 400)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)


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

    ``self.model`` is a :class:`SizedVideoResNet`; ``overrides={"layers": [...], "width": w}``
    sets the blocks per stage (the ``*-tiny`` variants use one block per stage) and the
    first-stage width (embedding 8 x w).
    """

    first_conv_key = "stem.0.weight"
    head_weight_prefixes = ("fc.",)

    def __init__(self, cfg: BackboneConfig, *, name: str, kind: str, layers: tuple[int, ...]) -> None:
        blocks, width = video_sizes(name, cfg.overrides, layers)
        if kind == "r3d":
            # stem conv, the blocks' 3x3x3 convs, the 1x1x1 shortcut convs
            targets = ("stem.0", "conv1.0", "conv2.0", "downsample.0")
        elif kind == "r2plus1d":
            # each (2+1)D convolution is a Sequential(spatial conv, BN, ReLU, temporal conv)
            targets = ("stem.0", "stem.3", "conv1.0.0", "conv1.0.3", "conv2.0.0", "conv2.0.3", "downsample.0")
        else:
            raise ValueError(f"unknown video ResNet kind {kind!r}; choose r3d or r2plus1d")
        model = SizedVideoResNet(kind, blocks, width)
        model.stem[0] = grayscale_conv(model.stem[0], cfg.in_channels)
        plain_conv3d(model)
        model.fc = nn.Identity()
        super().__init__(
            name=name,
            model=model,
            input_kind="clip",
            in_channels=cfg.in_channels,
            embed_dim=8 * width,
            feature_channels=(),
            feature_strides=(),
            lora_targets=targets,
        )

    def _embed(self, x: Tensor) -> Tensor:
        m = self.model
        x = m.stem(x)
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return m.avgpool(x).flatten(1)
