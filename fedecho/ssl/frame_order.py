"""Frame-reordering pretext task of EchoCLR (Holste et al. 2023).

A clip is cut into 4 equal chunks along time (4 single frames when T = 4), the chunks are
shuffled by one of the 4! = 24 permutations, and a classification head on the encoder's clip
embedding predicts which permutation was applied (24-way cross-entropy).

Convention: applying permutation ``p`` gives output chunk ``k`` = input chunk ``p[k]``; the label
of ``p`` is its index in :data:`PERMUTATIONS` (lexicographic order, label 0 = identity).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from fedecho.transforms.sampling import RandomGenerator, integer

__all__ = [
    "NUM_CHUNKS",
    "PERMUTATIONS",
    "FrameOrderHead",
    "inverse_permutation",
    "permutation_label",
    "permute_chunks",
    "sample_permutation_label",
]

#: Number of chunks shuffled by the task.
NUM_CHUNKS = 4
#: All 24 orders of 4 chunks, lexicographic; a permutation's label is its index here.
PERMUTATIONS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(NUM_CHUNKS)))
_LABELS = {p: i for i, p in enumerate(PERMUTATIONS)}

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


def permutation_label(permutation: Sequence[int]) -> int:
    """Class label (0..23) of a permutation of (0, 1, 2, 3)."""
    key = tuple(int(i) for i in permutation)
    if key not in _LABELS:
        raise ValueError(f"{key} is not a permutation of {tuple(range(NUM_CHUNKS))}")
    return _LABELS[key]


def inverse_permutation(permutation: Sequence[int]) -> tuple[int, ...]:
    """The permutation q with q[p[k]] = k, so that applying p then q restores the order."""
    inverse = [0] * len(permutation)
    for k, source in enumerate(permutation):
        inverse[int(source)] = k
    return tuple(inverse)


def sample_permutation_label(generator: RandomGenerator) -> int:
    """A label uniform over the 24 permutations."""
    return integer(generator, 0, len(PERMUTATIONS))


def permute_chunks(clip: ArrayT, permutation: Sequence[int], time_dim: int = -3) -> ArrayT:
    """Reorder the 4 time chunks of ``clip`` by ``permutation`` (out chunk k = in chunk p[k]).

    ``clip``: numpy array or tensor with time on ``time_dim`` (default -3, i.e. (..., T, H, W)
    such as a clip (C, T, H, W) or a batch (B, C, T, H, W)); T must be divisible by 4.
    """
    permutation_label(permutation)  # validates
    length = clip.shape[time_dim]
    if length % NUM_CHUNKS:
        raise ValueError(
            f"clip has {length} frames on dim {time_dim}, not divisible into {NUM_CHUNKS} chunks; "
            f"use a clip length that is a multiple of {NUM_CHUNKS}"
        )
    chunk = length // NUM_CHUNKS
    order = [int(p) * chunk + t for p in permutation for t in range(chunk)]
    if isinstance(clip, Tensor):
        return clip.index_select(time_dim, torch.tensor(order, device=clip.device))
    return np.take(clip, order, axis=time_dim)


class FrameOrderHead(nn.Module):
    """Permutation classifier: clip embedding (B, in_dim) -> logits (B, 24).

    An MLP with one ReLU hidden layer of ``hidden_dim`` (0 = a single linear layer).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        num_classes = len(PERMUTATIONS)
        if hidden_dim:
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_classes)
            )
        else:
            self.mlp = nn.Sequential(nn.Linear(in_dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)
