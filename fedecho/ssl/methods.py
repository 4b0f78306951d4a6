"""Self-supervised pretraining methods: what the training engine and federation call.

=================  ======  ========  ===========================================================
name               input   unit      loss
=================  ======  ========  ===========================================================
``simclr``         image   sample    NT-Xent between two augmentations of a frame (Chen et al.
                                     2020; SimCLR-RHD: ResNet-18, tau 0.5)
``multi_instance`` clip    study     NT-Xent between clips of two *different* videos of a study
                                     (Holste et al. 2023, multi-instance SimCLR; tau 0.05)
``echoclr``        clip    study     multi_instance + frame-reordering cross-entropy over 24
                                     permutations of 4 chunks (Holste et al. 2023, EchoCLR)
``dino``           image   sample    DINO self-distillation, EMA teacher, centring, multi-crop
                                     (Caron et al. 2021)
=================  ======  ========  ===========================================================

Batches (``make_views`` per item, then ``collate``), B items, C = 1 channel:

- simclr: ``view_a``, ``view_b`` (B, C, H, W);
- multi_instance: ``view_a``, ``view_b`` (B, C, T, H, W) from two videos, ``group`` (B,) int64
  (same-group rows other than the positive are not used as negatives);
- echoclr: as multi_instance plus ``order_clip`` (B, C, T, H, W) and ``order_label`` (B,) int64;
- dino: ``global_crops`` (B, 2, C, S, S), ``local_crops`` (B, N, C, s, s).

Federation: :meth:`PretrainMethod.shared_parameter_names` are the trainable parameters of the
student side (encoder + SSL heads; with LoRA injected into the encoder, only its adapters since
the base weights are frozen). What a site actually sends is decided by
:class:`fedecho.engine.learners.PretrainLearner` alone: these parameters *and* the buffers of the
same modules (BatchNorm running statistics travel with their weights; they are not kept local).
:meth:`PretrainMethod.local_state_dict` is the complement of the shared *parameters* (teacher,
centre, step, buffers) for single-site use; federation does not call it.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedecho.config.ssl import SSLConfig
from fedecho.data.schema import Sample
from fedecho.registry import Registry
from fedecho.ssl.dino import DINOLoss, teacher_temperature
from fedecho.ssl.ema import cosine_momentum, ema_update_
from fedecho.ssl.frame_order import FrameOrderHead
from fedecho.ssl.heads import DINOHead, ProjectionHead
from fedecho.ssl.ntxent import NTXentLoss
from fedecho.ssl.views import (
    collate_views,
    frame_order_view,
    multi_crop,
    pick_pair,
    random_clip,
    random_frame,
    two_views,
)
from fedecho.transforms.presets import build_transform
from fedecho.transforms.sampling import RandomGenerator

__all__ = ["DINO", "SSL_METHODS", "EchoCLR", "MultiInstanceSimCLR", "PretrainMethod", "SimCLR", "build_method"]

SSL_METHODS: Registry[type[PretrainMethod]] = Registry("SSL method")

_BACKBONES_FOR = {"image": "resnet18, vit-s16 or segformer-b0", "clip": "r3d18 or r2plus1d18"}


def _require(batch: Mapping[str, Any], keys: Sequence[str], method: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(
            f"{method} batch lacks {missing} (has {sorted(batch)}); build it with "
            f"method.make_views(...) and method.collate(...)"
        )


class PretrainMethod(nn.Module, ABC):
    """A self-supervised method around a :class:`~fedecho.models.base.Backbone` (the student).

    ``make_views(item, generator)`` takes a :class:`~fedecho.data.schema.Sample` when
    ``input_unit == "sample"`` and a sequence of >= 2 Samples of one study/patient when
    ``"study"``; ``collate`` stacks its outputs into the batch ``loss`` takes.
    """

    name: ClassVar[str]
    input_kind: ClassVar[str]
    input_unit: ClassVar[str]
    per_sample_loss: ClassVar[bool]
    _local_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: nn.Module, cfg: SSLConfig) -> None:
        super().__init__()
        kind = getattr(backbone, "input_kind", None)
        if kind != self.input_kind:
            raise ValueError(
                f"SSL method {self.name!r} needs a backbone with input_kind={self.input_kind!r} "
                f"(e.g. {_BACKBONES_FOR[self.input_kind]}); got {type(backbone).__name__} with "
                f"input_kind={kind!r}"
            )
        self.backbone = backbone
        self.cfg = cfg

    @abstractmethod
    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of a collated batch, and float logs (always including ``"loss"``)."""

    @abstractmethod
    def make_views(self, item: Any, generator: RandomGenerator) -> dict[str, Any]:
        """Inputs of one example (arrays without the batch axis) drawn from ``generator``."""

    @staticmethod
    def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """Stack ``make_views`` outputs into a batch (:func:`fedecho.ssl.views.collate_views`)."""
        return collate_views(examples)

    def after_optimizer_step(self) -> None:
        """Called by the engine after every optimizer step (the DINO teacher update)."""

    # --- federation ----------------------------------------------------------------------------
    def shared_parameter_names(self) -> list[str]:
        """Names (in ``state_dict()``) of the tensors federation aggregates: trainable student
        parameters (encoder + heads)."""
        return [
            n for n, p in self.named_parameters()
            if p.requires_grad and not n.startswith(self._local_prefixes)
        ]

    def shared_state_dict(self) -> dict[str, Tensor]:
        """Detached copies of the shared tensors, keyed by name."""
        state = self.state_dict()
        return {n: state[n].detach().clone() for n in self.shared_parameter_names()}

    def load_shared_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load exactly the shared tensors (wrong or missing keys raise, naming them)."""
        self._load_subset(state, set(self.shared_parameter_names()), "shared")

    def local_state_dict(self) -> dict[str, Tensor]:
        """Site-private state: every ``state_dict()`` entry that is not shared (teacher, centre,
        step, buffers, frozen weights). Shared + local = the whole method."""
        shared = set(self.shared_parameter_names())
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k not in shared}

    def load_local_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load a :meth:`local_state_dict` (wrong or missing keys raise, naming them)."""
        shared = set(self.shared_parameter_names())
        self._load_subset(state, set(self.state_dict()) - shared, "local")

    def _load_subset(self, state: Mapping[str, Tensor], expected: set[str], what: str) -> None:
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise ValueError(
                f"{self.name}: {what} state does not match this method: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''} (was it saved by another method or backbone?)"
            )
        self.load_state_dict(dict(state), strict=False)


def _contrastive_logs(za: Tensor, zb: Tensor) -> dict[str, float]:
    """Mean positive cosine similarity and top-1 accuracy of finding the positive among 2N - 1."""
    with torch.no_grad():
        z = F.normalize(torch.cat([za, zb]).float(), dim=1)
        n = za.shape[0]
        sim = (z @ z.T).fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return {
            "positive_cosine": float(sim[torch.arange(2 * n), target].mean()),
            "contrastive_top1": float((sim.argmax(dim=1) == target).float().mean()),
        }


@SSL_METHODS.register("simclr")
class SimCLR(PretrainMethod):
    """SimCLR (Chen et al. 2020): two augmentations of a frame, projection head, NT-Xent."""

    name = "simclr"
    input_kind = "image"
    input_unit = "sample"
    per_sample_loss = False

    def __init__(self, backbone: nn.Module, cfg: SSLConfig) -> None:
        super().__init__(backbone, cfg)
        hidden = cfg.projection_hidden_dim or backbone.embed_dim
        self.projection_head = ProjectionHead(backbone.embed_dim, hidden, cfg.projection_dim)
        self.criterion = NTXentLoss(cfg.temperature)
        self.transform = build_transform("simclr", cfg.augment)

    def make_views(self, item: Sample, generator: RandomGenerator) -> dict[str, Any]:
        view_a, view_b = two_views({"image": random_frame(item, generator)}, self.transform, generator)
        return {"view_a": view_a, "view_b": view_b}

    def _contrastive(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        _require(batch, ("view_a", "view_b"), self.name)
        z = self.projection_head(self.backbone(torch.cat([batch["view_a"], batch["view_b"]])))
        za, zb = z.chunk(2)
        loss = self.criterion(za, zb, batch.get("group"))
        return loss, {"ntxent": float(loss.detach()), **_contrastive_logs(za, zb)}

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, logs = self._contrastive(batch)
        return loss, {"loss": float(loss.detach()), **logs}


@SSL_METHODS.register("multi_instance")
class MultiInstanceSimCLR(SimCLR):
    """Multi-instance SimCLR (Holste et al. 2023): the two views are clips of two different
    videos of one study (``cfg.positive_level`` "study") or patient ("patient"), or two clips of
    one video ("video": for datasets with a single video per study)."""

    name = "multi_instance"
    input_kind = "clip"
    input_unit = "study"

    def make_views(self, item: Sequence[Sample], generator: RandomGenerator) -> dict[str, Any]:
        cfg = self.cfg
        first, second = (item[0], item[0]) if cfg.positive_level == "video" else pick_pair(item, generator)
        views = [
            self.transform({"clip": random_clip(s, cfg.clip_length, cfg.clip_stride, generator)}, generator)["clip"]
            for s in (first, second)
        ]
        group = {"patient": first.patient_id, "video": f"{first.patient_id}/{first.study_id}/{first.item_id}"}.get(
            cfg.positive_level, f"{first.patient_id}/{first.study_id}")
        return {"view_a": views[0], "view_b": views[1], "group": group}


@SSL_METHODS.register("echoclr")
class EchoCLR(MultiInstanceSimCLR):
    """EchoCLR (Holste et al. 2023): multi-instance NT-Xent + frame-reordering classification.

    The reordering clip is ``view_a`` with its 4 time chunks shuffled; loss = NT-Xent +
    ``cfg.frame_order_weight`` * cross-entropy over the 24 permutations.
    """

    name = "echoclr"

    def __init__(self, backbone: nn.Module, cfg: SSLConfig) -> None:
        super().__init__(backbone, cfg)
        self.frame_order_head = FrameOrderHead(backbone.embed_dim, cfg.frame_order_hidden_dim)

    def make_views(self, item: Sequence[Sample], generator: RandomGenerator) -> dict[str, Any]:
        views = super().make_views(item, generator)
        views["order_clip"], views["order_label"] = frame_order_view(views["view_a"], generator)
        return views

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        _require(batch, ("order_clip", "order_label"), self.name)
        contrastive, logs = self._contrastive(batch)
        logits = self.frame_order_head(self.backbone(batch["order_clip"]))
        order = F.cross_entropy(logits, batch["order_label"])
        loss = contrastive + self.cfg.frame_order_weight * order
        accuracy = float((logits.detach().argmax(dim=1) == batch["order_label"]).float().mean())
        return loss, {
            "loss": float(loss.detach()), **logs,
            "frame_order_ce": float(order.detach()), "frame_order_top1": accuracy,
        }


@SSL_METHODS.register("dino")
class DINO(PretrainMethod):
    """DINO (Caron et al. 2021): student (backbone + DINO head) and EMA teacher, multi-crop.

    The teacher is copied from the student at the first ``loss`` call (so it starts from the
    weights the student holds then, e.g. the global model of round 1) unless a local state
    with a teacher was loaded. The student encodes each crop in its own call so every module
    sees one row per sample (per-sample gradients for DP-SGD stay well defined).
    """

    name = "dino"
    input_kind = "image"
    input_unit = "sample"
    per_sample_loss = True
    _local_prefixes = ("teacher_backbone.", "teacher_head.")

    step: Tensor
    teacher_initialized: Tensor

    def __init__(self, backbone: nn.Module, cfg: SSLConfig) -> None:
        super().__init__(backbone, cfg)
        self.head = DINOHead(
            backbone.embed_dim, cfg.dino_out_dim, cfg.dino_hidden_dim, cfg.dino_bottleneck_dim,
            norm_last_layer=cfg.dino_norm_last_layer,
        )
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.dino_loss = DINOLoss(cfg.dino_out_dim, cfg.student_temp, cfg.center_momentum)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("teacher_initialized", torch.zeros((), dtype=torch.bool))
        self.global_transform = build_transform("dino_global", cfg.augment)
        self.local_transform = build_transform("dino_local", cfg.augment)

    def make_views(self, item: Sample, generator: RandomGenerator) -> dict[str, Any]:
        global_crops, local_crops = multi_crop(
            random_frame(item, generator), self.global_transform, self.local_transform,
            self.cfg.augment.dino_num_local_crops, generator,
        )
        return {"global_crops": global_crops, "local_crops": local_crops}

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Copy the student (backbone + head) into the teacher."""
        self.teacher_backbone.load_state_dict(self.backbone.state_dict())
        self.teacher_head.load_state_dict(self.head.state_dict())
        self.teacher_initialized.fill_(True)

    def teacher_temperature(self) -> float:
        cfg = self.cfg
        return teacher_temperature(
            int(self.step), cfg.teacher_temp, cfg.warmup_teacher_temp, cfg.warmup_teacher_temp_steps
        )

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        _require(batch, ("global_crops", "local_crops"), self.name)
        if not bool(self.teacher_initialized):
            self.reset_teacher()
        global_crops, local_crops = batch["global_crops"], batch["local_crops"]
        crops = [global_crops[:, v] for v in range(global_crops.shape[1])]
        crops += [local_crops[:, v] for v in range(local_crops.shape[1])]
        student = torch.stack([self.head(self.backbone(c)) for c in crops])
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(global_crops.flatten(0, 1).contiguous()))
            teacher = teacher.unflatten(0, global_crops.shape[:2]).transpose(0, 1)
            temp = self.teacher_temperature()
            targets = F.softmax((teacher - self.dino_loss.center) / temp, dim=-1)
            entropy = float(-(targets * targets.clamp_min(1e-12).log()).sum(-1).mean())
        loss = self.dino_loss(student, teacher, temp)
        return loss, {"loss": float(loss.detach()), "teacher_temp": temp, "teacher_entropy": entropy}

    def after_optimizer_step(self) -> None:
        """EMA teacher update with the cosine momentum schedule, then ``step += 1``."""
        if not bool(self.teacher_initialized):
            self.reset_teacher()
        cfg = self.cfg
        momentum = cosine_momentum(int(self.step), cfg.schedule_steps, cfg.teacher_momentum, cfg.teacher_momentum_final)
        ema_update_(self.teacher_backbone, self.backbone, momentum)
        ema_update_(self.teacher_head, self.head, momentum)
        self.step.add_(1)


def build_method(backbone: nn.Module, cfg: SSLConfig) -> PretrainMethod:
    """Build the method ``cfg.method`` around ``backbone``."""
    return SSL_METHODS.get(cfg.method)(backbone, cfg)

