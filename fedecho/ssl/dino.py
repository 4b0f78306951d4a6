"""DINO self-distillation loss with centring and sharpening (Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers", Algorithm 1 and §3.1).

The teacher's outputs on the 2 global crops are centred (minus a running centre ``c``) and
sharpened (low temperature tau_t); the student's outputs on all 2 + N crops are softened with
tau_s. The loss is the cross-entropy between teacher view v and student view s for every pair
with s != v, averaged over pairs and batch:

    L = mean_{v, s != v} mean_b  - sum_k softmax((t_vb - c) / tau_t)_k  log softmax(s_sb / tau_s)_k

After the loss, in training mode, the centre moves towards the batch mean of the teacher outputs:
``c <- m c + (1 - m) mean_{v, b} t_vb`` (center momentum m, 0.9 in the paper).

Given the teacher and the centre, the loss is a mean of per-sample terms (the centre used is the
one from before the batch), so sample-level DP-SGD applies to the student.

Written here rather than taken from lightly (``DINOLoss``): lightly pulls pytorch-lightning, and
the centre must be a plain buffer that round-trips through the site's private state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOLoss", "teacher_temperature"]


def teacher_temperature(step: int, final: float, warmup_start: float, warmup_steps: int) -> float:
    """Teacher temperature at optimizer ``step``: linear from ``warmup_start`` to ``final`` over
    ``warmup_steps`` steps, then ``final`` (Caron et al. 2021: 0.04 -> 0.04 or 0.07 over 30
    epochs)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return final
    return warmup_start + (final - warmup_start) * step / warmup_steps


class DINOLoss(nn.Module):
    """DINO loss over multi-crop outputs; holds the centre (a buffer, site-private state).

    ``forward(student, teacher, teacher_temp)``:
    - ``student`` (V_s, B, K): student logits per crop; the first V_t crops are the global
      crops the teacher saw, in the same order;
    - ``teacher`` (V_t, B, K): teacher logits on the global crops (no gradient flows to them);
    - returns the scalar loss. In training mode the centre is updated afterwards.
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"DINOLoss student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"DINOLoss center_momentum must be in [0, 1), got {center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: Tensor, teacher: Tensor, teacher_temp: float) -> Tensor:
        if teacher_temp <= 0:
            raise ValueError(f"teacher temperature must be > 0, got {teacher_temp}")
        if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
            raise ValueError(
                f"DINOLoss needs student (V_s, B, K) and teacher (V_t, B, K), got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        if student.shape[-1] != self.center.shape[-1] or teacher.shape[0] > student.shape[0]:
            raise ValueError(
                f"DINOLoss: K={student.shape[-1]} (centre has {self.center.shape[-1]}) and "
                f"teacher views {teacher.shape[0]} <= student views {student.shape[0]} required"
            )
        teacher = teacher.detach()
        targets = F.softmax((teacher - self.center) / teacher_temp, dim=-1)
        log_probs = F.log_softmax(student / self.student_temp, dim=-1)
        # cross[v, s, b] = -sum_k targets[v, b, k] * log_probs[s, b, k]
        cross = -torch.einsum("vbk,sbk->vsb", targets, log_probs)
        v_t, v_s = teacher.shape[0], student.shape[0]
        keep = ~torch.eye(v_t, v_s, dtype=torch.bool, device=cross.device)
        if not keep.any():
            raise ValueError("DINOLoss needs at least one student view that is not the teacher's view")
        loss = cross[keep].mean()
        if self.training:
            self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher: Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher)`` over views and batch; ``teacher`` (V_t, B, K)."""
        batch_center = teacher.reshape(-1, teacher.shape[-1]).mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.center.shape[-1]}, student_temp={self.student_temp}, "
            f"center_momentum={self.center_momentum}"
        )
