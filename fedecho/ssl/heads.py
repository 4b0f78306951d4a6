"""Projection heads of the self-supervised methods.

- :class:`ProjectionHead`: SimCLR's projection g(h) = W2 ReLU(BN(W1 h)) (Chen et al. 2020,
  "A Simple Framework for Contrastive Learning of Visual Representations", §2.1; batch norm in the
  hidden layer as in their released code). The loss is computed on g(h); h is what transfers.
- :class:`DINOHead`: DINO's head (Caron et al. 2021, "Emerging Properties in Self-Supervised
  Vision Transformers"): a 3-layer MLP with GELU to a bottleneck, L2 normalisation, then a
  weight-normalised linear layer without bias to K prototypes whose weight-norm gain is frozen at
  1 (``norm_last_layer``), as in the paper's code.

:class:`WeightNormLinear` is written here instead of ``torch.nn.utils.parametrizations.weight_norm``
because opacus cannot compute per-sample gradients through a parametrized ``nn.Linear`` (its
Linear grad sampler sees the raw weight); as its own module it goes through opacus' functorch
path, so DINO stays usable with DP-SGD.

The frame-order classification head lives with its task in :mod:`fedecho.ssl.frame_order`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOHead", "ProjectionHead", "WeightNormLinear"]


class ProjectionHead(nn.Module):
    """SimCLR projection MLP: (B, in_dim) -> (B, out_dim) (Chen et al. 2020).

    ``batch_norm=False`` gives the plain 2-layer MLP of the paper's text (Linear-ReLU-Linear).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation (Salimans & Kingma 2016):
    (B, in_dim) -> (B, out_dim) with ``W = g * v / ||v||`` row-wise.

    ``weight_v`` (out_dim, in_dim) is initialised like ``nn.Linear``; the gain ``weight_g``
    (out_dim, 1) starts at 1 and is frozen when ``fixed_gain`` (DINO's ``norm_last_layer``).
    """

    def __init__(self, in_dim: int, out_dim: int, fixed_gain: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_gain)

    @property
    def weight(self) -> Tensor:
        """The effective (out_dim, in_dim) weight."""
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO projection head: (B, in_dim) -> (B, out_dim) logits over K = out_dim prototypes.

    MLP in_dim -> hidden_dim -> hidden_dim -> bottleneck_dim (GELU between; ``num_layers``
    linear layers in all), L2 normalisation, then the weight-normed prototype layer
    (Caron et al. 2021, §3.1 and Appendix). Linear weights are truncated-normal (std 0.02).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead num_layers={num_layers}; use >= 1")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_gain=norm_last_layer)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
