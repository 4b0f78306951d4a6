"""Self-supervised pretraining: losses, heads, views and the methods the engine calls.

One idea per module: :mod:`~fedecho.ssl.ntxent` (NT-Xent), :mod:`~fedecho.ssl.heads` (SimCLR
projection and DINO heads), :mod:`~fedecho.ssl.frame_order` (24-permutation reordering task),
:mod:`~fedecho.ssl.dino` (DINO loss with centring), :mod:`~fedecho.ssl.ema` (EMA teacher),
:mod:`~fedecho.ssl.views` (method inputs from decoded samples),
:mod:`~fedecho.ssl.methods` (``SSL_METHODS``: simclr, multi_instance, echoclr, dino) and
:mod:`~fedecho.ssl.dinov2` (dinov2, registered there; its losses in
:mod:`~fedecho.ssl.dinov2_losses`, its masking in :mod:`~fedecho.ssl.dinov2_masking`).
"""

from fedecho.ssl.dino import DINOLoss, teacher_temperature
from fedecho.ssl.ema import cosine_momentum, ema_update_
from fedecho.ssl.frame_order import (
    PERMUTATIONS,
    FrameOrderHead,
    inverse_permutation,
    permutation_label,
    permute_chunks,
)
from fedecho.ssl.heads import DINOHead, ProjectionHead
from fedecho.ssl.methods import (
    DINO,
    SSL_METHODS,
    EchoCLR,
    MultiInstanceSimCLR,
    PretrainMethod,
    SimCLR,
    build_method,
)
from fedecho.ssl.dinov2 import DINOv2
from fedecho.ssl.ntxent import NTXentLoss, nt_xent_loss, paired_positive_index
from fedecho.ssl.views import collate_views, group_by_study

__all__ = [
    "DINO",
    "PERMUTATIONS",
    "SSL_METHODS",
    "DINOHead",
    "DINOv2",
    "DINOLoss",
    "EchoCLR",
    "FrameOrderHead",
    "MultiInstanceSimCLR",
    "NTXentLoss",
    "PretrainMethod",
    "ProjectionHead",
    "SimCLR",
    "build_method",
    "collate_views",
    "cosine_momentum",
    "ema_update_",
    "group_by_study",
    "inverse_permutation",
    "nt_xent_loss",
    "paired_positive_index",
    "permutation_label",
    "permute_chunks",
    "teacher_temperature",
]
