"""Task heads: what sits on a backbone's embedding or feature maps to produce a task's output.

Every head here is DP-SGD compatible (no BatchNorm unless asked for): opacus computes per-sample
gradients for Linear, Conv2d and GroupNorm, and BatchNorm would mix samples of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HeatmapLandmarkHead",
    "MLPHead",
    "RegressionLandmarkHead",
    "SegFormerDecoder",
    "TemporalPoolingHead",
]


class MLPHead(nn.Module):
    """Linear head (a linear probe) or a one-hidden-layer MLP: (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        if hidden_dim is None:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_dim}) features, got {tuple(x.shape)}")
        return self.net(x)


class TemporalPoolingHead(nn.Module):
    """Pools per-frame embeddings over time, then an :class:`MLPHead`: (B, T, D) -> (B, out_dim).

    Used for clip tasks on image backbones: every frame is encoded separately and the sequence is
    pooled. ``pool="mean"`` averages frames; ``pool="attention"`` learns frame weights
    softmax_t(wᵀ tanh(V h_t)), the attention-based MIL pooling of Ilse, Tomczak & Welling,
    "Attention-based Deep Multiple Instance Learning", ICML 2018.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        pool: str = "mean",
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        attention_dim: int = 64,
    ) -> None:
        super().__init__()
        if pool not in ("mean", "attention"):
            raise ValueError(f"pool must be 'mean' or 'attention', got {pool!r}")
        self.pool = pool
        self.in_dim = in_dim
        if pool == "attention":
            self.attention = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
        self.mlp = MLPHead(in_dim, out_dim, hidden_dim, dropout)

    def frame_weights(self, x: Tensor) -> Tensor:
        """Pooling weights (B, T) that sum to 1 over time."""
        if self.pool == "mean":
            return x.new_full(x.shape[:2], 1.0 / x.shape[1])
        return torch.softmax(self.attention(x).squeeze(-1), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[2] != self.in_dim:
            raise ValueError(
                f"TemporalPoolingHead expects per-frame features (B, T, {self.in_dim}), got {tuple(x.shape)}"
            )
        pooled = (self.frame_weights(x).unsqueeze(-1) * x).sum(dim=1)
        return self.mlp(pooled)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'group' or 'batch', got {kind!r}")


class SegFormerDecoder(nn.Module):
    """The all-MLP decoder of SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for
    Semantic Segmentation with Transformers", NeurIPS 2021), on any backbone's feature maps.

    Each map (B, C_i, H_i, W_i) is projected by a per-pixel linear layer (1×1 conv) to
    ``embed_dim`` channels, upsampled to the largest map's size, concatenated, fused by a 1×1 conv
    + norm + ReLU, and classified by a 1×1 conv: output (B, out_channels, H_0, W_0) at the finest
    map's resolution (stride 4 on SegFormer/ResNet-18, 16 on ViT). The task upsamples to the input.
    ``norm="group"`` replaces the paper's BatchNorm so that the head trains under DP-SGD.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        embed_dim: int = 128,
        dropout: float = 0.1,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("SegFormerDecoder needs at least one feature map (the backbone has no spatial neck)")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.project = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in self.in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(embed_dim * len(self.in_channels), embed_dim, kernel_size=1, bias=False),
            _norm(norm, embed_dim),
            nn.ReLU(),  # not in place: opacus hooks the norm output (DP-SGD)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(embed_dim, out_channels, kernel_size=1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.in_channels) or any(
            f.ndim != 4 or f.shape[1] != c for f, c in zip(features, self.in_channels, strict=False)
        ):
            got = [tuple(f.shape) for f in features]
            raise ValueError(f"SegFormerDecoder built for channels {self.in_channels}, got feature maps {got}")
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else proj(f)
            for proj, f in zip(self.project, features, strict=True)
        ]
        return self.classify(self.dropout(self.fuse(torch.cat(projected, dim=1))))


def _soft_argmax(heatmaps: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Expected pixel (x, y) under a spatial softmax of each heatmap: (B, K, h, w) -> (B, K, 2)."""
    b, k, h, w = heatmaps.shape
    prob = torch.softmax(heatmaps.flatten(2), dim=-1).view(b, k, h, w)
    height, width = image_size
    # centre of heatmap cell j in input pixel coordinates (pixel centres at integers)
    xs = (torch.arange(w, device=heatmaps.device, dtype=heatmaps.dtype) + 0.5) * (width / w) - 0.5
    ys = (torch.arange(h, device=heatmaps.device, dtype=heatmaps.dtype) + 0.5) * (height / h) - 0.5
    x = (prob.sum(dim=2) * xs).sum(dim=-1)
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


class HeatmapLandmarkHead(nn.Module):
    """Landmarks by differentiable soft-argmax over heatmaps: feature maps -> (B, K, 2) pixel (x, y).

    A :class:`SegFormerDecoder` predicts one heatmap per point; the point is the expectation of
    pixel positions under the heatmap's spatial softmax (DSNT: Nibali et al., "Numerical Coordinate
    Regression with Convolutional Neural Networks", 2018; Sun et al., "Integral Human Pose
    Regression", ECCV 2018), trained directly on coordinates.
    """

    def __init__(self, in_channels: Sequence[int], num_points: int, embed_dim: int = 128, norm: str = "group") -> None:
        super().__init__()
        self.num_points = num_points
        self.decoder = SegFormerDecoder(in_channels, num_points, embed_dim=embed_dim, dropout=0.0, norm=norm)

    def forward(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        return _soft_argmax(self.decoder(features), image_size)


class RegressionLandmarkHead(nn.Module):
    """Landmarks by direct regression from the pooled embedding (Toshev & Szegedy, "DeepPose",
    CVPR 2014): (B, in_dim) -> (B, K, 2) pixel (x, y), squashed into the image by a sigmoid."""

    def __init__(self, in_dim: int, num_points: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_points = num_points
        self.mlp = MLPHead(in_dim, 2 * num_points, hidden_dim, dropout)

    def forward(self, embedding: Tensor, image_size: tuple[int, int]) -> Tensor:
        unit = torch.sigmoid(self.mlp(embedding)).view(-1, self.num_points, 2)
        height, width = image_size
        scale = unit.new_tensor([width, height])
        return unit * scale - 0.5
