"""Configuration of one supervised task (head + loss + metrics): :class:`TaskConfig`.

Field checks that need no knowledge of a particular task happen in ``__post_init__``; checks that
depend on the task (e.g. a class subset of the view vocabulary) happen when the task is built
(:func:`fedecho.tasks.build_task`). Every error names the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TaskConfig"]

_FRAME_SAMPLING = ("random", "center")
_HEAD_NORMS = ("group", "batch")
_TEMPORAL_POOLS = ("mean", "attention")
_REGRESSION_LOSSES = ("mse", "l1", "smooth_l1")
_LANDMARK_HEADS = ("heatmap", "regression")


@dataclass
class TaskConfig:
    """One task's settings. Defaults work on the embedded demo (112×112 echoes).

    Hydra and Flower's run config may pass lists where tuples are declared; they are converted.
    """

    name: str = "view"
    """Registered task name (see ``fedecho.tasks.TASKS``): view, as_severity, as_present, lv_seg,
    ef, volumes, age, lvh."""

    classes: tuple[str, ...] | None = None
    """Label set. Classification: the label strings to train on, in index order (a subset of the
    task's vocabulary; records with other labels are left out). lv_seg: the foreground structures
    to keep (names from ``fedecho.data.schema.MASK_LABELS``, e.g. ``("lv_cavity",)``); every other
    structure becomes background. ``None``: the task's full vocabulary."""

    num_classes: int | None = None
    """Number of output classes (lv_seg: including background). ``None``: derived from
    ``classes``; when both are set they must agree."""

    label_key: str | None = None
    """Sample label key to read instead of the task's default (e.g. a site's own column)."""

    image_size: tuple[int, int] | int = (112, 112)
    """(H, W) every image / clip frame is resized to (an int means square)."""

    clip_length: int = 16
    """Frames per clip for clip tasks (ef)."""

    clip_stride: int = 2
    """Step between sampled clip frames."""

    frame_sampling: str = "random"
    """How an image task picks a frame from a video when the label names none, and where a clip
    starts: ``"random"`` (drawn from the example's generator) or ``"center"``."""

    head_hidden_dim: int | None = None
    """Hidden width of the MLP head; ``None`` = a linear head (a linear probe on frozen features)."""

    head_dropout: float = 0.0
    """Dropout before the head's last layer."""

    head_norm: str = "group"
    """Normalisation in convolutional heads (segmentation decoder, heatmap head): ``"group"`` works
    with DP-SGD (per-sample gradients); ``"batch"`` mixes samples and is refused by opacus."""

    decoder_dim: int = 128
    """Width of the SegFormer all-MLP decoder (the paper uses 256 for B0, 768 for B2+)."""

    temporal_pool: str = "mean"
    """Pooling over time of per-frame embeddings when a clip task runs on an image backbone."""

    regression_loss: str = "mse"
    """Loss on standardised targets: ``"mse"``, ``"l1"`` or ``"smooth_l1"``."""

    target_offset: float | None = None
    """Regression: prediction = offset + scale · head output (``None``: the task's default)."""

    target_scale: float | None = None
    """Regression scale, > 0 (``None``: the task's default)."""

    dice_weight: float = 1.0
    """lv_seg: weight of the soft Dice term."""

    ce_weight: float = 1.0
    """lv_seg: weight of the cross-entropy term."""

    measurements: tuple[str, ...] = ("IVSd", "LVIDd", "LVPWd")
    """lvh: caliper measurements whose two endpoints are regressed (2 points each)."""

    landmark_head: str = "heatmap"
    """lvh: ``"heatmap"`` (soft-argmax over decoder heatmaps; needs a spatial neck) or
    ``"regression"`` (MLP on the pooled embedding; any image backbone)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskConfig.name must be a task name such as 'view', got {self.name!r}")
        if self.classes is not None:
            if isinstance(self.classes, str):
                raise ValueError(
                    f"TaskConfig.classes must be a list of label names, got the string "
                    f"{self.classes!r}; write classes=[{self.classes!r}]"
                )
            self.classes = tuple(self.classes)
            if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
                raise ValueError(
                    f"TaskConfig.classes must be non-empty label names, got {self.classes!r}; "
                    f"leave it unset to use the task's full vocabulary"
                )
            duplicates = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if duplicates:
                raise ValueError(f"TaskConfig.classes lists {duplicates} twice; list each once")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2
        ):
            raise ValueError(
                f"TaskConfig.num_classes must be an int >= 2, got {self.num_classes!r}; "
                f"leave it unset to derive it from classes"
            )
        self.image_size = _pair(self.image_size)
        for name in ("clip_length", "clip_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TaskConfig.{name} must be an int >= 1, got {value!r}")
        _choice("frame_sampling", self.frame_sampling, _FRAME_SAMPLING)
        _choice("head_norm", self.head_norm, _HEAD_NORMS)
        _choice("temporal_pool", self.temporal_pool, _TEMPORAL_POOLS)
        _choice("regression_loss", self.regression_loss, _REGRESSION_LOSSES)
        _choice("landmark_head", self.landmark_head, _LANDMARK_HEADS)
        if self.head_hidden_dim is not None and (
            not isinstance(self.head_hidden_dim, int) or self.head_hidden_dim < 1
        ):
            raise ValueError(
                f"TaskConfig.head_hidden_dim must be a positive int or None (linear head), "
                f"got {self.head_hidden_dim!r}"
            )
        if not 0.0 <= float(self.head_dropout) < 1.0:
            raise ValueError(f"TaskConfig.head_dropout must be in [0, 1), got {self.head_dropout!r}")
        if not isinstance(self.decoder_dim, int) or self.decoder_dim < 8:
            raise ValueError(f"TaskConfig.decoder_dim must be an int >= 8, got {self.decoder_dim!r}")
        if self.head_norm == "group" and self.decoder_dim % 8:
            raise ValueError(
                f"TaskConfig.decoder_dim={self.decoder_dim} must be a multiple of 8 for "
                f"head_norm='group' (8 groups); pick e.g. {self.decoder_dim // 8 * 8 or 8}"
            )
        if self.target_scale is not None and not float(self.target_scale) > 0:
            raise ValueError(
                f"TaskConfig.target_scale must be > 0 (a spread of the target, e.g. 10 for EF %), "
                f"got {self.target_scale!r}"
            )
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            raise ValueError(
                f"TaskConfig.dice_weight and ce_weight must be >= 0 and not both 0, got "
                f"{self.dice_weight!r} and {self.ce_weight!r}"
            )
        if isinstance(self.measurements, str):
            self.measurements = (self.measurements,)
        self.measurements = tuple(self.measurements)
        if not self.measurements:
            raise ValueError("TaskConfig.measurements is empty; name at least one, e.g. ['LVIDd']")

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in value
    ):
        return int(value[0]), int(value[1])
    raise ValueError(
        f"TaskConfig.image_size must be an int or (height, width) of ints >= 8, got {value!r}; "
        f"e.g. image_size=112 or image_size=[112, 112]"
    )


def _choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"TaskConfig.{name} must be one of {', '.join(valid)}; got {value!r}")
