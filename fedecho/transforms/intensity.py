"""Intensity transforms of echo images and clips (never masks or points).

Array-level functions take an image ``(C, H, W)`` or a clip ``(C, T, H, W)`` float tensor with
values in [0, 1] and keep them in [0, 1]; a clip's frames share one set of parameters, applied
frame by frame (torchvision.transforms.v2 kernels on a ``(T, C, H, W)`` view). Dict-level
transforms apply them to the example's ``image`` and ``clip``.

SimCLR's colour distortion (Chen et al. 2020) is brightness + contrast jitter here: saturation
and hue do not exist in grayscale echo. :class:`RandomGrayscale` is kept for RGB inputs and
for fidelity to the SimCLR recipe; on 1-channel echo it is a documented no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F

from fedecho.transforms.compose import INTENSITY_KEYS, Example, ParamTransform
from fedecho.transforms.sampling import RandomGenerator, bernoulli, uniform

__all__ = [
    "ColorJitterParams",
    "Normalize",
    "RandomColorJitter",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "adjust_brightness",
    "adjust_contrast",
    "gaussian_blur",
    "to_grayscale",
]


def _framewise(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply an image kernel expecting (..., C, H, W) to an image (C, H, W) or clip (C, T, H, W)."""
    if x.ndim == 4:
        return fn(x.transpose(0, 1)).transpose(0, 1).contiguous()
    return fn(x)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply intensities by ``factor`` >= 0, clipped to [0, 1]."""
    return _framewise(x, lambda v: F.adjust_brightness_image(v, factor))


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend each frame with its mean intensity: ``mean + factor * (x - mean)``, clipped to [0, 1].

    Needs 1 or 3 channels (C). For RGB the mean is that of the grayscale image (torchvision).
    """
    return _framewise(x, lambda v: F.adjust_contrast_image(v, factor))


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """Isotropic Gaussian blur with an odd ``kernel_size`` (reflect padding at the borders)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur kernel_size={kernel_size}; use a positive odd number")
    return F.gaussian_blur_image(x, [kernel_size, kernel_size], [sigma, sigma])


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB -> gray replicated on 3 channels (ITU-R 601); 1-channel input is returned unchanged."""
    channels = x.shape[0]
    if channels == 1:
        return x
    if channels != 3:
        raise ValueError(f"to_grayscale needs 1 or 3 channels, got {channels}")
    return _framewise(x, lambda v: F.rgb_to_grayscale_image(v, num_output_channels=3))


def _map_intensity(example: Example, fn: Callable[[torch.Tensor], torch.Tensor]) -> Example:
    out = dict(example)
    for key in INTENSITY_KEYS:
        if key in out:
            out[key] = fn(out[key])
    return out


@dataclass(frozen=True)
class ColorJitterParams:
    """Brightness and contrast factors, and whether brightness is applied first."""

    brightness: float
    contrast: float
    brightness_first: bool


class RandomColorJitter(ParamTransform):
    """Brightness and contrast jitter in random order (SimCLR's ColorJitter for grayscale).

    Factors are uniform in ``[1 - brightness, 1 + brightness]`` and ``[1 - contrast,
    1 + contrast]``. Params: :class:`ColorJitterParams`. Wrap in
    :class:`~fedecho.transforms.compose.RandomApply` for SimCLR's "with probability 0.8".
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4) -> None:
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"RandomColorJitter {name}={value}; use a value in [0, 1)")
        self.brightness = brightness
        self.contrast = contrast

    def sample(self, example: Example, generator: RandomGenerator | None) -> ColorJitterParams:
        g = self._generator(generator)
        return ColorJitterParams(
            brightness=uniform(g, 1 - self.brightness, 1 + self.brightness),
            contrast=uniform(g, 1 - self.contrast, 1 + self.contrast),
            brightness_first=bernoulli(g, 0.5),
        )

    def apply(self, example: Example, params: ColorJitterParams) -> Example:
        def jitter(x: torch.Tensor) -> torch.Tensor:
            if params.brightness_first:
                return adjust_contrast(adjust_brightness(x, params.brightness), params.contrast)
            return adjust_brightness(adjust_contrast(x, params.contrast), params.brightness)

        return _map_intensity(example, jitter)

    def __repr__(self) -> str:
        return f"RandomColorJitter(brightness={self.brightness}, contrast={self.contrast})"


class RandomGaussianBlur(ParamTransform):
    """Gaussian blur with sigma uniform in ``sigma``; kernel side = ``kernel_fraction`` of the
    image side, made odd (SimCLR: 10 %, sigma in [0.1, 2]). Params: sigma (float)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), kernel_fraction: float = 0.1) -> None:
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"RandomGaussianBlur sigma={sigma}; give 0 < min <= max")
        if not 0 < kernel_fraction <= 1:
            raise ValueError(f"RandomGaussianBlur kernel_fraction={kernel_fraction}; use (0, 1]")
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.kernel_fraction = kernel_fraction

    def sample(self, example: Example, generator: RandomGenerator | None) -> float:
        return uniform(self._generator(generator), *self.sigma)

    def apply(self, example: Example, params: float) -> Example:
        def blur(x: torch.Tensor) -> torch.Tensor:
            side = min(x.shape[-2:])
            kernel = max(3, int(self.kernel_fraction * side) // 2 * 2 + 1)
            return gaussian_blur(x, params, min(kernel, side if side % 2 else side - 1))

        return _map_intensity(example, blur)

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma}, kernel_fraction={self.kernel_fraction})"


class RandomGrayscale(ParamTransform):
    """Convert to grayscale with probability ``p`` (SimCLR: 0.2). Params: bool.

    FedEcho's inputs are 1-channel grayscale echo, for which this is a no-op by construction
    (the image already is gray); it matters only for 3-channel inputs.
    """

    def __init__(self, p: float = 0.2) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomGrayscale p={p}; use a value in [0, 1]")
        self.p = p

    def sample(self, example: Example, generator: RandomGenerator | None) -> bool:
        return self.p > 0.0 and bernoulli(self._generator(generator), self.p)

    def apply(self, example: Example, params: bool) -> Example:
        return _map_intensity(example, to_grayscale) if params else dict(example)

    def __repr__(self) -> str:
        return f"RandomGrayscale(p={self.p})"


class Normalize(ParamTransform):
    """Deterministic ``(x - mean) / std`` on image and clip (the last step of every preset)."""

    def __init__(self, mean: float = 0.5, std: float = 0.5) -> None:
        if std <= 0:
            raise ValueError(f"Normalize std={std}; use a positive value")
        self.mean = float(mean)
        self.std = float(std)

    def apply(self, example: Example, params: None) -> Example:
        return _map_intensity(example, lambda x: (x - self.mean) / self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"
