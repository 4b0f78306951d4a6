"""The losses and target centring DINOv2 adds to DINO (Oquab et al. 2023, "DINOv2: Learning Robust
Visual Features without Supervision", §4).

- :func:`sinkhorn_knopp`: Sinkhorn-Knopp centring of teacher logits (SwAV, Caron et al. 2020),
  replacing DINO's softmax-minus-running-centre. With ``Q = exp(t / tau)`` as a (K prototypes x N
  samples) matrix normalised to sum 1, each iteration divides the rows by their sums and by K,
  then the columns by their sums and by N; the result times N is returned transposed, so every
  sample's target (row of the output) sums to exactly 1 and, at convergence, every prototype's
  column sums to N / K (equipartition). No state: each call sees only its batch.
- :func:`koleo_loss`: the Kozachenko-Leonenko entropy regulariser (Sablayrolles et al. 2019):
  ``-mean_i log(d_i + eps)`` where ``d_i`` is the Euclidean distance from the L2-normalised
  feature ``x_i`` to its nearest other feature in the batch.
- :func:`ibot_patch_loss`: iBOT's masked-image-modelling loss (Zhou et al. 2022): cross-entropy
  between the teacher's patch targets and the student's softened patch logits at the *masked*
  positions only, averaged over the masked patches of each image, then over images (images with
  no masked patch count in the denominator, as in DINOv2's ``iBOTPatchLoss.forward_masked``).
- :class:`PatchCentre`: the running centre of the teacher's patch logits for softmax centring
  (iBOT's ``center2``), a buffer that stays at the site.

KoLeo and Sinkhorn-Knopp couple the samples of a batch (the nearest neighbour, the column sums),
so neither has per-sample gradients: sample-level DP-SGD refuses them
(:meth:`fedecho.config.ssl.SSLConfig.batch_coupled_parts`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchCentre", "cross_view_loss", "ibot_patch_loss", "koleo_loss", "sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Targets (N, K) from teacher ``logits`` (N, K): rows sum to 1, columns tend to N / K.

    Computed in float32 in the log domain (each normalisation a ``logsumexp``): the same numbers
    as normalising ``exp(logits / temperature)`` in exact arithmetic, without its overflow or
    underflow at low temperature.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"sinkhorn_knopp needs (N >= 1, K) logits, got {tuple(logits.shape)}")
    if temperature <= 0 or iterations < 1:
        raise ValueError(f"sinkhorn_knopp: temperature > 0 and iterations >= 1 required, got {temperature}, {iterations}")
    log_q = (logits.float() / temperature).t()  # (K, N)
    num_prototypes, num_samples = log_q.shape
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(num_prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(num_samples)
    return torch.exp(log_q + math.log(num_samples)).t()


def cross_view_loss(targets: Tensor, student: Tensor, student_temp: float) -> Tensor:
    """DINO's multi-crop cross-entropy with given targets: ``targets`` (V_t, B, K) probabilities,
    ``student`` (V_s, B, K) logits; mean over batch and over view pairs v != s (the same formula
    as :class:`fedecho.ssl.dino.DINOLoss`, which centres by softmax itself)."""
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    cross = -torch.einsum("vbk,sbk->vsb", targets, log_probs)
    keep = ~torch.eye(targets.shape[0], student.shape[0], dtype=torch.bool, device=cross.device)
    if not keep.any():
        raise ValueError("the DINO loss needs at least one student view that is not the teacher's view")
    return cross[keep].mean()


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo over a batch ``features`` (B >= 2, D): ``-mean_i log(||x_i - x_nn(i)|| + eps)`` on
    L2-normalised rows, the nearest neighbour chosen by largest inner product among the others."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs (B >= 2, D) features, got {tuple(features.shape)}")
    x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)  # below any cosine: a point is never its own neighbour
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


def ibot_patch_loss(targets: Tensor, student: Tensor, masks: Tensor, student_temp: float) -> Tensor:
    """iBOT loss over masked patches.

    ``masks`` (I, P) bool over I images of P patches; ``targets`` and ``student`` (M, K) hold the
    teacher's target distributions and the student's logits at the M = ``masks.sum()`` masked
    positions, in ``masks[masks]`` (row-major) order. Returns
    ``-(1 / I) sum_i (1 / m_i) sum_{p masked in i} sum_k t_pk log softmax(s_p / tau_s)_k``.
    """
    if masks.ndim != 2 or targets.shape != student.shape or targets.shape[0] != int(masks.sum()):
        raise ValueError(
            f"ibot_patch_loss: masks (I, P) and (M, K) targets/student with M = masked count; got "
            f"{tuple(masks.shape)} ({int(masks.sum())} masked), {tuple(targets.shape)}, {tuple(student.shape)}"
        )
    per_patch = torch.sum(targets * F.log_softmax(student / student_temp, dim=-1), dim=-1)
    weights = (1.0 / masks.sum(dim=-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    return -(per_patch * weights).sum() / masks.shape[0]


class PatchCentre(nn.Module):
    """Running centre (1, K) of the teacher's masked-patch logits for softmax centring (iBOT):
    targets ``softmax((t - c) / tau_t)``, then ``c <- m c + (1 - m) mean(t)`` in training mode."""

    center: Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def targets(self, logits: Tensor, temperature: float) -> Tensor:
        return F.softmax((logits - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, logits: Tensor) -> None:
        if self.training and logits.shape[0] > 0:
            self.center.mul_(self.momentum).add_(logits.mean(dim=0, keepdim=True), alpha=1 - self.momentum)
