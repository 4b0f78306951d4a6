"""Backbones for grayscale echo: Segformer (MiT), ResNet-18, R3D-18 / R(2+1)D-18, ViT-S/16, U-Net.

>>> from fedecho.config.model import BackboneConfig
>>> backbone = build_backbone(BackboneConfig(name="resnet18"))
>>> backbone.embed_dim, backbone.feature_strides
(512, (4, 8, 16, 32))

Every backbone follows :class:`~fedecho.models.base.Backbone`. Nothing is downloaded: networks
start from a seeded random initialisation, or from a local weights file (``BackboneConfig.weights``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone, InputKind
from fedecho.models.norm import FrozenBatchNorm, find_batch_norms, freeze_batch_norms, replace_norms
from fedecho.models.weights import (
    WeightsFileError,
    WeightsReport,
    apply_weights,
    has_batch_norm_statistics,
    load_weights,
    read_state_dict,
)
from fedecho.registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "FrozenBatchNorm",
    "InputKind",
    "WeightsFileError",
    "WeightsReport",
    "build_backbone",
    "find_batch_norms",
    "freeze_batch_norms",
    "load_weights",
    "read_state_dict",
    "replace_norms",
]

#: name -> factory ``(BackboneConfig) -> Backbone`` (random initialisation, norms not yet replaced).
#: Factories import their module on first use: torchvision / transformers load only when needed.
BACKBONES: Registry[Callable[[BackboneConfig], Backbone]] = Registry("backbone")


def _segformer(name: str) -> Callable[[BackboneConfig], Backbone]:
    def factory(cfg: BackboneConfig) -> Backbone:
        from fedecho.models.segformer import SegformerBackbone

        return SegformerBackbone(cfg, name=name)

    return factory


def _resnet(name: str) -> Callable[[BackboneConfig], Backbone]:
    def factory(cfg: BackboneConfig) -> Backbone:
        from fedecho.models.resnet import ResNetBackbone

        return ResNetBackbone(cfg, name=name)

    return factory


def _video_resnet(name: str, kind: str, layers: tuple[int, ...]) -> Callable[[BackboneConfig], Backbone]:
    def factory(cfg: BackboneConfig) -> Backbone:
        from fedecho.models.video_cnn import VideoResNetBackbone

        return VideoResNetBackbone(cfg, name=name, kind=kind, layers=layers)

    return factory


def _vit(name: str) -> Callable[[BackboneConfig], Backbone]:
    def factory(cfg: BackboneConfig) -> Backbone:
        from fedecho.models.vit import ViTBackbone

        return ViTBackbone(cfg, name=name)

    return factory


for _name in ("segformer-b0", "segformer-b2", "segformer-tiny"):
    BACKBONES.add(_name, _segformer(_name))
BACKBONES.add("resnet18", _resnet("resnet18"))
BACKBONES.add("r3d18", _video_resnet("r3d18", "r3d", (2, 2, 2, 2)))
BACKBONES.add("r3d-tiny", _video_resnet("r3d-tiny", "r3d", (1, 1, 1, 1)))
BACKBONES.add("r2plus1d18", _video_resnet("r2plus1d18", "r2plus1d", (2, 2, 2, 2)))
BACKBONES.add("r2plus1d-tiny", _video_resnet("r2plus1d-tiny", "r2plus1d", (1, 1, 1, 1)))
for _name in ("vit-s16", "vit-tiny"):
    BACKBONES.add(_name, _vit(_name))


def _unet(name: str) -> Callable[[BackboneConfig], Backbone]:
    def factory(cfg: BackboneConfig) -> Backbone:
        from fedecho.models.unet import UNetBackbone

        return UNetBackbone(cfg, name=name)

    return factory


for _name in ("unet", "unet-tiny"):
    BACKBONES.add(_name, _unet(_name))


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Build ``cfg.name`` with seed ``cfg.seed``, load ``cfg.weights`` if given, set ``cfg.norm``.

    Order: a file with BatchNorm statistics loads into the BatchNorm network before the norms
    are replaced (their affine weights carry over); a file without (e.g. saved from a
    GroupNorm backbone) loads after the replacement. The global torch generator is untouched.
    """
    factory = BACKBONES.get(cfg.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone = factory(cfg)
    if cfg.weights is None:
        replace_norms(backbone, cfg.norm)
        return backbone
    state = read_state_dict(cfg.weights)
    if has_batch_norm_statistics(state) or not find_batch_norms(backbone):
        apply_weights(backbone, state, cfg.weights)
        replace_norms(backbone, cfg.norm)
    else:
        replace_norms(backbone, cfg.norm)
        apply_weights(backbone, state, cfg.weights)
    return backbone
