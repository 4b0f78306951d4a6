"""Block-wise patch masking for iBOT / DINOv2 (BEiT's blockwise masking, Bao et al. 2022, as
DINOv2's ``MaskingGenerator`` uses it).

A mask over a (rows x cols) patch grid is built from rectangular blocks: each block has an area
drawn uniformly in [``min_patches``, min(remaining, ``max_patches``)] and a log-uniform aspect
ratio in [``min_aspect``, 1 / ``min_aspect``]; a block is kept when it adds between 1 and the
remaining number of new patches (overlaps allowed), up to 10 tries per block. DINOv2 stops when
no block fits; here the mask is then *completed* with randomly chosen unmasked patches, so the
masked count equals the target exactly.

Per global crop (:func:`sample_crop_masks`): with probability ``probability`` the crop is masked
with a ratio drawn uniformly in ``ratio`` (target ``int(ratio * P)`` of P patches), otherwise not
at all. DINOv2 stratifies the ratios over a batch (``linspace``); drawing them per crop keeps
every example's views a function of that example alone (what DP-SGD's per-sample view needs) and
has the same marginal distribution.
"""

from __future__ import annotations

import math

import numpy as np

from fedecho.transforms.sampling import RandomGenerator, bernoulli, integer, permutation, uniform

__all__ = ["block_mask", "sample_crop_masks"]


def _place_block(mask: np.ndarray, limit: int, min_patches: int, log_aspect: tuple[float, float],
                 generator: RandomGenerator) -> int:
    rows, cols = mask.shape
    for _ in range(10):
        area = uniform(generator, min_patches, max(limit, min_patches))
        aspect = math.exp(uniform(generator, *log_aspect))
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < h <= rows and 0 < w <= cols):
            continue
        top, left = integer(generator, 0, rows - h + 1), integer(generator, 0, cols - w + 1)
        block = mask[top:top + h, left:left + w]
        new = int(h * w - block.sum())
        if 0 < new <= limit:
            block[...] = True
            return new
    return 0


def block_mask(shape: tuple[int, int], count: int, generator: RandomGenerator, *, min_patches: int = 4,
               max_patches: int | None = None, min_aspect: float = 0.3) -> np.ndarray:
    """Bool (rows, cols) mask with exactly ``count`` True patches, built from blocks."""
    rows, cols = shape
    if not 0 <= count <= rows * cols:
        raise ValueError(f"block_mask: count={count} outside [0, {rows * cols}] for a {rows}x{cols} grid")
    if not 0 < min_aspect <= 1:
        raise ValueError(f"block_mask: min_aspect={min_aspect}; use (0, 1]")
    max_patches = count if max_patches is None else max_patches
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros(shape, dtype=bool)
    masked = 0
    while masked < count:
        added = _place_block(mask, min(count - masked, max(1, max_patches)), min_patches, log_aspect, generator)
        if added == 0:
            break
        masked += added
    if masked < count:  # complete to the target with random free patches
        free = np.flatnonzero(~mask.ravel())
        order = permutation(generator, free.size)[: count - masked]
        mask.ravel()[free[order]] = True
    return mask


def sample_crop_masks(num_crops: int, shape: tuple[int, int], generator: RandomGenerator, *,
                      probability: float, ratio: tuple[float, float], min_patches: int = 4,
                      max_fraction: float = 0.5, min_aspect: float = 0.3) -> np.ndarray:
    """Masks (num_crops, rows, cols) for the global crops of one example (see the module doc)."""
    patches = shape[0] * shape[1]
    masks = np.zeros((num_crops, *shape), dtype=bool)
    for crop in range(num_crops):
        if bernoulli(generator, probability):
            count = int(patches * uniform(generator, *ratio))
            masks[crop] = block_mask(shape, count, generator, min_patches=min_patches,
                                     max_patches=max(1, int(max_fraction * patches)), min_aspect=min_aspect)
    return masks
