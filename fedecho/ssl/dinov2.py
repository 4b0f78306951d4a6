"""DINOv2 (Oquab et al. 2023), EchoApex's pretraining recipe: DINO plus iBOT, KoLeo, Sinkhorn-Knopp
centring and DINOv2's optimiser schedules, on ViT backbones.

On top of :class:`~fedecho.ssl.methods.DINO` (EMA teacher, multi-crop, [CLS] DINO loss, teacher
temperature warm-up, cosine momentum):

- **iBOT** (``ssl.ibot_weight``): each global crop is block-masked (:mod:`fedecho.ssl.dinov2_masking`,
  ``masks`` (B, 2, P) in the batch); the student sees :class:`MaskToken` in place of the masked
  patch embeddings (before position embeddings, as DINOv2) and predicts, through the patch head
  (the DINO head shared, or its own with ``ssl.ibot_separate_head``), the teacher's targets on
  the unmasked crop at the masked positions (:func:`~fedecho.ssl.dinov2_losses.ibot_patch_loss`);
- **KoLeo** (``ssl.koleo_weight``) on the student's [CLS] features of each global crop, summed
  over the crops;
- **centring** (``ssl.centering``): Sinkhorn-Knopp over the teacher's [CLS] logits of all global
  crops and, separately, over its masked-patch logits; or DINO's softmax centring with running
  centres (:class:`~fedecho.ssl.dino.DINOLoss` and :class:`~fedecho.ssl.dinov2_losses.PatchCentre`);
- **schedules**: :meth:`DINOv2.optimizer_groups` (layer-wise lr decay, patch-embedding lr factor,
  no weight decay on biases and norms) and :meth:`DINOv2.before_optimizer_step` (cosine weight
  decay to ``ssl.weight_decay_final``); the engine's Trainer calls both.

Loss = DINO + ibot_weight * iBOT + koleo_weight * KoLeo. With iBOT and KoLeo at 0, softmax
centring, ``layerwise_decay = patch_embed_lr_mult = 1``, ``norm_bias_weight_decay`` and no weight
decay schedule, this is :class:`~fedecho.ssl.methods.DINO` step for step (same tensors, views and
updates; ``tests/ssl/test_dinov2_method.py``).

Federation: the student (backbone, heads, mask token) is shared; the teachers (backbone, DINO
head, patch head), both centres and the step counter are site-private (``local_state_dict``,
saved in the site's state directory). Sinkhorn-Knopp keeps no state.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from fedecho.config.ssl import SSLConfig
from fedecho.data.schema import Sample
from fedecho.ssl.dinov2_losses import PatchCentre, cross_view_loss, ibot_patch_loss, koleo_loss, sinkhorn_knopp
from fedecho.ssl.dinov2_masking import sample_crop_masks
from fedecho.ssl.ema import cosine_momentum, ema_update_
from fedecho.ssl.heads import DINOHead
from fedecho.ssl.methods import DINO, SSL_METHODS, _require
from fedecho.transforms.sampling import RandomGenerator

__all__ = ["DINOv2", "MaskToken", "layer_id"]

_BLOCK = re.compile(r"\.layers?\.(\d+)\.")  # transformers 5: model.layers.i; 4: encoder.layer.i


class MaskToken(nn.Module):
    """Learnable mask embedding (1, 1, D), zero-initialised (DINOv2).

    Input (B, P, D + 1): patch embeddings with the mask (1 = masked) as an extra last channel, so
    the module has a single batch-first input (opacus computes its per-sample gradients);
    output (B, P, D) with masked rows replaced by the token.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, tokens_and_mask: Tensor) -> Tensor:
        tokens, mask = tokens_and_mask[..., :-1], tokens_and_mask[..., -1:]
        return tokens * (1 - mask) + self.token.to(tokens.dtype) * mask


def layer_id(name: str, num_layers: int) -> int:
    """DINOv2's layer index of a parameter: 0 for embeddings and the mask token, i + 1 for ViT
    block i, ``num_layers + 1`` for the final norm and the heads."""
    if name.startswith("mask_token.") or ".embeddings." in name:
        return 0
    match = _BLOCK.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def _no_decay(name: str) -> bool:
    return name.endswith(".bias") or "norm" in name


@SSL_METHODS.register("dinov2")
class DINOv2(DINO):
    """DINOv2 around a ViT backbone (see the module docstring)."""

    name = "dinov2"
    per_sample_loss = False  # per instance: True when KoLeo and Sinkhorn are off
    _local_prefixes = ("teacher_backbone.", "teacher_head.", "teacher_ibot_head.")

    def __init__(self, backbone: nn.Module, cfg: SSLConfig) -> None:
        super().__init__(backbone, cfg)
        self.per_sample_loss = not cfg.batch_coupled_parts()
        self.use_ibot = cfg.ibot_weight > 0
        if self.use_ibot:
            embeddings = getattr(getattr(backbone, "model", None), "embeddings", None)
            if getattr(backbone, "patch_size", None) is None or not hasattr(embeddings, "patch_embeddings"):
                raise ValueError(
                    f"ssl.method=dinov2 with iBOT needs a ViT backbone (model=vit-s16 or vit-tiny) for its "
                    f"patch tokens; got {type(backbone).__name__}. Use a ViT or set ssl.ibot_weight=0"
                )
            self.mask_token = MaskToken(backbone.embed_dim)
            if cfg.ibot_separate_head:
                self.ibot_head = DINOHead(
                    backbone.embed_dim, cfg.ibot_out_dim or cfg.dino_out_dim, cfg.dino_hidden_dim,
                    cfg.dino_bottleneck_dim, norm_last_layer=cfg.dino_norm_last_layer,
                )
                self.teacher_ibot_head = copy.deepcopy(self.ibot_head).requires_grad_(False)
            patch_dim = (cfg.ibot_out_dim or cfg.dino_out_dim) if cfg.ibot_separate_head else cfg.dino_out_dim
            self.patch_centre = PatchCentre(patch_dim, cfg.center_momentum)

    # --- views ---------------------------------------------------------------------------------
    def make_views(self, item: Sample, generator: RandomGenerator) -> dict[str, Any]:
        views = super().make_views(item, generator)
        if self.use_ibot:
            cfg, side = self.cfg, views["global_crops"].shape[-1] // self.backbone.patch_size
            masks = sample_crop_masks(
                views["global_crops"].shape[0], (side, side), generator, probability=cfg.mask_probability,
                ratio=tuple(cfg.mask_ratio), min_patches=cfg.mask_min_patches,
                max_fraction=cfg.mask_max_fraction, min_aspect=cfg.mask_min_aspect,
            )
            views["masks"] = masks.reshape(masks.shape[0], -1)
        return views

    # --- forward -------------------------------------------------------------------------------
    def _patch_head(self, teacher: bool) -> nn.Module:
        if self.cfg.ibot_separate_head:
            return self.teacher_ibot_head if teacher else self.ibot_head
        return self.teacher_head if teacher else self.head

    @contextmanager
    def _masked(self, masks: Tensor) -> Iterator[None]:
        def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            return self.mask_token(torch.cat([output, masks.unsqueeze(-1).to(output.dtype)], dim=-1))

        handle = self.backbone.model.embeddings.patch_embeddings.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    @staticmethod
    def _tokens(backbone: nn.Module, x: Tensor) -> Tensor:
        """All tokens (B, 1 + P, D) after the final norm; [CLS] first."""
        backbone.check_input(x)
        return backbone.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        _require(batch, ("global_crops", "local_crops") + (("masks",) if self.use_ibot else ()), self.name)
        if not bool(self.teacher_initialized):
            self.reset_teacher()
        global_crops, local_crops = batch["global_crops"], batch["local_crops"]
        num_global, batch_size = global_crops.shape[1], global_crops.shape[0]
        masks = batch["masks"].bool() if self.use_ibot else None
        cls_features, patch_tokens, student = [], [], []
        for v in range(num_global):  # one call per crop: every module sees one row per sample
            if self.use_ibot:
                with self._masked(masks[:, v]):
                    tokens = self._tokens(self.backbone, global_crops[:, v])
                cls_features.append(tokens[:, 0])
                patch_tokens.append(tokens[:, 1:])
            else:
                cls_features.append(self.backbone(global_crops[:, v]))
            student.append(self.head(cls_features[-1]))
        student += [self.head(self.backbone(local_crops[:, v])) for v in range(local_crops.shape[1])]
        student = torch.stack(student)
        temp = self.teacher_temperature()
        with torch.no_grad():
            flat = global_crops.flatten(0, 1).contiguous()
            if self.use_ibot:
                tokens = self._tokens(self.teacher_backbone, flat)
                teacher_cls, teacher_patches = tokens[:, 0], tokens[:, 1:]
            else:
                teacher_cls = self.teacher_backbone(flat)
            teacher = self.teacher_head(teacher_cls).unflatten(0, global_crops.shape[:2]).transpose(0, 1)
        logs: dict[str, float] = {"teacher_temp": temp}
        if cfg.centering == "sinkhorn":
            targets = sinkhorn_knopp(teacher.flatten(0, 1), temp, cfg.sinkhorn_iterations).unflatten(0, teacher.shape[:2])
            dino = cross_view_loss(targets, student, cfg.student_temp)
        else:
            with torch.no_grad():
                targets = torch.softmax((teacher - self.dino_loss.center) / temp, dim=-1)
            dino = self.dino_loss(student, teacher, temp)
        logs["teacher_entropy"] = float(-(targets * targets.clamp_min(1e-12).log()).sum(-1).mean())
        loss = dino
        if self.use_ibot:
            ibot = self._ibot(torch.stack(patch_tokens, dim=1), teacher_patches, masks, temp)
            loss = loss + cfg.ibot_weight * ibot
            logs.update({"dino": float(dino.detach()), "ibot": float(ibot.detach()),
                         "masked_fraction": float(masks.float().mean())})
        if cfg.koleo_weight > 0 and batch_size >= 2:
            koleo = sum(koleo_loss(c) for c in cls_features)
            loss = loss + cfg.koleo_weight * koleo
            logs["koleo"] = float(koleo.detach())
        return loss, {"loss": float(loss.detach()), **logs}

    def _ibot(self, student_patches: Tensor, teacher_patches: Tensor, masks: Tensor, temp: float) -> Tensor:
        """``student_patches`` (B, V, P, D), ``teacher_patches`` (B * V, P, D), ``masks`` (B, V, P)."""
        flat_masks = masks.flatten(0, 1)
        head = self._patch_head(teacher=False)
        if self.per_sample_loss:  # batch-first calls, so opacus can compute per-sample gradients
            student = torch.stack([head(student_patches[:, v]) for v in range(masks.shape[1])], dim=1)[masks]
        else:  # DINOv2: the head only on the masked patches
            student = head(student_patches[masks])
        with torch.no_grad():
            teacher = self._patch_head(teacher=True)(teacher_patches[flat_masks])
            if teacher.shape[0] == 0:
                targets = teacher
            elif self.cfg.centering == "sinkhorn":
                targets = sinkhorn_knopp(teacher, temp, self.cfg.sinkhorn_iterations)
            else:
                targets = self.patch_centre.targets(teacher, temp)
                self.patch_centre.update(teacher)
        return ibot_patch_loss(targets, student, flat_masks, self.cfg.student_temp)

    # --- teacher and optimiser -----------------------------------------------------------------
    @torch.no_grad()
    def reset_teacher(self) -> None:
        super().reset_teacher()
        if self.use_ibot and self.cfg.ibot_separate_head:
            self.teacher_ibot_head.load_state_dict(self.ibot_head.state_dict())

    def after_optimizer_step(self) -> None:
        """EMA of backbone and heads (patch head included), then ``step += 1``."""
        if not bool(self.teacher_initialized):
            self.reset_teacher()
        if self.use_ibot and self.cfg.ibot_separate_head:
            cfg = self.cfg
            momentum = cosine_momentum(int(self.step), cfg.schedule_steps, cfg.teacher_momentum,
                                       cfg.teacher_momentum_final)
            ema_update_(self.teacher_ibot_head, self.ibot_head, momentum)
        super().after_optimizer_step()

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups with DINOv2's lr and weight-decay multipliers: ``lr * lr_scale`` with
        ``lr_scale = layerwise_decay ** (L + 1 - layer_id)`` (times ``patch_embed_lr_mult`` for the
        patch embedding) and ``weight_decay * wd_multiplier`` (0 for biases and norms unless
        ``norm_bias_weight_decay``)."""
        cfg = self.cfg
        config = getattr(getattr(self.backbone, "model", None), "config", None)
        num_layers = getattr(config, "num_hidden_layers", 0)
        groups: dict[tuple[float, float], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            scale = cfg.layerwise_decay ** (num_layers + 1 - layer_id(name, num_layers))
            if "patch_embeddings" in name:
                scale *= cfg.patch_embed_lr_mult
            decay = 0.0 if not cfg.norm_bias_weight_decay and _no_decay(name) else 1.0
            group = groups.setdefault((scale, decay), {
                "params": [], "lr": lr * scale, "weight_decay": weight_decay * decay,
                "lr_scale": scale, "wd_multiplier": decay, "weight_decay_start": weight_decay,
            })
            group["params"].append(param)
        return list(groups.values())

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Cosine weight decay from each group's start to ``ssl.weight_decay_final`` (times its
        ``wd_multiplier``) over ``ssl.schedule_steps`` at the method's step."""
        cfg = self.cfg
        if cfg.weight_decay_final is None:
            return
        for group in optimizer.param_groups:
            start = group.setdefault("weight_decay_start", group["weight_decay"])
            multiplier = group.get("wd_multiplier", 1.0)
            group["weight_decay"] = multiplier * cosine_momentum(
                int(self.step), cfg.schedule_steps, start, cfg.weight_decay_final)
