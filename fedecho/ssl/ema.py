"""Exponential-moving-average (EMA) teacher update and its momentum schedule.

The DINO teacher (Caron et al. 2021, §3.1; as in BYOL, Grill et al. 2020) follows the student:
``theta_t <- m theta_t + (1 - m) theta_s`` after every optimizer step, with m rising from 0.996
to 1 on a cosine schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "ema_update_"]


def cosine_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """Momentum at ``step``: ``end - (end - start) * (cos(pi * step / total_steps) + 1) / 2``.

    ``start`` at step 0, ``end`` from ``total_steps`` on.
    """
    if total_steps < 1:
        raise ValueError(f"cosine_momentum total_steps={total_steps}; use >= 1")
    progress = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter and floating-point buffer becomes
    ``momentum * teacher + (1 - momentum) * student``; integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are copied from the student.

    The two modules must have the same parameter and buffer names and shapes (the teacher is a
    copy of the student).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    teacher_tensors = dict(teacher.named_parameters()) | dict(teacher.named_buffers())
    student_tensors = dict(student.named_parameters()) | dict(student.named_buffers())
    if teacher_tensors.keys() != student_tensors.keys():
        differ = sorted(teacher_tensors.keys() ^ student_tensors.keys())[:5]
        raise ValueError(f"EMA teacher and student differ in tensor names, e.g. {differ}")
    for name, t in teacher_tensors.items():
        s = student_tensors[name]
        if t.shape != s.shape:
            raise ValueError(f"EMA teacher/student shape mismatch at {name}: {tuple(t.shape)} vs {tuple(s.shape)}")
        if t.is_floating_point():
            t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
        else:
            t.copy_(s)
