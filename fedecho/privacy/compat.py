"""Which training can take sample-level DP-SGD, checked before any training starts."""

from __future__ import annotations

from torch import nn

__all__ = ["check_sample_dp"]


def check_sample_dp(model: nn.Module, *, per_sample_loss: bool, what: str) -> None:
    """Raise ``ValueError`` naming the fix when DP-SGD cannot give its guarantee for ``model``.

    - Losses that couple the samples of a batch (NT-Xent, multi-instance contrastive) have no
      per-sample gradient: DP-SGD is refused and site-level DP offered instead.
    - Layers opacus cannot compute per-sample gradients for, or that mix samples (trainable
      BatchNorm), are listed all at once (opacus' ModuleValidator).
    - A frozen BatchNorm in train mode passes opacus' validator but still mixes samples through its
      batch statistics; it must be replaced or kept in eval mode.
    """
    if not per_sample_loss:
        raise ValueError(
            f"{what} uses a loss that couples the samples of a batch (contrastive), so sample-level "
            f"DP-SGD cannot bound one sample's influence; use privacy.mode=site (clipping and noise of "
            f"whole site updates at the coordinator) or a per-sample method (supervised tasks, DINO)"
        )
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        listed = "; ".join(str(e) for e in errors[:10])
        raise ValueError(
            f"{what} cannot train with DP-SGD: {listed}. Build the backbone with model.norm=group "
            f"(GroupNorm instead of BatchNorm) before adding LoRA"
        )
    mixing = [name for name, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if mixing:
        raise ValueError(
            f"{what}: BatchNorm layers in train mode mix samples even when frozen ({', '.join(mixing[:5])}); "
            f"use model.norm=group or keep them in eval mode"
        )
