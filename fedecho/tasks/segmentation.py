"""LV segmentation (``lv_seg``): CAMUS-style masks {0 bg, 1 LV cavity, 2 myocardium, 3 LA} or
EchoNet-Dynamic LV-only tracings.

Label set: ``classes`` names the foreground structures to keep (from
:data:`fedecho.data.schema.MASK_LABELS`), in output-index order after background 0; every other
structure becomes background. Default: all three (4 classes), or LV only when ``num_classes=2``.
So CAMUS masks train an LV-only model with ``classes=("lv_cavity",)``.

Examples: an image record with a mask file (``files["mask"]``) or ``mask`` label gives one
example; a video record with ``mask_frames`` (K traced frames, mask (K, H, W)) gives K examples,
key = k. A video whose record does not list ``mask_frames`` gives one example whose traced frame
is drawn from the generator.

Outputs: logits (B, C, H, W) at input resolution. Loss: soft Dice (Milletari et al., "V-Net",
3DV 2016; linear denominator Σp + Σg, foreground classes, per sample) + cross-entropy, weighted by
``dice_weight`` / ``ce_weight``. Metrics: ``dice``, ``iou`` (foreground mean), per structure
``dice/<name>``, ``iou/<name>`` (see :mod:`fedecho.tasks.metrics.segmentation`), and ``loss``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedecho.config.task import TaskConfig
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import MASK_LABELS, ItemRecord, Sample
from fedecho.tasks.base import SPATIAL_BACKBONES, Task, backbone_name, label_value
from fedecho.tasks.frames import resize_mask
from fedecho.tasks.heads import SegFormerDecoder
from fedecho.tasks.metrics.segmentation import segmentation_metrics
from fedecho.tasks.selection import metric_direction

__all__ = ["LVSegmentationTask", "soft_dice_loss"]

_FOREGROUND = {name: value for value, name in MASK_LABELS.items() if value != 0}
_METRICS = ("dice", "iou", "loss")


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-sample soft Dice loss over foreground classes (Milletari et al. 2016): (B,).

    ``logits`` (B, C, H, W), ``target`` int64 (B, H, W). For each sample and class c >= 1,
    Dice_c = (2 Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps) with p = softmax(logits); the loss is
    1 - mean_c Dice_c. A class absent from both target and prediction scores ≈ 1.
    """
    probs = torch.softmax(logits, dim=1)[:, 1:].flatten(2)  # (B, C-1, HW)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].flatten(2).to(probs.dtype)
    inter = (probs * onehot).sum(-1)
    denom = probs.sum(-1) + onehot.sum(-1)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice.mean(dim=1)


class LVSegmentationTask(Task):
    name: ClassVar[str] = "lv_seg"
    input_kind: ClassVar[str] = "image"
    label_keys: ClassVar[tuple[str, ...]] = ("mask",)
    metric_directions: ClassVar[dict[str, str]] = {m: metric_direction(m) for m in _METRICS}
    primary_metric: ClassVar[str] = "dice"

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        if cfg.classes is None:
            if cfg.num_classes in (None, 4):
                names: tuple[str, ...] = tuple(_FOREGROUND)
            elif cfg.num_classes == 2:
                names = ("lv_cavity",)
            else:
                raise ValueError(
                    f"lv_seg: num_classes={cfg.num_classes} is ambiguous; use 4 (bg, LV, myocardium, LA), "
                    f"2 (bg, LV), or set classes to the structures to keep from {list(_FOREGROUND)}"
                )
        else:
            unknown = [c for c in cfg.classes if c not in _FOREGROUND]
            if unknown:
                raise ValueError(
                    f"lv_seg: classes {unknown} are not mask structures; pick from {list(_FOREGROUND)}"
                )
            names = tuple(cfg.classes)
            if cfg.num_classes is not None and cfg.num_classes != len(names) + 1:
                raise ValueError(
                    f"lv_seg: num_classes={cfg.num_classes} but classes {list(names)} + background make "
                    f"{len(names) + 1}; leave num_classes unset"
                )
        self.classes: tuple[str, ...] = ("background", *names)
        #: source mask value -> output class index (structures not kept become 0)
        self.lut = np.zeros(256, dtype=np.int64)
        for index, name in enumerate(names, start=1):
            self.lut[_FOREGROUND[name]] = index
        self._lut_uint8 = self.lut.astype(np.uint8)  # class indices < 256

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # --- data -----------------------------------------------------------------------------------
    def id_fields(self, sample: Sample) -> dict[str, str]:
        """The ids, plus ``phase``: the image's cardiac phase (``ED``/``ES``, e.g. CAMUS) or ``""``,
        so test Dice can be read per phase as the literature reports it."""
        phase = sample.labels.get("phase")
        return {**super().id_fields(sample), "phase": phase if isinstance(phase, str) else ""}

    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        frames = label_value(record.labels, "mask_frames")
        if frames is not None:
            return list(range(len(frames)))
        if self.label_key in record.files or label_value(record.labels, self.label_key) is not None:
            return [None]
        return []

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        mask = sample.labels.get(self.label_key)
        if mask is None:
            raise EchoDataError.at(sample.path, f"{sample.item_id} has no {self.label_key!r} mask")
        mask = np.asarray(mask)
        known = sample.label_values.get(self.label_key)  # from the decoded cache: no pixel scan
        frame = None
        if mask.ndim == 3:
            k = int(rng.integers(len(mask))) if key is None else int(key)
            mask_frames = label_value(sample.labels, "mask_frames")
            if not 0 <= k < len(mask) or mask_frames is None or len(mask_frames) != len(mask):
                raise EchoDataError.at(
                    sample.path, f"{sample.item_id}: mask stack {mask.shape} does not match mask_frames "
                    f"{mask_frames!r} (example {k})"
                )
            mask, frame = mask[k], int(mask_frames[k])
            known = known[k] if known is not None and len(known) == len(mask_frames) else None
        elif mask.ndim != 2:
            raise EchoDataError.at(sample.path, f"mask has shape {mask.shape}; expected (H, W) or (K, H, W)")
        elif sample.is_video:
            raise EchoDataError.at(sample.path, f"video {sample.item_id} has one (H, W) mask but no mask_frames")
        image = self.image_array(sample, frame, "traced frame")
        if mask.shape != sample.frames.shape[-2:]:
            raise EchoDataError.at(
                sample.path, f"mask shape {mask.shape} differs from frame shape {sample.frames.shape[-2:]}"
            )
        values = set(np.unique(mask).tolist() if known is None else known)
        if not values <= set(MASK_LABELS):
            raise EchoDataError.at(sample.path, f"mask has labels {values}; expected a subset of {set(MASK_LABELS)}")
        if image.dtype == np.uint8 and mask.dtype == np.uint8:
            # a uint8 example (keep_uint8, device augmentation): a uint8 mask, as the loader ships it
            if all(self.lut[v] == v for v in values):
                mapped = mask  # the label map leaves every value present unchanged
            else:
                mapped = self._lut_uint8[mask]
            if mapped.shape != tuple(self.cfg.image_size):
                mapped = resize_mask(mapped, self.cfg.image_size).astype(np.uint8)
            return {"image": image, "mask": mapped, **self.id_fields(sample)}
        mapped = self.lut[mask.astype(np.int64)]
        return {"image": image, "mask": resize_mask(mapped, self.cfg.image_size), **self.id_fields(sample)}

    # --- model ----------------------------------------------------------------------------------
    def check_backbone(self, backbone: nn.Module) -> None:
        super().check_backbone(backbone)
        if not backbone.feature_channels:
            raise ValueError(
                f"task 'lv_seg' needs multi-scale feature maps but backbone {backbone_name(backbone)} "
                f"has no spatial neck; use {SPATIAL_BACKBONES}"
            )

    def build_head(self, backbone: nn.Module) -> nn.Module:
        self.check_backbone(backbone)
        cfg = self.cfg
        return SegFormerDecoder(
            backbone.feature_channels, self.num_classes, cfg.decoder_dim, cfg.head_dropout, cfg.head_norm
        )

    def forward(self, backbone: nn.Module, head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits (B, C, H, W) at the input resolution (decoder output upsampled bilinearly)."""
        x = self.backbone_input(backbone, batch)
        logits = head(backbone.forward_features(x))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def per_sample_loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        target = batch["mask"].long()
        ce = F.cross_entropy(outputs, target, reduction="none").flatten(1).mean(dim=1)
        return self.cfg.dice_weight * soft_dice_loss(outputs, target) + self.cfg.ce_weight * ce

    def metrics(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """``outputs``: logits (N, C, H, W), or already-argmaxed labels (N, H, W) (then no ``loss``)."""
        outputs = outputs.detach()
        labels = outputs if not outputs.is_floating_point() else outputs.argmax(dim=1)
        names = {i: name for i, name in enumerate(self.classes) if i > 0}
        out = segmentation_metrics(labels.cpu().numpy(), batch["mask"].cpu().numpy(), names)
        if outputs.is_floating_point():
            out["loss"] = float(self.loss(outputs.float(), batch))
        return out
