"""Frame-reordering pretext task (Holste et al. 2023): permutations, labels, inverse, views."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fedecho.ssl.frame_order import (
    PERMUTATIONS,
    FrameOrderHead,
    inverse_permutation,
    permutation_label,
    permute_chunks,
    sample_permutation_label,
)
from fedecho.ssl.views import frame_order_view


def test_the_24_permutations_are_unique_and_exhaustive() -> None:
    assert len(PERMUTATIONS) == 24
    assert len(set(PERMUTATIONS)) == 24
    assert set(PERMUTATIONS) == set(itertools.permutations(range(4)))
    assert PERMUTATIONS[0] == (0, 1, 2, 3)


def test_labels_index_the_permutations() -> None:
    assert [permutation_label(p) for p in PERMUTATIONS] == list(range(24))
    assert permutation_label([3, 2, 1, 0]) == 23
    with pytest.raises(ValueError, match="not a permutation"):
        permutation_label((0, 0, 1, 2))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_permutation_then_inverse_is_identity(as_tensor: bool) -> None:
    clip = np.random.default_rng(0).random((1, 8, 3, 2)).astype(np.float32)  # (C, T, H, W)
    x = torch.from_numpy(clip) if as_tensor else clip
    for p in PERMUTATIONS:
        shuffled = permute_chunks(x, p)
        restored = permute_chunks(shuffled, inverse_permutation(p))
        assert np.array_equal(np.asarray(restored), clip)
        if p != PERMUTATIONS[0]:
            assert not np.array_equal(np.asarray(shuffled), clip)


def test_applying_a_permutation_moves_chunks_as_documented() -> None:
    # frame t holds value t; 8 frames = 4 chunks of 2 frames
    clip = np.broadcast_to(np.arange(8, dtype=np.float32)[None, :, None, None], (1, 8, 2, 2)).copy()
    out = permute_chunks(clip, (2, 0, 3, 1))
    assert out[0, :, 0, 0].tolist() == [4, 5, 0, 1, 6, 7, 2, 3]
    batch = torch.from_numpy(np.stack([clip, clip]))  # (B, C, T, H, W): time is still dim -3
    assert permute_chunks(batch, (1, 0, 2, 3))[1, 0, :, 0, 0].tolist() == [2, 3, 0, 1, 4, 5, 6, 7]


def test_frame_order_view_label_matches_the_shuffle() -> None:
    clip = np.broadcast_to(np.arange(4, dtype=np.float32)[None, :, None, None], (1, 4, 2, 2)).copy()
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        shuffled, label = frame_order_view(clip, rng)
        order = tuple(int(v) for v in shuffled[0, :, 0, 0])  # frame values reveal the permutation
        assert permutation_label(order) == label
        seen.add(label)
    assert seen == set(range(24))
    g = torch.Generator().manual_seed(0)
    assert all(0 <= sample_permutation_label(g) < 24 for _ in range(20))


def test_clip_length_must_split_into_four_chunks() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        permute_chunks(np.zeros((1, 6, 2, 2)), (1, 0, 2, 3))


def test_head_outputs_24_logits() -> None:
    assert FrameOrderHead(16, 8)(torch.randn(3, 16)).shape == (3, 24)
    assert FrameOrderHead(16, 0)(torch.randn(3, 16)).shape == (3, 24)
