"""The training augmentation as one batched op on the consumer's device (after the transfer).

With ``train.augment_on=device`` the loader does almost nothing per sample: it reads a uint8
crop/clip (from the decoded cache), draws the augmentation *parameters* for the sample from the
sample's own generator — exactly the draws the CPU preset would make, in the same order, so both
paths are reproducible and comparable — and ships them in the batch under :data:`AUGMENT_KEY`
as one float64 vector per sample. :func:`augment_batch` then, on the device:

- turns uint8 pixels into floats in [0, 1];
- applies pad-to-square, rotation, random resized crop and horizontal flip as **one** affine map
  per sample: one ``affine_grid`` + ``grid_sample`` for the whole batch (bilinear for images and
  clips — a clip's frames share the map — nearest for label maps; points are mapped by the same
  matrix, pixel-centre convention as :mod:`fedecho.transforms.geometry`);
- brightness/contrast jitter (torchvision's formulas, per frame mean), then normalisation.

The CPU path applies the same ops one after the other (two bilinear resamplings instead of one,
and the crop edge replicated instead of sampled), so the two agree closely but not bit for bit;
``tests/transforms/test_batched.py`` bounds the difference on a fixed batch (under one grey level
on average). The device path does not antialias: from the decoded cache the canvas already is the
training size, so crops are only ever enlarged; shrinking a larger canvas would alias.

Supported presets: any :class:`~fedecho.transforms.compose.Compose` of, in this order, an optional
:class:`PadToSquare`, :class:`RandomRotation`, one :class:`RandomResizedCrop` or :class:`Resize`,
:class:`RandomHorizontalFlip`, ``RandomApply(RandomColorJitter)`` and :class:`Normalize`
(``seg_train`` and ``eval``). Anything else raises, naming ``train.augment_on=loader``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedecho.transforms.compose import Compose, RandomApply, Transform
from fedecho.transforms.geometry import (
    CropBox,
    PadToSquare,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
    square_padding,
)
from fedecho.transforms.intensity import ColorJitterParams, Normalize, RandomColorJitter
from fedecho.transforms.sampling import RandomGenerator

__all__ = ["AUGMENT_KEY", "NUM_PARAMS", "augment_batch", "forward_matrices", "sample_params"]

#: Batch key of the per-sample parameter vectors (B, NUM_PARAMS) float64.
AUGMENT_KEY = "augment"
# angle, top, left, box_h, box_w, flip, jitter_on, brightness, contrast, brightness_first,
# out_h, out_w, norm_mean, norm_std, pad
NUM_PARAMS = 15
_ORDER = (PadToSquare, RandomRotation, (RandomResizedCrop, Resize), RandomHorizontalFlip, RandomApply, Normalize)


def _stage(t: Transform) -> int:
    for i, kind in enumerate(_ORDER):
        if isinstance(t, kind) and (not isinstance(t, RandomApply) or isinstance(t.transform, RandomColorJitter)):
            return i
    raise ValueError(f"device-side augmentation does not support {t!r}; set train.augment_on=loader")


class _Shape:
    """Stands in for an example's pixel array where a transform's ``sample`` reads only its shape
    (no (1, H, W) buffer is allocated per draw)."""

    __slots__ = ("shape",)

    def __init__(self, h: int, w: int) -> None:
        self.shape = (1, h, w)


#: transform -> its checked stages, so a preset's order is checked once, not on every draw
_PLANS: weakref.WeakKeyDictionary[Compose, tuple[tuple[int, Transform], ...]] = weakref.WeakKeyDictionary()


def _plan(transform: Compose) -> tuple[tuple[int, Transform], ...]:
    plan = _PLANS.get(transform)
    if plan is None or len(plan) != len(transform.transforms) or any(
            t is not p for (_, p), t in zip(plan, transform.transforms, strict=True)):
        stages = [_stage(t) for t in transform.transforms]
        if any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
            raise ValueError(f"device-side augmentation needs the order pad, rotation, crop/resize, flip, "
                             f"jitter, normalise; got {transform!r}; set train.augment_on=loader")
        plan = tuple(zip(stages, transform.transforms, strict=True))
        _PLANS[transform] = plan
    return plan


def sample_params(transform: Compose, canvas: tuple[int, int], generator: RandomGenerator) -> np.ndarray:
    """Draw the parameters ``transform`` (a supported preset) would draw for an example whose
    spatial size is ``canvas`` (H, W), from ``generator``, in the same order; return the vector.

    The draws are the transforms' own ``sample`` calls, in the preset's order (so the same as the
    CPU path's); the preset's order is checked on its first use."""
    h, w = int(canvas[0]), int(canvas[1])
    out = [0.0, 0.0, 0.0, h, w, 0.0, 0.0, 1.0, 1.0, 0.0, h, w, 0.0, 1.0, 0.0]
    shape_only = {"image": _Shape(h, w)}
    for stage, t in _plan(transform):
        if stage == 0:  # PadToSquare
            h = w = max(h, w)
            out[3] = out[4] = out[10] = out[11] = h
            out[14] = 1.0
            shape_only = {"image": _Shape(h, w)}
        elif stage == 1:  # RandomRotation
            out[0] = t.sample(shape_only, generator)
        elif stage == 2:  # RandomResizedCrop | Resize
            box = t.sample(shape_only, generator) if isinstance(t, RandomResizedCrop) else CropBox(0, 0, h, w)
            h, w = t.size
            out[1:5] = [box.top, box.left, box.height, box.width]
            out[10:12] = [h, w]
            shape_only = {"image": _Shape(h, w)}
        elif stage == 3:  # RandomHorizontalFlip
            out[5] = float(t.sample(shape_only, generator))
        elif stage == 4:  # RandomApply(RandomColorJitter)
            params = t.sample(shape_only, generator)
            if params is not None:
                jitter: ColorJitterParams = params[0]
                out[6:10] = [1.0, jitter.brightness, jitter.contrast, float(jitter.brightness_first)]
        else:  # Normalize
            out[12:14] = [t.mean, t.std]
    return np.array(out, np.float64)


def _translate(tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    m = np.tile(np.eye(3), (len(tx), 1, 1))
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def forward_matrices(params: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """(B, 3, 3) maps of pixel-centre (x, y, 1) from the input canvas (H, W) to the output."""
    p = np.asarray(params, np.float64).reshape(-1, NUM_PARAMS)
    n = len(p)
    h, w = canvas
    pad = p[:, 14] > 0
    left, top = square_padding(h, w)[:2]
    m = _translate(np.where(pad, left, 0.0), np.where(pad, top, 0.0))
    side_h, side_w = np.where(pad, max(h, w), h), np.where(pad, max(h, w), w)
    theta = np.radians(p[:, 0])
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = (side_w - 1) / 2, (side_h - 1) / 2
    rot = np.tile(np.eye(3), (n, 1, 1))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, sin, -sin, cos
    m = _translate(cx, cy) @ rot @ _translate(-cx, -cy) @ m
    top_, left_, bh, bw, out_h, out_w = p[:, 1], p[:, 2], p[:, 3], p[:, 4], p[:, 10], p[:, 11]
    sx, sy = out_w / bw, out_h / bh
    crop = np.tile(np.eye(3), (n, 1, 1))
    crop[:, 0, 0], crop[:, 1, 1] = sx, sy
    crop[:, 0, 2], crop[:, 1, 2] = (0.5 - left_) * sx - 0.5, (0.5 - top_) * sy - 0.5
    m = crop @ m
    flip = np.tile(np.eye(3), (n, 1, 1))
    flipped = p[:, 5] > 0
    flip[flipped, 0, 0], flip[flipped, 0, 2] = -1.0, out_w[flipped] - 1
    return flip @ m


def _pixel_to_unit(h: float, w: float) -> np.ndarray:
    return np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], np.float64)


def _is_identity(p: np.ndarray, canvas: tuple[int, int]) -> bool:
    h, w = canvas
    return bool(np.all(p[:, 0] == 0) and np.all(p[:, 5] == 0) and np.all(p[:, 1:3] == 0)
                and np.all(p[:, [3, 10]] == h) and np.all(p[:, [4, 11]] == w))


def _jitter(x: Tensor, p: np.ndarray, frames: bool) -> Tensor:
    """torchvision's brightness/contrast blend per sample; contrast mean per frame (C, H, W)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    on = torch.as_tensor(p[:, 6] > 0, device=x.device).view(shape)
    b = torch.as_tensor(p[:, 7], dtype=x.dtype, device=x.device).view(shape)
    c = torch.as_tensor(p[:, 8], dtype=x.dtype, device=x.device).view(shape)
    first = torch.as_tensor(p[:, 9] > 0, device=x.device).view(shape)
    dims = (1, 3, 4) if frames else (1, 2, 3)

    def gray(v: Tensor) -> Tensor:
        if v.shape[1] == 3:
            weights = v.new_tensor([0.2989, 0.587, 0.114]).view((1, 3) + (1,) * (v.ndim - 2))
            return (v * weights).sum(1, keepdim=True)
        return v

    def contrast(v: Tensor) -> Tensor:
        mean = gray(v).mean(dim=dims, keepdim=True)
        return (c * v + (1 - c) * mean).clamp(0, 1)

    def brightness(v: Tensor) -> Tensor:
        return (b * v).clamp(0, 1)

    out = torch.where(first, contrast(brightness(x)), brightness(contrast(x)))
    return torch.where(on, out, x)


def augment_batch(batch: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Move ``batch`` to ``device`` and apply its :data:`AUGMENT_KEY` parameters there (see the
    module docstring). A batch without the key is only moved."""
    device = torch.device(device)
    out = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
           for k, v in batch.items() if k != AUGMENT_KEY}
    if AUGMENT_KEY not in batch:
        return out
    p = batch[AUGMENT_KEY].detach().cpu().numpy().astype(np.float64)  # built on the host: no device sync
    pixels = next((k for k in ("image", "clip") if k in out), None)
    ref = out[pixels] if pixels is not None else out["mask"]
    canvas = (int(ref.shape[-2]), int(ref.shape[-1]))
    out_size = (int(p[0, 10]), int(p[0, 11]))
    identity = _is_identity(p, canvas)
    grid = None
    if not identity:
        fwd = forward_matrices(p, canvas)
        theta = _pixel_to_unit(*canvas) @ np.linalg.inv(fwd) @ np.linalg.inv(_pixel_to_unit(*out_size))
        theta_t = torch.as_tensor(theta[:, :2], dtype=torch.float32).to(device, non_blocking=True)
        grid = F.affine_grid(theta_t, [len(p), 1, *out_size], align_corners=False)
        if "points" in out:
            m = torch.as_tensor(fwd, dtype=out["points"].dtype).to(device, non_blocking=True)
            pts = out["points"]
            out["points"] = pts @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]
    if pixels is not None:
        x = out[pixels]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if grid is not None:
            lead = x.shape[:-2]
            x = F.grid_sample(x.reshape(len(p), -1, *canvas), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False).reshape(*lead, *out_size)
        if np.any(p[:, 6] > 0):
            x = _jitter(x, p, frames=pixels == "clip")
        mean = torch.as_tensor(p[:, 12], dtype=x.dtype).to(device).view((-1,) + (1,) * (x.ndim - 1))
        std = torch.as_tensor(p[:, 13], dtype=x.dtype).to(device).view((-1,) + (1,) * (x.ndim - 1))
        out[pixels] = (x - mean) / std
    if "mask" in out:
        mask = out["mask"]
        if grid is not None:
            lead = mask.shape[:-2]
            mask = F.grid_sample(mask.reshape(len(p), -1, *canvas).float(), grid, mode="nearest",
                                 padding_mode="zeros", align_corners=False).reshape(*lead, *out_size)
            mask = mask.round()
        out["mask"] = mask.long()
    return out

