"""Build the inputs of the self-supervised methods from decoded samples.

How a training loop feeds a method (see :class:`fedecho.ssl.methods.PretrainMethod`):

1. items: ``method.input_unit == "sample"`` (simclr, dino): one item per record;
   ``"study"`` (multi_instance, echoclr): one item per group of >= 2 videos of a study (or
   patient), made by :func:`group_by_study` from the site's records.
2. per item and epoch: decode the item's samples (``reader.load``), draw
   ``generator = np.random.default_rng((seed, epoch, index))`` and call
   ``method.make_views(sample_or_samples, generator)`` -> a dict of arrays for one example;
3. :func:`collate_views` (``method.collate``) stacks a list of such dicts into a batch for
   ``method.loss(batch)``.

The functions here are the pieces: a random frame or clip of a sample as float in [0, 1], two
augmented views, multi-crop, pairs of different videos of a group, and frame-order clips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from fedecho.data.errors import EchoDataError
from fedecho.data.schema import Sample
from fedecho.ssl.frame_order import PERMUTATIONS, permute_chunks, sample_permutation_label
from fedecho.transforms.compose import Example
from fedecho.transforms.sampling import RandomGenerator, integer

__all__ = [
    "collate_views",
    "frame_order_view",
    "frames_as_float",
    "group_by_study",
    "multi_crop",
    "pick_pair",
    "random_clip",
    "random_frame",
    "two_views",
]

log = logging.getLogger(__name__)

TransformFn = Callable[[Example, RandomGenerator], Example]
ItemT = TypeVar("ItemT")


def frames_as_float(sample: Sample, index: np.ndarray | int | None = None) -> np.ndarray:
    """The sample's frames (or ``frames[index]``) as float32 in [0, 1].

    uint8 is divided by 255; float frames are checked to lie in [0, 1]. Selecting ``index``
    first converts only the frames used.
    """
    frames = sample.frames if index is None else sample.frames[index]
    where = sample.path or sample.item_id
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(frames.dtype, np.floating):
        lo, hi = float(frames.min()), float(frames.max())
        if lo < 0.0 or hi > 1.0:
            raise EchoDataError.at(
                where, f"float frames must lie in [0, 1] for augmentation, found [{lo:.3g}, {hi:.3g}]"
            )
        return frames.astype(np.float32, copy=False)
    raise EchoDataError.at(where, f"frames of dtype {frames.dtype}; expected uint8 or float in [0, 1]")


def random_frame(sample: Sample, generator: RandomGenerator) -> np.ndarray:
    """One frame as float32 (1, H, W): a uniformly random frame of a video, or the image itself."""
    if sample.is_video:
        return frames_as_float(sample, integer(generator, 0, sample.frames.shape[0]))[None]
    return frames_as_float(sample)[None]


def random_clip(sample: Sample, length: int, stride: int, generator: RandomGenerator) -> np.ndarray:
    """A clip of ``length`` frames ``stride`` apart at a random start, float32 (1, T, H, W).

    A video shorter than the span ``(length - 1) * stride + 1`` is looped (frame indices taken
    modulo its length): cine loops are roughly periodic.
    """
    if not sample.is_video:
        raise EchoDataError.at(
            sample.path or sample.item_id,
            "is a single image; clip methods (multi_instance, echoclr) need videos",
        )
    total = sample.frames.shape[0]
    span = (length - 1) * stride + 1
    start = integer(generator, 0, total - span + 1) if total >= span else 0
    index = (start + stride * np.arange(length)) % total
    return frames_as_float(sample, index)[None]


def two_views(example: Example, transform: TransformFn, generator: RandomGenerator) -> tuple[Any, Any]:
    """Two independent augmentations of one example's ``image`` (or ``clip``): (view_a, view_b)."""
    key = "image" if "image" in example else "clip"
    return transform(example, generator)[key], transform(example, generator)[key]


def multi_crop(
    image: np.ndarray,
    global_transform: TransformFn,
    local_transform: TransformFn,
    num_local: int,
    generator: RandomGenerator,
) -> tuple[np.ndarray, np.ndarray]:
    """DINO multi-crop of an image (C, H, W): 2 global crops (2, C, S, S) and ``num_local``
    local crops (N, C, s, s) (Caron et al. 2021)."""
    example = {"image": image}
    globals_ = [global_transform(example, generator)["image"] for _ in range(2)]
    locals_ = [local_transform(example, generator)["image"] for _ in range(num_local)]
    if not locals_:  # (0, C, 0, 0): stacks into a batch and carries no crop
        return np.stack(globals_), np.zeros((0, image.shape[0], 0, 0), dtype=np.float32)
    return np.stack(globals_), np.stack(locals_)


def frame_order_view(clip: np.ndarray, generator: RandomGenerator) -> tuple[np.ndarray, int]:
    """Shuffle the 4 time chunks of a clip (C, T, H, W) by a random permutation: (clip, label)."""
    label = sample_permutation_label(generator)
    return permute_chunks(clip, PERMUTATIONS[label], time_dim=1), label


def group_by_study(
    items: Sequence[ItemT], level: str = "study", min_size: int = 2
) -> list[list[ItemT]]:
    """Group records or samples (anything with ``patient_id`` and ``study_id``) by study
    (``level="study"``: same patient and study) or by ``"patient"``, in first-seen order;
    ``"video"`` makes one group per item (positives are then two clips of one video).

    Groups with fewer than ``min_size`` items cannot give two different videos; they are left
    out and their number is logged.
    """
    if level not in ("study", "patient", "video"):
        raise ValueError(f"group level {level!r}; use 'study', 'patient' or 'video'")
    if level == "video":
        return [[item] for item in items]
    groups: dict[Hashable, list[ItemT]] = {}
    for item in items:
        key = item.patient_id if level == "patient" else (item.patient_id, item.study_id)
        groups.setdefault(key, []).append(item)
    kept = [g for g in groups.values() if len(g) >= min_size]
    if len(kept) < len(groups):
        log.info(
            "multi-instance grouping by %s: %d of %d groups have fewer than %d videos and are left out",
            level, len(groups) - len(kept), len(groups), min_size,
        )
    return kept


def pick_pair(group: Sequence[ItemT], generator: RandomGenerator) -> tuple[ItemT, ItemT]:
    """Two different members of ``group`` (uniform over ordered pairs)."""
    if len(group) < 2:
        raise ValueError(f"a multi-instance group needs >= 2 videos, got {len(group)}")
    first = integer(generator, 0, len(group))
    second = integer(generator, 0, len(group) - 1)
    return group[first], group[second + (second >= first)]


def collate_views(examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Stack per-example view dicts into a batch.

    Arrays/tensors are stacked on a new first axis; ints become an int64 tensor (B,); strings
    (e.g. ``group``) become int64 ids (B,) numbered by first occurrence in the batch.
    """
    if not examples:
        raise ValueError("collate_views got an empty list of examples")
    keys = examples[0].keys()
    for ex in examples[1:]:
        if ex.keys() != keys:
            raise ValueError(f"examples have different keys: {sorted(keys)} vs {sorted(ex.keys())}")
    batch: dict[str, Tensor] = {}
    for key in keys:
        values = [ex[key] for ex in examples]
        first = values[0]
        if isinstance(first, str):
            ids: dict[str, int] = {}
            batch[key] = torch.tensor([ids.setdefault(v, len(ids)) for v in values], dtype=torch.long)
        elif isinstance(first, (int, np.integer)):
            batch[key] = torch.tensor([int(v) for v in values], dtype=torch.long)
        else:
            batch[key] = torch.stack([torch.as_tensor(v) for v in values])
    return batch
