"""Learning-rate schedules with linear warmup: constant, cosine (Loshchilov & Hutter 2017), poly
(power 0.9, the SegFormer recipe)."""

from __future__ import annotations

import math

import torch

__all__ = ["build_scheduler", "lr_factor"]


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** 0.9
    raise ValueError(f"unknown schedule {schedule!r}; valid: constant, cosine, poly")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: str, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule, warmup_steps)
    )
