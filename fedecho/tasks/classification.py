"""Image classification tasks: echo view, aortic-stenosis grade, AS present/absent ("condition").

Label strings map to class indices explicitly: ``classes`` (from :class:`TaskConfig`, default the
task's whole vocabulary) lists the label names in index order, and a record whose label is outside
``classes`` yields no example. So ``classes=("A4C", "A2C")`` trains a two-class A4C-vs-A2C model
on exactly those images (the seed code's ignored label flag is what this guards against).

Outputs: logits (B, C). Loss: cross-entropy per sample. Metrics: see
:func:`fedecho.tasks.metrics.classification.classification_metrics` plus ``loss``.
A linear probe on frozen features is ``head_hidden_dim=None`` with the encoder frozen by the engine.
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
from fedecho.data.schema import AS_GRADES, VIEWS, ItemRecord, Sample
from fedecho.tasks.base import Task, label_value
from fedecho.tasks.frames import frame_index
from fedecho.tasks.heads import MLPHead
from fedecho.tasks.metrics.classification import classification_metrics
from fedecho.tasks.selection import metric_direction

__all__ = ["ASPresentTask", "ASSeverityTask", "ClassificationTask", "ViewTask"]

_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "auroc", "loss")


class ClassificationTask(Task):
    """Single-image classification over a string label vocabulary."""

    input_kind: ClassVar[str] = "image"
    vocabulary: ClassVar[tuple[str, ...]]
    metric_directions: ClassVar[dict[str, str]] = {m: metric_direction(m) for m in _METRICS}
    primary_metric: ClassVar[str] = "balanced_accuracy"

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self.classes: tuple[str, ...] = self._resolve_classes(cfg)
        if cfg.num_classes is not None and cfg.num_classes != len(self.classes):
            raise ValueError(
                f"task {self.name!r}: num_classes={cfg.num_classes} but the label set {list(self.classes)} "
                f"has {len(self.classes)}; set classes to the {cfg.num_classes} labels to train on, or "
                f"leave num_classes unset"
            )
        self.class_to_index: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        # labels known to be valid but left out by a configured subset (no example, no error)
        self._known = set(self.vocabulary) | set(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _resolve_classes(self, cfg: TaskConfig) -> tuple[str, ...]:
        if cfg.classes is None:
            return self.vocabulary
        unknown = [c for c in cfg.classes if c not in self.vocabulary]
        if unknown and cfg.label_key is None:
            raise ValueError(
                f"task {self.name!r}: classes {unknown} are not in its vocabulary {list(self.vocabulary)}; "
                f"pick a subset of it (or set label_key to read a different label column)"
            )
        return cfg.classes

    def label_index(self, value: Any, path: str) -> int | None:
        """Class index of a label value; ``None`` if the configured class set leaves it out."""
        if not isinstance(value, str):
            raise EchoDataError.at(
                path, f"label {self.label_key!r} is {value!r} ({type(value).__name__}); expected a label name"
            )
        if value in self.class_to_index:
            return self.class_to_index[value]
        if value in self._known:
            return None
        raise EchoDataError.at(
            path, f"label {self.label_key}={value!r} is not one of {sorted(self._known)}; fix the label "
            f"or add it to TaskConfig.classes"
        )

    # --- data -----------------------------------------------------------------------------------
    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        value = label_value(record.labels, self.label_key)
        if value is None or self.label_index(value, record.path) is None:
            return []
        return [None]

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        value = label_value(sample.labels, self.label_key)
        if value is None:
            raise EchoDataError.at(sample.path, f"{sample.item_id} has no {self.label_key!r} label")
        index = self.label_index(value, sample.path)
        if index is None:
            raise EchoDataError.at(
                sample.path, f"label {value!r} is outside the configured classes {list(self.classes)}"
            )
        frame = frame_index(len(sample.frames), self.cfg.frame_sampling, rng) if sample.is_video else None
        return {
            "image": self.image_array(sample, frame, f"{self.name} frame"),
            "label": index,
            **self.id_fields(sample),
        }

    # --- model ----------------------------------------------------------------------------------
    def build_head(self, backbone: nn.Module) -> nn.Module:
        self.check_backbone(backbone)
        return MLPHead(backbone.embed_dim, self.num_classes, self.cfg.head_hidden_dim, self.cfg.head_dropout)

    def forward(self, backbone: nn.Module, head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits (B, C)."""
        return head(backbone.forward_embed(self.backbone_input(backbone, batch)))

    def per_sample_loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(outputs, batch["label"].long(), reduction="none")

    def metrics(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, float]:
        outputs = outputs.detach().float()
        out = classification_metrics(batch["label"], torch.softmax(outputs, dim=1), self.classes)
        out["loss"] = float(self.loss(outputs, batch))
        return out


class ViewTask(ClassificationTask):
    """Echo view classification over :data:`fedecho.data.schema.VIEWS` (or a configured subset)."""

    name: ClassVar[str] = "view"
    label_keys: ClassVar[tuple[str, ...]] = ("view",)
    vocabulary: ClassVar[tuple[str, ...]] = VIEWS


class ASSeverityTask(ClassificationTask):
    """Aortic-stenosis grade over :data:`fedecho.data.schema.AS_GRADES` (or a configured subset)."""

    name: ClassVar[str] = "as_severity"
    label_keys: ClassVar[tuple[str, ...]] = ("as_grade",)
    vocabulary: ClassVar[tuple[str, ...]] = AS_GRADES


class ASPresentTask(ClassificationTask):
    """AS present vs absent ("condition"): ``no_AS`` -> 0 ``absent``, any other grade -> 1 ``present``."""

    name: ClassVar[str] = "as_present"
    label_keys: ClassVar[tuple[str, ...]] = ("as_grade",)
    vocabulary: ClassVar[tuple[str, ...]] = AS_GRADES
    primary_metric: ClassVar[str] = "auroc"
    binary_classes: ClassVar[tuple[str, ...]] = ("absent", "present")

    def _resolve_classes(self, cfg: TaskConfig) -> tuple[str, ...]:
        if cfg.classes is not None and tuple(cfg.classes) != self.binary_classes:
            raise ValueError(
                f"task 'as_present' derives its classes {list(self.binary_classes)} from as_grade; "
                f"leave TaskConfig.classes unset (use 'as_severity' to pick grades)"
            )
        return self.binary_classes

    def label_index(self, value: Any, path: str) -> int | None:
        if not isinstance(value, str) or value not in AS_GRADES:
            raise EchoDataError.at(
                path, f"label {self.label_key}={value!r} is not an AS grade; expected one of {list(AS_GRADES)}"
            )
        return 0 if value == "no_AS" else 1
