"""Normalisation-layer surgery on CNN backbones: swap BatchNorm for per-sample norms, or freeze it.

Why: in training mode BatchNorm normalises each sample with statistics of the whole batch, so one
sample's gradient depends on the others. DP-SGD's per-sample clipping then no longer bounds one
sample's influence, and opacus' validator does *not* catch a frozen BatchNorm (its parameters do
not require grad, yet it still mixes samples and updates its running statistics). Two fixes:

- :func:`replace_norms` (at build time, ``BackboneConfig.norm``): BatchNorm -> GroupNorm /
  InstanceNorm / "layer" (GroupNorm with one group), each normalising one sample on its own.
- :func:`freeze_batch_norms` (when the base is frozen, e.g. under LoRA): BatchNorm ->
  :class:`FrozenBatchNorm`, the fixed per-channel affine map BatchNorm computes in eval mode, in
  every mode. Its statistics can no longer drift and samples are never mixed.

Both replace modules in place (same attribute names) and must run *before* LoRA is injected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "FrozenBatchNorm",
    "find_batch_norms",
    "freeze_batch_norms",
    "group_count",
    "make_norm",
    "replace_norms",
]

_MAX_GROUPS = 32  # Wu & He 2018 ("Group Normalization") use 32 groups


def group_count(channels: int, max_groups: int = _MAX_GROUPS) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs a divisor).

    >>> group_count(64), group_count(45), group_count(921)
    (32, 15, 3)
    """
    if channels < 1:
        raise ValueError(f"channels={channels} must be positive")
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


def make_norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    """A per-sample norm for (B, C, *spatial) inputs with ``spatial_dims`` spatial axes (1-3).

    ``kind``: "group" (GroupNorm, :func:`group_count` groups), "instance" (affine InstanceNorm,
    no running statistics), "layer" (GroupNorm with one group = LayerNorm over C and space with a
    per-channel affine), or "batch" (plain BatchNorm).
    """
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        cls = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
        return cls(channels, affine=True, track_running_stats=False)
    if kind == "batch":
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        return cls(channels)
    raise ValueError(f"unknown norm kind {kind!r}; choose batch, group, instance or layer")


def _spatial_dims(bn: _BatchNorm) -> int:
    if isinstance(bn, nn.BatchNorm3d):
        return 3
    if isinstance(bn, nn.BatchNorm2d):
        return 2
    return 1


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _swap_children(module: nn.Module, convert) -> int:
    """Replace every BatchNorm below ``module`` by ``convert(bn)``; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            setattr(module, name, convert(child))
            count += 1
        else:
            count += _swap_children(child, convert)
    return count


def replace_norms(module: nn.Module, kind: str) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place) by a ``kind`` norm; returns ``module``.

    The BatchNorm's affine weight and bias are copied into the new layer (its running statistics
    have no counterpart and are dropped). ``kind="batch"`` leaves the module as it is.
    """
    if kind == "batch":
        return module
    make_norm(kind, 1, 2)  # validates kind with the error above before touching the module

    def convert(bn: _BatchNorm) -> nn.Module:
        new = make_norm(kind, bn.num_features, _spatial_dims(bn))
        if bn.affine:
            with torch.no_grad():
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
        return new.to(_device_of(bn))

    _swap_children(module, convert)
    return module


def find_batch_norms(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers (1d/2d/3d, SyncBatchNorm) left in ``module``."""
    return [name for name, m in module.named_modules() if isinstance(m, _BatchNorm)]


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    Acts on (B, C, *spatial) of any rank, identically in train and eval mode, one sample at a
    time. Its tensors are buffers (never trained), named as in BatchNorm, so state dicts of the
    frozen and the trainable network have the same keys. torchvision's
    ``FrozenBatchNorm2d`` covers 2-D inputs only; the video backbones need 3-D.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        # unused; kept so the state-dict keys are BatchNorm's (checkpoints load either way)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm) -> FrozenBatchNorm:
        """The eval-mode map of ``bn`` (identity statistics if it tracks none)."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
            if bn.num_batches_tracked is not None:
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        return frozen.to(_device_of(bn))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *spatial) -> same shape."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm({self.num_features}) expects (B, {self.num_features}, ...); "
                f"got {tuple(x.shape)}"
            )
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(view).to(x.dtype) + shift.view(view).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place) by its :class:`FrozenBatchNorm`."""
    _swap_children(module, FrozenBatchNorm.from_batch_norm)
    return module
