"""LVH caliper landmarks (``lvh``): regress the two endpoints of each PLAX linear measurement
(IVSd, LVIDd, LVPWd by default; EchoNet-LVH: Duffy et al., JAMA Cardiology 2022) and report the
measurements' errors in millimetres.

Examples: one per annotated frame of a record (``landmark_frames``), holding the endpoints of the
configured measurements traced on that frame; a single-image record with ``landmarks`` gives one.
Records whose ``view`` label is not PLAX are left out. Example keys added to the contract:
``point_mask`` float32 (K,) (1 where the point is annotated on this frame) and ``mm_per_pixel``
float32 (2,) (row, column) at the resized resolution: from ``Sample.spacing`` when known, else
derived from the measurement values in cm and their caliper lengths in pixels (isotropic, median
over measurements), else NaN (then only pixel metrics are defined).

Points: K = 2 · len(measurements), ordered (m1 start, m1 end, m2 start, ...), pixel (x, y).
Outputs: (B, K, 2) pixel (x, y) at the input resolution. Loss: L1 on coordinates divided by the
image size, averaged over annotated points of each sample. Metrics: ``mae_mm/<name>`` (absolute
error of the caliper length), ``mae_mm`` (mean over measurements), ``mae_px`` likewise in pixels,
``point_error_mm`` / ``point_error_px`` (mean endpoint distance), and ``loss``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from fedecho.config.task import TaskConfig
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import ItemRecord, Sample
from fedecho.tasks.base import SPATIAL_BACKBONES, Task, backbone_name, label_value
from fedecho.tasks.frames import scale_points
from fedecho.tasks.heads import HeatmapLandmarkHead, RegressionLandmarkHead
from fedecho.tasks.selection import metric_direction

__all__ = ["LVH_MEASUREMENTS", "LVHTask"]

#: EchoNet-LVH caliper measurements (d = end-diastole, s = end-systole).
LVH_MEASUREMENTS: tuple[str, ...] = ("IVSd", "LVIDd", "LVPWd", "IVSs", "LVIDs", "LVPWs")

_METRICS = ("mae_mm", "mae_px", "point_error_mm", "point_error_px", "loss")


class LVHTask(Task):
    name: ClassVar[str] = "lvh"
    input_kind: ClassVar[str] = "image"
    label_keys: ClassVar[tuple[str, ...]] = ("landmarks", "landmark_frames", "measurements")
    metric_directions: ClassVar[dict[str, str]] = {m: metric_direction(m) for m in _METRICS}
    primary_metric: ClassVar[str] = "mae_mm"

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        unknown = [m for m in cfg.measurements if m not in LVH_MEASUREMENTS]
        if unknown:
            raise ValueError(f"lvh: measurements {unknown} unknown; pick from {list(LVH_MEASUREMENTS)}")
        if len(set(cfg.measurements)) != len(cfg.measurements):
            raise ValueError(f"lvh: measurements {list(cfg.measurements)} repeat a name; list each once")
        if cfg.classes is not None or cfg.num_classes is not None:
            raise ValueError("lvh regresses points; leave TaskConfig.classes and num_classes unset")
        self.measurements: tuple[str, ...] = tuple(cfg.measurements)

    @property
    def num_points(self) -> int:
        return 2 * len(self.measurements)

    # --- data -----------------------------------------------------------------------------------
    def _present(self, labels: Mapping[str, Any]) -> list[str]:
        landmarks = label_value(labels, self.label_key) or {}
        return [m for m in self.measurements if m in landmarks]

    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        view = label_value(record.labels, "view")
        present = self._present(record.labels)
        if (view is not None and view != "PLAX") or not present:
            return []
        frames = label_value(record.labels, "landmark_frames")
        if frames is None:
            return [None]
        return sorted({int(frames[m]) for m in present if m in frames})

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        landmarks = label_value(sample.labels, self.label_key) or {}
        frames = label_value(sample.labels, "landmark_frames") or {}
        on_frame = [m for m in self._present(sample.labels) if key is None or frames.get(m) == key]
        if not on_frame:
            raise EchoDataError.at(
                sample.path, f"{sample.item_id} has no {list(self.measurements)} caliper at frame {key}"
            )
        image = self.image_array(sample, None if key is None else int(key), "caliper frame")
        source_size = sample.frames.shape[-2:]
        points = np.zeros((self.num_points, 2), np.float32)
        point_mask = np.zeros(self.num_points, np.float32)
        for m in on_frame:
            coords = np.asarray(landmarks[m], dtype=np.float64).reshape(-1)
            if coords.shape != (4,) or not np.isfinite(coords).all():
                raise EchoDataError.at(sample.path, f"landmark {m} is {landmarks[m]!r}; expected (x1, y1, x2, y2)")
            j = 2 * self.measurements.index(m)
            points[j : j + 2] = scale_points(coords.reshape(2, 2), source_size, self.cfg.image_size)
            point_mask[j : j + 2] = 1.0
        spacing = self._source_spacing(sample, landmarks)
        factor = np.array(source_size, np.float64) / np.array(self.cfg.image_size, np.float64)
        return {
            "image": image,
            "points": points,
            "point_mask": point_mask,
            "mm_per_pixel": (np.asarray(spacing, np.float64) * factor).astype(np.float32),
            **self.id_fields(sample),
        }

    def _source_spacing(self, sample: Sample, landmarks: Mapping[str, Any]) -> tuple[float, float]:
        """(row, col) mm per source pixel: Sample.spacing, else from measurement values, else NaN."""
        if sample.spacing is not None:
            return float(sample.spacing[0]), float(sample.spacing[1])
        values = label_value(sample.labels, "measurements") or {}
        ratios = []
        for m, cm in values.items():
            if m in landmarks and cm is not None and np.isfinite(float(cm)):
                x1, y1, x2, y2 = np.asarray(landmarks[m], dtype=np.float64).reshape(-1)
                length_px = float(np.hypot(x2 - x1, y2 - y1))
                if length_px > 0:
                    ratios.append(10.0 * float(cm) / length_px)
        if not ratios:
            return float("nan"), float("nan")
        ratio = float(np.median(ratios))
        return ratio, ratio

    # --- model ----------------------------------------------------------------------------------
    def check_backbone(self, backbone: nn.Module) -> None:
        super().check_backbone(backbone)
        if self.cfg.landmark_head == "heatmap" and not backbone.feature_channels:
            raise ValueError(
                f"lvh with landmark_head='heatmap' needs feature maps but backbone {backbone_name(backbone)} "
                f"has no spatial neck; use {SPATIAL_BACKBONES} or landmark_head='regression'"
            )

    def build_head(self, backbone: nn.Module) -> nn.Module:
        self.check_backbone(backbone)
        cfg = self.cfg
        if cfg.landmark_head == "heatmap":
            return HeatmapLandmarkHead(backbone.feature_channels, self.num_points, cfg.decoder_dim, cfg.head_norm)
        return RegressionLandmarkHead(backbone.embed_dim, self.num_points, cfg.head_hidden_dim, cfg.head_dropout)

    def forward(self, backbone: nn.Module, head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Points (B, K, 2) pixel (x, y) at the input resolution."""
        x = self.backbone_input(backbone, batch)
        size = (x.shape[-2], x.shape[-1])
        if isinstance(head, HeatmapLandmarkHead):
            return head(backbone.forward_features(x), size)
        return head(backbone.forward_embed(x), size)

    def per_sample_loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        h, w = batch[self.input_kind].shape[-2:]
        scale = outputs.new_tensor([w, h])
        error = ((outputs - batch["points"].to(outputs.dtype)) / scale).abs().sum(dim=-1)  # (B, K)
        mask = batch["point_mask"].to(outputs.dtype)
        return (error * mask).sum(dim=1) / (2.0 * mask.sum(dim=1)).clamp(min=1.0)

    def metrics(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, float]:
        pred = outputs.detach().double().cpu().numpy()  # (N, K, 2)
        true = batch["points"].detach().double().cpu().numpy()
        mask = batch["point_mask"].detach().cpu().numpy() > 0
        mm = batch["mm_per_pixel"].detach().double().cpu().numpy()[:, ::-1]  # (N, 2) as (x, y)
        out: dict[str, float] = {}
        for j, name in enumerate(self.measurements):
            both = mask[:, 2 * j] & mask[:, 2 * j + 1]
            error_px = np.abs(_length(pred, j, 1.0) - _length(true, j, 1.0))
            error_mm = np.abs(_length(pred, j, mm) - _length(true, j, mm))
            out[f"mae_px/{name}"] = _mean(error_px[both])
            out[f"mae_mm/{name}"] = _mean(error_mm[both & np.isfinite(error_mm)])
        out["mae_px"] = _nanmean([out[f"mae_px/{m}"] for m in self.measurements])
        out["mae_mm"] = _nanmean([out[f"mae_mm/{m}"] for m in self.measurements])
        distance_px = np.linalg.norm(pred - true, axis=-1)  # (N, K)
        distance_mm = np.linalg.norm((pred - true) * mm[:, None, :], axis=-1)
        out["point_error_px"] = _mean(distance_px[mask])
        out["point_error_mm"] = _mean(distance_mm[mask & np.isfinite(distance_mm)])
        out["loss"] = float(self.loss(outputs.detach().float(), batch))
        return out


def _length(points: np.ndarray, j: int, mm: Any) -> np.ndarray:
    """Caliper length of measurement j per sample, (N,); ``mm`` is (N, 2) mm per pixel (x, y) or 1.0."""
    return np.linalg.norm((points[:, 2 * j + 1] - points[:, 2 * j]) * mm, axis=-1)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
