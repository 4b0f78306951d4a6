"""Named augmentation pipelines built from an :class:`~fedecho.config.ssl.AugmentConfig`.

==================  ==============================================================================
``simclr``          pad to square, random resized crop (``crop_scale``), flip (``hflip_prob``),
                    brightness/contrast jitter (p ``jitter_prob``), random grayscale (a no-op on
                    1-channel echo), Gaussian blur (p ``blur_prob``), normalise. Chen et al. 2020.
``dino_global``     as simclr with ``dino_global_crop_scale`` and ``dino_global_blur_prob`` at
                    ``image_size`` (Caron et al. 2021, global crops).
``dino_local``      as simclr with ``dino_local_crop_scale`` at ``dino_local_size`` (local crops).
``seg_train``       pad to square, rotation (``rotation_degrees``), random resized crop
                    (``seg_crop_scale``), flip, jitter, normalise: masks and points follow.
``eval``            pad to square, resize to ``image_size``, normalise. Deterministic.
==================  ==============================================================================

All presets work on images and clips alike (a clip's frames share the parameters). Every
output image/clip is ``image_size`` (or ``dino_local_size``) square, normalised with
``(x - normalize_mean) / normalize_std``.
"""

from __future__ import annotations

from collections.abc import Callable

from fedecho.config.ssl import AugmentConfig
from fedecho.registry import Registry
from fedecho.transforms.compose import Compose, RandomApply, Transform
from fedecho.transforms.geometry import (
    PadToSquare,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
)
from fedecho.transforms.intensity import (
    Normalize,
    RandomColorJitter,
    RandomGaussianBlur,
    RandomGrayscale,
)

__all__ = ["PRESETS", "build_transform"]

PRESETS: Registry[Callable[[AugmentConfig], Transform]] = Registry("transform preset")


def _contrastive(cfg: AugmentConfig, size: int, scale: tuple[float, float], blur_prob: float) -> Compose:
    return Compose([
        PadToSquare(),
        RandomResizedCrop(size, scale=scale, ratio=cfg.crop_ratio),
        RandomHorizontalFlip(cfg.hflip_prob),
        RandomApply(RandomColorJitter(cfg.brightness, cfg.contrast), cfg.jitter_prob),
        RandomGrayscale(cfg.grayscale_prob),
        RandomApply(RandomGaussianBlur(cfg.blur_sigma, cfg.blur_kernel_fraction), blur_prob),
        Normalize(cfg.normalize_mean, cfg.normalize_std),
    ])


@PRESETS.register("simclr")
def simclr_preset(cfg: AugmentConfig) -> Transform:
    return _contrastive(cfg, cfg.image_size, cfg.crop_scale, cfg.blur_prob)


@PRESETS.register("dino_global")
def dino_global_preset(cfg: AugmentConfig) -> Transform:
    return _contrastive(cfg, cfg.image_size, cfg.dino_global_crop_scale, cfg.dino_global_blur_prob)


@PRESETS.register("dino_local")
def dino_local_preset(cfg: AugmentConfig) -> Transform:
    return _contrastive(cfg, cfg.dino_local_size, cfg.dino_local_crop_scale, cfg.blur_prob)


@PRESETS.register("seg_train")
def seg_train_preset(cfg: AugmentConfig) -> Transform:
    return Compose([
        PadToSquare(),
        RandomRotation(cfg.rotation_degrees),
        RandomResizedCrop(cfg.image_size, scale=cfg.seg_crop_scale, ratio=cfg.crop_ratio),
        RandomHorizontalFlip(cfg.hflip_prob),
        RandomApply(RandomColorJitter(cfg.brightness, cfg.contrast), cfg.jitter_prob),
        Normalize(cfg.normalize_mean, cfg.normalize_std),
    ])


@PRESETS.register("eval")
def eval_preset(cfg: AugmentConfig) -> Transform:
    return Compose([
        PadToSquare(),
        Resize(cfg.image_size),
        Normalize(cfg.normalize_mean, cfg.normalize_std),
    ])


def build_transform(name: str, cfg: AugmentConfig | None = None) -> Transform:
    """Build the preset ``name`` (see the module docstring) from ``cfg`` (default config if None).

    The result is called as ``transform(example, generator)``; "eval" needs no generator.
    """
    return PRESETS.get(name)(cfg if cfg is not None else AugmentConfig())
