"""The task contract: how a supervised task turns records into examples, a backbone into a model,
and outputs into a loss and metrics.

The training engine and the federation call only what :class:`Task` declares. Examples are dicts
with the shared keys (``image`` float32 (1, H, W) in [0, 1], ``clip`` float32 (1, T, H, W),
``mask`` int64 (H, W), ``points`` float32 (K, 2) pixel (x, y), ``label`` int, ``target`` float32
(k,), plus ``patient_id``/``study_id``/``item_id`` strings); batches are those stacked by
:func:`fedecho.tasks.dataset.collate_examples`.

Intensity normalisation (mean/std) is the transform pipeline's job (``fedecho.transforms``); a
task feeds the backbone what the batch holds, repeating the grey channel if the backbone was built
for more input channels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from fedecho.config.task import TaskConfig
from fedecho.data.schema import ItemRecord, Sample
from fedecho.tasks.frames import get_frame, resize_image, to_unit_float

__all__ = ["IMAGE_BACKBONES", "SPATIAL_BACKBONES", "Task", "backbone_name", "label_value"]

#: Backbone names suggested in errors (see fedecho.models.BACKBONES).
IMAGE_BACKBONES = "resnet18, vit-s16, segformer-b0"
SPATIAL_BACKBONES = "segformer-b0/resnet18/vit-s16"

_BACKBONE_ATTRIBUTES = ("input_kind", "in_channels", "embed_dim", "feature_channels", "forward_embed")


def label_value(labels: Mapping[str, Any], key: str) -> Any:
    """A label, or ``None`` when it is absent, ``None``, an empty string or a float NaN."""
    value = labels.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class Task(ABC):
    """One supervised task: examples, head, forward, per-sample loss and whole-set metrics."""

    name: ClassVar[str]
    input_kind: ClassVar[str]  # "image" | "clip": the example key the backbone reads
    label_keys: ClassVar[tuple[str, ...]]  # Sample.labels keys read by default
    metric_directions: ClassVar[dict[str, str]]  # selectable metric -> "max" | "min"
    primary_metric: ClassVar[str]

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.name != self.name:
            raise ValueError(
                f"TaskConfig.name is {cfg.name!r} but this is the {self.name!r} task; "
                f"build tasks with fedecho.tasks.build_task(cfg)"
            )
        self.cfg = cfg
        #: the label key actually read (``cfg.label_key`` overrides the task's default)
        self.label_key: str = cfg.label_key or self.label_keys[0]

    # --- data side ----------------------------------------------------------------------------
    @abstractmethod
    def example_keys(self, record: ItemRecord) -> list[Hashable]:
        """Keys of the examples this record yields, from its labels only (no decoding); ``[]`` when
        the labels the task needs are missing or outside the configured label set."""

    @abstractmethod
    def make_example(self, sample: Sample, key: Hashable, rng: np.random.Generator) -> dict[str, Any]:
        """Build one example dict (contract keys; numpy arrays) from a decoded sample."""

    # --- model side ---------------------------------------------------------------------------
    def check_backbone(self, backbone: nn.Module) -> None:
        """Raise ValueError naming the fix when this task cannot run on ``backbone``.

        The default accepts any backbone for clip tasks and image backbones for image tasks.
        """
        missing = [a for a in _BACKBONE_ATTRIBUTES if not hasattr(backbone, a)]
        if missing:
            raise ValueError(
                f"{type(backbone).__name__} does not follow the Backbone contract (missing {missing}); "
                f"build it with fedecho.models.build_backbone"
            )
        if self.input_kind == "image" and backbone.input_kind != "image":
            raise ValueError(
                f"task {self.name!r} takes single images but backbone {backbone_name(backbone)} takes "
                f"{backbone.input_kind}s; use an image backbone ({IMAGE_BACKBONES})"
            )

    @abstractmethod
    def build_head(self, backbone: nn.Module) -> nn.Module:
        """The task head for ``backbone`` (calls :meth:`check_backbone` first)."""

    @abstractmethod
    def forward(self, backbone: nn.Module, head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Predictions for a batch (the task documents their shape and units)."""

    @abstractmethod
    def per_sample_loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Loss of each sample, shape (B,); a sample's loss depends on that sample only."""

    def loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Scalar training loss = mean of :meth:`per_sample_loss` over the batch (DP-SGD ready)."""
        return self.per_sample_loss(outputs, batch).mean()

    @abstractmethod
    def metrics(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """Metrics over a whole evaluation set (outputs and batches concatenated over the set)."""

    # --- shared helpers -----------------------------------------------------------------------
    def backbone_input(self, backbone: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's ``image`` (B, 1, H, W) or ``clip`` (B, 1, T, H, W), grey channel repeated
        to the backbone's ``in_channels``."""
        if self.input_kind not in batch:
            raise KeyError(f"task {self.name!r} needs batch[{self.input_kind!r}]; batch has {sorted(batch)}")
        x = batch[self.input_kind]
        channels = int(getattr(backbone, "in_channels", 1))
        if x.shape[1] != channels:
            if x.shape[1] != 1:
                raise ValueError(
                    f"batch[{self.input_kind!r}] has {x.shape[1]} channels; backbone "
                    f"{backbone_name(backbone)} takes {channels}"
                )
            x = x.expand(-1, channels, *x.shape[2:])
        return x

    def id_fields(self, sample: Sample) -> dict[str, str]:
        return {"patient_id": sample.patient_id, "study_id": sample.study_id, "item_id": sample.item_id}

    def image_array(self, sample: Sample, frame: int | None, what: str) -> np.ndarray:
        """Frame ``frame`` (or the sample's image) as float32 (1, H, W) in [0, 1] at ``image_size``."""
        image = to_unit_float(get_frame(sample, frame, what), sample.path)
        return resize_image(image, self.cfg.image_size)[None]


def backbone_name(backbone: nn.Module) -> str:
    """A backbone's registry name (if it carries one) and class, for error messages."""
    name = getattr(backbone, "name", None) or getattr(getattr(backbone, "cfg", None), "name", None)
    return f"{name!r} ({type(backbone).__name__})" if name else type(backbone).__name__
