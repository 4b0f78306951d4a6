"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR (Chen et al. 2020).

For M L2-normalised embeddings z and anchor i with positive p(i),

    l_i = -log( exp(z_i . z_p(i) / tau) / sum_{j != i} exp(z_i . z_j / tau) )

and the loss is the mean of l_i over anchors. In the standard 2N layout the embeddings are two
views a and b of N items stacked as [a; b], so p(i) = i + N mod 2N. Multi-instance SimCLR
(Holste et al. 2023, "EchoCLR") keeps this layout with a and b from two *different* videos of the
same study; :func:`nt_xent_loss` also takes an explicit positive index, and ``group_ids`` to drop
same-group items other than the positive from the denominator (they are not negatives, e.g. a
third video of the same study in the batch).

The loss couples the samples of a batch: it is not a mean of per-sample terms, so sample-level
DP-SGD does not apply to it (see DESIGN §5).

Written here rather than taken from lightly (``NTXentLoss``): lightly pulls pytorch-lightning,
and neither its explicit-pair nor its group masking matches the multi-instance case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NTXentLoss", "nt_xent_loss", "paired_positive_index"]


def paired_positive_index(n: int, device: torch.device | None = None) -> Tensor:
    """Positive index of the standard 2N layout [a; b]: (2N,) = [N, ..., 2N-1, 0, ..., N-1]."""
    idx = torch.arange(n, device=device)
    return torch.cat([idx + n, idx])


def nt_xent_loss(
    embeddings: Tensor,
    positive_index: Tensor,
    temperature: float,
    group_ids: Tensor | None = None,
) -> Tensor:
    """NT-Xent over ``embeddings`` (M, D) with anchor i's positive at ``positive_index[i]`` (M,).

    ``embeddings`` need not be normalised (they are L2-normalised here). ``group_ids`` (M,) int:
    items sharing anchor i's group, other than its positive, are left out of its denominator.
    Returns the scalar mean over the M anchors.
    """
    if temperature <= 0:
        raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"NT-Xent needs embeddings (M >= 2, D), got shape {tuple(embeddings.shape)}")
    m = embeddings.shape[0]
    positive_index = positive_index.to(device=embeddings.device, dtype=torch.long)
    if positive_index.shape != (m,):
        raise ValueError(f"positive_index must have shape ({m},), got {tuple(positive_index.shape)}")
    anchors = torch.arange(m, device=embeddings.device)
    if positive_index.min() < 0 or positive_index.max() >= m or (positive_index == anchors).any():
        raise ValueError("positive_index entries must lie in [0, M) and differ from their anchor")

    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / temperature
    excluded = torch.eye(m, dtype=torch.bool, device=z.device)
    if group_ids is not None:
        group_ids = group_ids.to(z.device)
        if group_ids.shape != (m,):
            raise ValueError(f"group_ids must have shape ({m},), got {tuple(group_ids.shape)}")
        same_group = group_ids[:, None] == group_ids[None, :]
        is_positive = torch.zeros_like(excluded)
        is_positive[anchors, positive_index] = True
        excluded = excluded | (same_group & ~is_positive)
    logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, positive_index)


class NTXentLoss(nn.Module):
    """NT-Xent on two views (Chen et al. 2020): ``loss(view_a, view_b)``.

    ``view_a``, ``view_b``: (N, D) projections of N items (row i of each is a positive pair);
    every other of the 2N - 1 rows is a negative of an anchor, except same-``group_ids`` rows
    (N,), which are ignored. SimCLR uses temperature 0.5 (RHD seed), EchoCLR 0.05.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"NTXentLoss temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, view_a: Tensor, view_b: Tensor, group_ids: Tensor | None = None) -> Tensor:
        if view_a.shape != view_b.shape or view_a.ndim != 2:
            raise ValueError(
                f"NTXentLoss needs two (N, D) views of equal shape, got {tuple(view_a.shape)} "
                f"and {tuple(view_b.shape)}"
            )
        n = view_a.shape[0]
        groups = None if group_ids is None else torch.cat([group_ids, group_ids])
        return nt_xent_loss(
            torch.cat([view_a, view_b]), paired_positive_index(n, view_a.device), self.temperature, groups
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
