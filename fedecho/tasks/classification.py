"""Classification tasks: echo view, aortic-stenosis grade, AS present/absent ("condition"), on
single images or, for the AS tasks (and ``lvh_present``), on clips.

Label strings map to class indices explicitly: ``classes`` (from :class:`TaskConfig`, default the
task's whole vocabulary) lists the label names in index order, and a record whose label is outside
``classes`` yields no example. So ``classes=("A4C", "A2C")`` trains a two-class A4C-vs-A2C model
on exactly those images (the seed code's ignored label flag is what this guards against).

**Images or clips: the backbone decides.** A task lists the input kinds it accepts in
``input_kinds``; :meth:`ClassificationTask.check_backbone` (which the engine calls on the built
backbone before any dataset is made, see :func:`fedecho.engine.build.build_task_learner`) binds
the task's ``input_kind`` to the backbone's. Tasks start bound to ``"image"``, so with an image
backbone (resnet18, vit-s16, segformer-b0) nothing changes: one frame per example, ``image``
(B, 1, H, W), the frame picked by ``frame_sampling`` when the record is a video. With a clip
backbone (r3d18, r2plus1d18, r3d-tiny, r2plus1d-tiny) an example is a ``clip`` (B, 1, T, H, W) of
``T = clip_length`` frames ``clip_stride`` apart, its start drawn by ``frame_sampling`` (as for
``ef``: :func:`fedecho.tasks.frames.clip_array`), so an R3D-18 is fine-tuned on AS as in EchoCLR
(Holste et al., 2023). Only videos give clips: a single-image record (a still DICOM, a TMED-2 PNG)
with a clip backbone is an :class:`EchoDataError` naming the file (``data.on_error=skip`` leaves
such records out, logged). The bound kind is a per-instance choice rather than a
:class:`TaskConfig` field, so one configuration (``task=as_present``) runs with any backbone and
the input can never disagree with the model. Build datasets with a task that has seen its backbone
(or call :meth:`ClassificationTask.bind_input_kind`); ``forward`` refuses a backbone of the other
kind. ``view`` stays image-only.

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
from fedecho.tasks.base import IMAGE_BACKBONES, Task, backbone_name, label_value
from fedecho.tasks.frames import clip_array, frame_index
from fedecho.tasks.heads import MLPHead
from fedecho.tasks.metrics.classification import classification_metrics
from fedecho.tasks.selection import metric_direction

__all__ = ["ASPresentTask", "ASSeverityTask", "ClassificationTask", "ViewTask"]

_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "auroc", "loss")
_INPUT_KINDS = ("image", "clip")


class ClassificationTask(Task):
    """Classification of an image (B, 1, H, W) or, where ``input_kinds`` allows, a clip
    (B, 1, T, H, W) over a string label vocabulary."""

    #: the input kinds this task accepts; ``input_kind`` (an instance attribute) is the bound one
    input_kinds: ClassVar[tuple[str, ...]] = ("image",)
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
        #: "image" or "clip": the example key built and fed to the backbone (see the module docstring)
        self.input_kind: str = "image"

    def bind_input_kind(self, kind: str) -> None:
        """Build and read ``kind`` examples from now on ("image" or "clip", one of ``input_kinds``)."""
        if kind not in _INPUT_KINDS:
            raise ValueError(f"input kind must be one of {list(_INPUT_KINDS)}, got {kind!r}")
        if kind not in self.input_kinds:
            raise ValueError(
                f"task {self.name!r} takes {' or '.join(k + 's' for k in self.input_kinds)}, not {kind}s; "
                f"use an image backbone ({IMAGE_BACKBONES})"
            )
        self.input_kind = kind

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

    def class_of(self, labels: Mapping[str, Any], path: str) -> int | None:
        """Class index given by ``labels``; ``None`` when the label is missing or the configured
        class set leaves it out. Invalid labels raise :class:`EchoDataError` naming ``path``."""
        value = label_value(labels, self.label_key)
        return None if value is None else self.label_index(value, path)

    # --- data -----------------------------------------------------------------------------------
    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        return [] if self.class_of(record.labels, record.path) is None else [None]

    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        """``{"image": (1, H, W)}`` or, bound to clips, ``{"clip": (1, T, H, W)}``; plus ``label``
        and the ids."""
        index = self.class_of(sample.labels, sample.path)
        if index is None:
            raise EchoDataError.at(
                sample.path, f"{sample.item_id} has no {self.label_key!r} label in the configured classes "
                f"{list(self.classes)}"
            )
        if self.input_kind == "clip":
            if not sample.is_video:
                raise EchoDataError.at(
                    sample.path, f"task {self.name!r} on a clip backbone needs videos but {sample.item_id} is a "
                    f"single image; leave single-frame records out (data.on_error=skip skips them) or use an "
                    f"image backbone ({IMAGE_BACKBONES})"
                )
            cfg = self.cfg
            inputs = {"clip": clip_array(sample, cfg.clip_length, cfg.clip_stride, cfg.frame_sampling,
                                         cfg.image_size, rng)}
        else:
            frame = frame_index(len(sample.frames), self.cfg.frame_sampling, rng) if sample.is_video else None
            inputs = {"image": self.image_array(sample, frame, f"{self.name} frame")}
        return {**inputs, "label": index, **self.id_fields(sample)}

    # --- model ----------------------------------------------------------------------------------
    def check_backbone(self, backbone: nn.Module) -> None:
        """Bind this task's input kind to the backbone's when the task accepts it (images or
        clips), then check the backbone; an image-only task on a clip backbone names the fix."""
        kind = getattr(backbone, "input_kind", None)
        if kind in self.input_kinds:
            self.bind_input_kind(kind)
        super().check_backbone(backbone)

    def build_head(self, backbone: nn.Module) -> nn.Module:
        self.check_backbone(backbone)
        return MLPHead(backbone.embed_dim, self.num_classes, self.cfg.head_hidden_dim, self.cfg.head_dropout)

    def forward(self, backbone: nn.Module, head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits (B, C) from ``image`` (B, 1, H, W) or ``clip`` (B, 1, T, H, W), per the bound kind."""
        kind = getattr(backbone, "input_kind", self.input_kind)
        if kind != self.input_kind:
            raise ValueError(
                f"task {self.name!r} is bound to {self.input_kind}s but backbone {backbone_name(backbone)} "
                f"takes {kind}s; call task.check_backbone(backbone) before building its datasets"
            )
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
    """Aortic-stenosis grade over :data:`fedecho.data.schema.AS_GRADES` (or a configured subset),
    from images or clips."""

    name: ClassVar[str] = "as_severity"
    input_kinds: ClassVar[tuple[str, ...]] = _INPUT_KINDS
    label_keys: ClassVar[tuple[str, ...]] = ("as_grade",)
    vocabulary: ClassVar[tuple[str, ...]] = AS_GRADES


class ASPresentTask(ClassificationTask):
    """AS present vs absent ("condition"): ``no_AS`` -> 0 ``absent``, any other grade -> 1 ``present``;
    from images or clips (EchoCLR fine-tunes R3D-18 on clips for it)."""

    name: ClassVar[str] = "as_present"
    input_kinds: ClassVar[tuple[str, ...]] = _INPUT_KINDS
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
