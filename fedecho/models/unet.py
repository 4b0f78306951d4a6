"""2D U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015) for grayscale echo: the "fully trained CNN" of the CAMUS benchmark (Leclerc et al.,
IEEE TMI 2019) and of FedCVD's Fed-ECHO.

Sizes (``BackboneConfig.overrides``): ``width`` (channels of the first level, default 32) and
``depth`` (number of 2x down-samplings, default 4). Level ``i`` has ``width * 2**i`` channels.

- encoder: level 0 = DoubleConv(in, w); level i = MaxPool(2) + DoubleConv(w 2^(i-1), w 2^i),
  i = 1..depth (the last one is the bottleneck);
- decoder, i = depth-1..0: bilinear 2x up-sampling to the skip's size, ``reduce`` (1x1 conv,
  w 2^(i+1) -> w 2^i, with bias), concatenation with the skip, DoubleConv(2 w 2^i, w 2^i);
- DoubleConv(c_in, c_out) = [conv3x3 (no bias) -> BatchNorm -> ReLU] x 2, convs named ``conv1`` /
  ``conv2``. BatchNorm is replaced at build time by ``BackboneConfig.norm`` (group / instance /
  layer: per-sample, so DP-SGD and FedBN apply).

The whole U-Net (encoder *and* decoder) is the backbone: :meth:`forward_features` returns one map,
the last decoder level (B, width, H, W) at stride 1, and the task's head (the lv_seg 1x1 decoder)
turns it into class logits. The embedding (SSL, classification) is the global mean of the
bottleneck (B, width * 2**depth). Any input side works (odd sizes are up-sampled to the skip).

LoRA targets every convolution (``conv1``, ``conv2``, ``reduce``: plain Conv2d, groups 1), so peft
adapts the U-Net's convolutions in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone

__all__ = ["UNET_VARIANTS", "DoubleConv", "UNet", "UNetBackbone", "unet_sizes"]

#: default (width, depth) per registered name
UNET_VARIANTS: dict[str, dict[str, int]] = {"unet": {"width": 32, "depth": 4}, "unet-tiny": {"width": 8, "depth": 2}}


def unet_sizes(name: str, overrides: dict[str, Any]) -> tuple[int, int]:
    """(width, depth) from the variant's defaults and ``overrides`` (keys: width, depth)."""
    unknown = sorted(set(overrides) - {"width", "depth"})
    if unknown:
        raise ValueError(f"{name}: unknown overrides {unknown}; U-Net size overrides are 'width' and 'depth'")
    sizes = {**UNET_VARIANTS[name], **overrides}
    for key, low in (("width", 1), ("depth", 1)):
        value = sizes[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: overrides[{key!r}]={value!r} must be a positive integer")
    if sizes["depth"] > 6:
        raise ValueError(f"{name}: overrides['depth']={sizes['depth']} is too deep (at most 6 down-samplings)")
    return sizes["width"], sizes["depth"]


class DoubleConv(nn.Sequential):
    """[conv3x3 -> BatchNorm -> ReLU] x 2 (convs without bias: the norm's shift replaces it)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU()  # not in place: opacus hooks the norm output (DP-SGD)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU()


class UpBlock(nn.Module):
    """Up-sample to the skip's size, 1x1 ``reduce`` to the skip's channels, concat, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1)
        self.block = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([skip, self.reduce(x)], dim=1))


class UNet(nn.Module):
    """Encoder (``down``) + decoder (``up``); :meth:`forward` returns (last decoder map, bottleneck)."""

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [DoubleConv(in_channels, channels[0])] + [DoubleConv(channels[i - 1], channels[i]) for i in range(1, depth + 1)]
        )
        # up[j] serves level depth-1-j (coarsest first)
        self.up = nn.ModuleList(UpBlock(channels[i + 1], channels[i]) for i in reversed(range(depth)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            skips.append(x)
        bottleneck = x
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        return x, bottleneck

    def encode(self, x: Tensor) -> Tensor:
        """The bottleneck only (the decoder does not run)."""
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
        return x


class UNetBackbone(Backbone):
    """U-Net over (B, in_channels, H, W); ``self.model`` is a :class:`UNet`."""

    first_conv_key = "down.0.conv1.weight"

    def __init__(self, cfg: BackboneConfig, *, name: str = "unet") -> None:
        width, depth = unet_sizes(name, cfg.overrides)
        self.width, self.depth = width, depth
        super().__init__(
            name=name,
            model=UNet(cfg.in_channels, width, depth),
            input_kind="image",
            in_channels=cfg.in_channels,
            embed_dim=width * 2**depth,
            feature_channels=(width,),
            feature_strides=(1,),
            lora_targets=("conv1", "conv2", "reduce"),
        )

    def _features(self, x: Tensor) -> list[Tensor]:
        return [self.model(x)[0]]

    def _embed(self, x: Tensor) -> Tensor:
        return self.model.encode(x).mean(dim=(2, 3))
