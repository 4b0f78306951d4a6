"""Regression tasks: ejection fraction from clips, ED/ES LV volume from a frame, age from a frame.

The head predicts a standardised value z; the task reports ``offset + scale · z`` in physical units
(EF %, mL, years), so outputs and metrics are in those units while the loss (MSE, L1 or smooth L1
on ``(pred - target) / scale``) stays well scaled. Defaults per task; ``target_offset`` /
``target_scale`` in :class:`TaskConfig` override them.

Outputs: (B, 1) in physical units. Metrics: ``mae``, ``rmse``, ``r2``, Bland–Altman ``bias``,
``loa_low``, ``loa_high`` and ``loss`` (volumes add ``mae/edv``, ``mae/esv``, ``r2/edv``, ``r2/esv``).

Clip tasks run on clip backbones (R3D-18, R(2+1)D-18) through ``forward_embed`` and on image
backbones by encoding each frame and pooling over time in a :class:`TemporalPoolingHead`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from fedecho.config.task import TaskConfig
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import ItemRecord, Sample
from fedecho.tasks.base import Task, label_value
from fedecho.tasks.frames import clip_indices, frame_index, resize_image, to_unit_float
from fedecho.tasks.heads import MLPHead, TemporalPoolingHead
from fedecho.tasks.metrics.agreement import bland_altman
from fedecho.tasks.metrics.regression import mae, r2, regression_metrics
from fedecho.tasks.selection import metric_direction

__all__ = ["AgeTask", "EFTask", "RegressionTask", "VolumesTask"]

_METRICS = ("mae", "rmse", "r2", "loss")
_PHASES = ("ED", "ES")


class RegressionTask(Task):
    """Scalar regression from one label; subclasses set the input kind and default scaling."""

    metric_directions: ClassVar[dict[str, str]] = {m: metric_direction(m) for m in _METRICS}
    primary_metric: ClassVar[str] = "mae"
    default_offset: ClassVar[float]
    default_scale: ClassVar[float]

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        if cfg.classes is not None or cfg.num_classes is not None:
            raise ValueError(f"task {self.name!r} is a regression; leave TaskConfig.classes and num_classes unset")
        self.offset = float(self.default_offset if cfg.target_offset is None else cfg.target_offset)
        self.scale = float(self.default_scale if cfg.target_scale is None else cfg.target_scale)

    def target(self, labels: Mapping[str, Any], path: str, key: str | None = None) -> float | None:
        """The finite numeric label ``key`` (default: the task's label key), else ``None``."""
        key = key or self.label_key
        value = label_value(labels, key)
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EchoDataError.at(path, f"label {key}={value!r} is not a number") from None
        if not np.isfinite(number):
            return None
        return number

    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        return [] if self.target(record.labels, record.path) is None else [None]

    def _target_or_raise(self, sample: Sample) -> float:
        value = self.target(sample.labels, sample.path)
        if value is None:
            raise EchoDataError.at(sample.path, f"{sample.item_id} has no {self.label_key!r} label")
        return value

    # --- model ----------------------------------------------------------------------------------
    def build_head(self, backbone: nn.Module) -> nn.Module:
        self.check_backbone(backbone)
        cfg = self.cfg
        if self.input_kind == "clip" and backbone.input_kind == "image":
            return TemporalPoolingHead(backbone.embed_dim, 1, cfg.temporal_pool, cfg.head_hidden_dim, cfg.head_dropout)
        return MLPHead(backbone.embed_dim, 1, cfg.head_hidden_dim, cfg.head_dropout)

    def forward(self, backbone: nn.Module, head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Predictions (B, 1) in the target's units."""
        x = self.backbone_input(backbone, batch)
        if self.input_kind == "clip" and backbone.input_kind == "image":
            b, c, t, h, w = x.shape
            frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B·T, C, H, W)
            z = head(backbone.forward_embed(frames).view(b, t, -1))
        else:
            z = head(backbone.forward_embed(x))
        return self.offset + self.scale * z

    def per_sample_loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        target = batch["target"].to(outputs.dtype).view_as(outputs)
        pred_z = (outputs - self.offset) / self.scale
        target_z = (target - self.offset) / self.scale
        loss_fn = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[self.cfg.regression_loss]
        return loss_fn(pred_z, target_z, reduction="none").flatten(1).mean(dim=1)

    def metrics(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, float]:
        pred = outputs.detach().float().reshape(-1).cpu().numpy()
        target = batch["target"].detach().float().reshape(-1).cpu().numpy()
        out = regression_metrics(pred, target)
        out.update(bland_altman(pred, target).as_metrics())
        out["loss"] = float(self.loss(outputs.detach().float(), batch))
        return out


class EFTask(RegressionTask):
    """Ejection fraction (%) from a clip (B, 1, T, H, W) of ``clip_length`` frames, ``clip_stride``
    apart (EchoNet-Dynamic: Ouyang et al., Nature 2020, used 32 frames, stride 2)."""

    name: ClassVar[str] = "ef"
    input_kind: ClassVar[str] = "clip"
    label_keys: ClassVar[tuple[str, ...]] = ("ef",)
    default_offset: ClassVar[float] = 55.0
    default_scale: ClassVar[float] = 12.0

    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        """One clip per video with an EF label; records of a single cardiac-phase frame (a
        ``phase`` label, e.g. CAMUS ED/ES images that carry the patient's EF) give none."""
        if label_value(record.labels, "phase") is not None:
            return []
        return super().example_keys(record)

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        target = self._target_or_raise(sample)
        if not sample.is_video:
            raise EchoDataError.at(
                sample.path, f"task 'ef' needs a video; {sample.item_id} is a single image (drop image records)"
            )
        cfg = self.cfg
        index = clip_indices(len(sample.frames), cfg.clip_length, cfg.clip_stride, cfg.frame_sampling, rng)
        frames = to_unit_float(sample.frames[index], sample.path)
        clip = np.stack([resize_image(f, cfg.image_size) for f in frames])[None]  # (1, T, H, W)
        return {"clip": clip, "target": np.array([target], np.float32), **self.id_fields(sample)}


class AgeTask(RegressionTask):
    """Patient age (years) from one frame (B, 1, H, W)."""

    name: ClassVar[str] = "age"
    input_kind: ClassVar[str] = "image"
    label_keys: ClassVar[tuple[str, ...]] = ("age",)
    default_offset: ClassVar[float] = 60.0
    default_scale: ClassVar[float] = 15.0

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        target = self._target_or_raise(sample)
        frame = frame_index(len(sample.frames), self.cfg.frame_sampling, rng) if sample.is_video else None
        return {
            "image": self.image_array(sample, frame, "age frame"),
            "target": np.array([target], np.float32),
            **self.id_fields(sample),
        }


class VolumesTask(RegressionTask):
    """LV volume (mL) at the frame's phase: EDV from an end-diastolic frame, ESV from an
    end-systolic one (the Segformer seed's CAMUS volume task).

    Keys: ``"ED"``/``"ES"``. An image record with a ``phase`` label yields that phase when its
    volume (``edv``/``esv``) is known; a video record yields each phase with a known volume, the
    frame taken from ``ed_frame``/``es_frame``. Batches carry ``phase`` (0 = ED, 1 = ES).
    """

    name: ClassVar[str] = "volumes"
    input_kind: ClassVar[str] = "image"
    label_keys: ClassVar[tuple[str, ...]] = ("edv", "esv")
    default_offset: ClassVar[float] = 80.0
    default_scale: ClassVar[float] = 40.0

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.label_key is not None:
            raise ValueError("task 'volumes' reads edv and esv by phase; leave TaskConfig.label_key unset")
        super().__init__(cfg)

    def _volume(self, labels: Mapping[str, Any], phase: str, path: str) -> float | None:
        return self.target(labels, path, _volume_key(phase))

    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        phase = label_value(record.labels, "phase")
        phases = _PHASES if phase is None else ((phase,) if phase in _PHASES else ())
        return [p for p in phases if self._volume(record.labels, p, record.path) is not None]

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        if key not in _PHASES:
            raise ValueError(f"volumes example key must be 'ED' or 'ES', got {key!r}")
        volume = self._volume(sample.labels, key, sample.path)
        if volume is None:
            raise EchoDataError.at(sample.path, f"{sample.item_id} has no {_volume_key(key)!r} label")
        frame = None
        if sample.is_video:
            frame = label_value(sample.labels, f"{key.lower()}_frame")
            if frame is None:
                raise EchoDataError.at(sample.path, f"video {sample.item_id} has no {key.lower()}_frame label")
        return {
            "image": self.image_array(sample, frame, f"{key} frame"),
            "target": np.array([volume], np.float32),
            "phase": _PHASES.index(key),
            **self.id_fields(sample),
        }

    def metrics(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, float]:
        out = super().metrics(outputs, batch)
        pred = outputs.detach().float().reshape(-1).cpu().numpy()
        target = batch["target"].detach().float().reshape(-1).cpu().numpy()
        phase = batch["phase"].reshape(-1).cpu().numpy()
        for i, name in enumerate(("edv", "esv")):
            chosen = phase == i
            out[f"mae/{name}"] = mae(pred[chosen], target[chosen]) if chosen.any() else float("nan")
            out[f"r2/{name}"] = r2(pred[chosen], target[chosen]) if chosen.any() else float("nan")
        return out


def _volume_key(phase: str) -> str:
    return "edv" if phase == "ED" else "esv"
