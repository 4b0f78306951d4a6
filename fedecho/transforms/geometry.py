"""Geometric transforms that move images, clips, masks and points together.

Array-level functions act on torch tensors: images/clips ``(..., H, W)`` float (bilinear,
antialiased when shrinking), masks ``(..., H, W)`` integer (nearest: labels never mix), points
``(K, 2)`` float pixel ``(x, y)``. Image and mask kernels are torchvision.transforms.v2's; the
point maps are written here because torchvision's keypoint kernels mix two conventions (its flip
maps ``x -> W - 1 - x``, i.e. pixel centres at integers, while its resize maps ``x -> x * s``,
i.e. pixel edges at integers). Here integer coordinates are always pixel centres, matching
``align_corners=False`` resampling: a resize maps ``x -> (x + 0.5) * s - 0.5``.

Points that leave the canvas (crop, rotation) keep their coordinates, which then lie outside
``[0, W - 1] x [0, H - 1]``; the caller decides whether such a point is still usable.

Dict-level transforms (:class:`Resize`, :class:`PadToSquare`, :class:`RandomResizedCrop`,
:class:`RandomHorizontalFlip`, :class:`RandomRotation`) apply one geometric map to every spatial
key of an example (see :mod:`fedecho.transforms.compose`). A clip's frames share one map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F

from fedecho.transforms.compose import Example, ParamTransform, spatial_size
from fedecho.transforms.sampling import RandomGenerator, bernoulli, integer, uniform

__all__ = [
    "CropBox",
    "PadToSquare",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomRotation",
    "Resize",
    "hflip_points",
    "pad_points",
    "resized_crop_image",
    "resized_crop_mask",
    "resized_crop_points",
    "rotate_image",
    "rotate_mask",
    "rotate_points",
    "sample_resized_crop_box",
    "square_padding",
]

Size = tuple[int, int]


@dataclass(frozen=True)
class CropBox:
    """A crop window in pixels: rows ``top .. top + height``, columns ``left .. left + width``."""

    top: int
    left: int
    height: int
    width: int


def _as_size(size: int | Size) -> Size:
    out = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(out) < 1:
        raise ValueError(f"output size must be positive, got {size!r}")
    return out


# --- array level ---------------------------------------------------------------------------------
def square_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) zero padding that centres an (H, W) canvas in a square."""
    side = max(height, width)
    dh, dw = side - height, side - width
    return dw // 2, dh // 2, dw - dw // 2, dh - dh // 2


def pad_points(points: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Shift (K, 2) points by the (left, top, right, bottom) padding."""
    return points + points.new_tensor([padding[0], padding[1]])


def resized_crop_image(x: torch.Tensor, box: CropBox, size: int | Size) -> torch.Tensor:
    """Crop ``box`` from (..., H, W) float ``x`` and resize it to ``size`` (bilinear, antialiased)."""
    return F.resized_crop_image(
        x, box.top, box.left, box.height, box.width, list(_as_size(size)),
        interpolation=F.InterpolationMode.BILINEAR, antialias=True,
    )


def resized_crop_mask(mask: torch.Tensor, box: CropBox, size: int | Size) -> torch.Tensor:
    """Crop ``box`` from an (..., H, W) integer mask and resize it to ``size`` (nearest)."""
    return F.resized_crop_mask(mask, box.top, box.left, box.height, box.width, list(_as_size(size)))


def resized_crop_points(points: torch.Tensor, box: CropBox, size: int | Size) -> torch.Tensor:
    """Map (K, 2) pixel-centre points through the crop ``box`` + resize to ``size``."""
    out_h, out_w = _as_size(size)
    scale = points.new_tensor([out_w / box.width, out_h / box.height])
    origin = points.new_tensor([box.left, box.top])
    return (points - origin + 0.5) * scale - 0.5


def hflip_points(points: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror (K, 2) points left-right on a canvas ``width`` pixels wide."""
    out = points.clone()
    out[:, 0] = (width - 1) - points[:, 0]
    return out


def rotate_image(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate (..., H, W) float ``x`` by ``angle`` degrees counter-clockwise about its centre.

    The output keeps the input size; uncovered corners are 0 (bilinear).
    """
    return F.rotate_image(x, angle, interpolation=F.InterpolationMode.BILINEAR, fill=0.0)


def rotate_mask(mask: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate an (..., H, W) integer mask like :func:`rotate_image` (nearest, corners 0)."""
    return F.rotate_mask(mask, angle, fill=0)


def rotate_points(points: torch.Tensor, angle: float, canvas: Size) -> torch.Tensor:
    """Rotate (K, 2) points like :func:`rotate_image` on an (H, W) ``canvas``.

    The centre is ((W - 1) / 2, (H - 1) / 2); counter-clockwise on screen (y points down).
    """
    height, width = canvas
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    centre = points.new_tensor([(width - 1) / 2, (height - 1) / 2])
    d = points - centre
    x = cos * d[:, 0] + sin * d[:, 1]
    y = -sin * d[:, 0] + cos * d[:, 1]
    return torch.stack([x, y], dim=1) + centre


def sample_resized_crop_box(
    generator: RandomGenerator,
    canvas: Size,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> CropBox:
    """Draw a random-resized-crop window (the Inception / SimCLR crop, torchvision's algorithm).

    Area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``; after 10 failed
    tries, the largest centred crop within ``ratio``.
    """
    height, width = canvas
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * uniform(generator, scale[0], scale[1])
        aspect = math.exp(uniform(generator, log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(integer(generator, 0, height - h + 1), integer(generator, 0, width - w + 1), h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


# --- dict level ----------------------------------------------------------------------------------
def _map_spatial(
    example: Example,
    image: Callable[[torch.Tensor], torch.Tensor],
    mask: Callable[[torch.Tensor], torch.Tensor],
    points: Callable[[torch.Tensor], torch.Tensor],
) -> Example:
    out = dict(example)
    for key in ("image", "clip"):
        if key in out:
            out[key] = image(out[key])
    if "mask" in out:
        out["mask"] = mask(out["mask"])
    if "points" in out:
        out["points"] = points(out["points"])
    return out


def _crop_example(example: Example, box: CropBox, size: Size) -> Example:
    return _map_spatial(
        example,
        lambda x: resized_crop_image(x, box, size),
        lambda m: resized_crop_mask(m, box, size),
        lambda p: resized_crop_points(p, box, size),
    )


class Resize(ParamTransform):
    """Deterministic resize of every spatial key to ``size`` (int = square)."""

    def __init__(self, size: int | Size) -> None:
        self.size = _as_size(size)

    def apply(self, example: Example, params: None) -> Example:
        height, width = spatial_size(example)
        return _crop_example(example, CropBox(0, 0, height, width), self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class PadToSquare(ParamTransform):
    """Deterministic zero padding that centres the canvas in a square (masks padded with 0)."""

    def apply(self, example: Example, params: None) -> Example:
        padding = square_padding(*spatial_size(example))
        if not any(padding):
            return dict(example)
        return _map_spatial(
            example,
            lambda x: F.pad_image(x, list(padding), fill=0.0),
            lambda m: F.pad_mask(m, list(padding), fill=0),
            lambda p: pad_points(p, padding),
        )

    def __repr__(self) -> str:
        return "PadToSquare()"


class RandomResizedCrop(ParamTransform):
    """Random crop (area fraction ``scale``, aspect ``ratio``) resized to ``size``. Params: CropBox."""

    def __init__(
        self,
        size: int | Size,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"RandomResizedCrop scale={scale}; give 0 < min <= max <= 1")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop ratio={ratio}; give 0 < min <= max")
        self.size = _as_size(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def sample(self, example: Example, generator: RandomGenerator | None) -> CropBox:
        return sample_resized_crop_box(self._generator(generator), spatial_size(example), self.scale, self.ratio)

    def apply(self, example: Example, params: CropBox) -> Example:
        return _crop_example(example, params, self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip(ParamTransform):
    """Left-right flip with probability ``p``. Params: bool (flip or not)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p={p}; use a value in [0, 1]")
        self.p = p

    def sample(self, example: Example, generator: RandomGenerator | None) -> bool:
        return self.p > 0.0 and bernoulli(self._generator(generator), self.p)

    def apply(self, example: Example, params: bool) -> Example:
        if not params:
            return dict(example)
        width = spatial_size(example)[1]
        return _map_spatial(
            example, lambda x: x.flip(-1), lambda m: m.flip(-1), lambda p: hflip_points(p, width)
        )

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomRotation(ParamTransform):
    """Rotation by an angle uniform in ``[-degrees, degrees]`` about the centre. Params: angle."""

    def __init__(self, degrees: float) -> None:
        if not 0.0 <= degrees <= 180.0:
            raise ValueError(f"RandomRotation degrees={degrees}; use a value in [0, 180]")
        self.degrees = float(degrees)

    def sample(self, example: Example, generator: RandomGenerator | None) -> float:
        if self.degrees == 0.0:
            return 0.0
        return uniform(self._generator(generator), -self.degrees, self.degrees)

    def apply(self, example: Example, params: float) -> Example:
        if params == 0.0:
            return dict(example)
        canvas = spatial_size(example)
        return _map_spatial(
            example,
            lambda x: rotate_image(x, params),
            lambda m: rotate_mask(m, params),
            lambda p: rotate_points(p, params, canvas),
        )

    def __repr__(self) -> str:
        return f"RandomRotation(degrees={self.degrees})"
