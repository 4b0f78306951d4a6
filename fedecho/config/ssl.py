"""Typed configuration of echo augmentations and self-supervised pretraining methods.

:class:`AugmentConfig` parameterises the transform presets of :mod:`fedecho.transforms.presets`;
:class:`SSLConfig` the methods of :mod:`fedecho.ssl` (SimCLR, multi-instance SimCLR, EchoCLR,
DINO, DINOv2). Both validate themselves in ``__post_init__``; every error names the field and the fix.
Defaults follow the papers where they fit echo at 112 x 112 (EchoNet's size) and are noted where
they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SSL_METHOD_NAMES", "AugmentConfig", "SSLConfig"]

#: Names of the pretraining methods (``fedecho.ssl.SSL_METHODS`` registers exactly these).
SSL_METHOD_NAMES: tuple[str, ...] = ("simclr", "multi_instance", "echoclr", "dino", "dinov2")

#: Temperature used when ``SSLConfig.temperature`` is left ``None``: SimCLR's 0.5 (as in the
#: SimCLR-RHD seed) and EchoCLR's 0.05 (Holste et al. 2023) for the multi-instance methods.
_DEFAULT_TEMPERATURE = {"simclr": 0.5, "multi_instance": 0.05, "echoclr": 0.05}


def _check_probability(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name}={value} is not a probability; set it within [0, 1]")


def _check_range(owner: str, name: str, pair: tuple[float, float], low: float, high: float) -> None:
    if len(pair) != 2:
        raise ValueError(f"{owner}.{name}={pair!r} must be a (min, max) pair")
    lo, hi = pair
    if not (low < lo <= hi <= high):
        raise ValueError(
            f"{owner}.{name}={tuple(pair)} is invalid; give (min, max) with "
            f"{low} < min <= max <= {high}"
        )


@dataclass
class AugmentConfig:
    """Parameters of the echo augmentation presets (see :mod:`fedecho.transforms.presets`).

    Sizes are output sizes in pixels (square). Intensities are in [0, 1] until the final
    normalisation ``(x - normalize_mean) / normalize_std``.
    """

    image_size: int = 112
    """Output side of "simclr", "seg_train", "eval" and of DINO's global crops."""
    crop_scale: tuple[float, float] = (0.3, 1.0)
    """Random resized crop area fraction for "simclr" (SimCLR uses (0.08, 1); echo loses the
    heart below ~0.3 of the sector)."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect-ratio range of every random resized crop."""
    hflip_prob: float = 0.0
    """Left-right flip probability. 0 by default: an echo view's orientation carries meaning
    (set 0.5 to reproduce SimCLR's default)."""
    rotation_degrees: float = 10.0
    """Max absolute rotation of "seg_train" (degrees, uniform in [-d, d])."""
    seg_crop_scale: tuple[float, float] = (0.8, 1.0)
    """Random resized crop area fraction of "seg_train"."""
    brightness: float = 0.4
    """Brightness jitter strength b: factor uniform in [1 - b, 1 + b] (SimCLR: 0.8 * s)."""
    contrast: float = 0.4
    """Contrast jitter strength c: factor uniform in [1 - c, 1 + c]."""
    jitter_prob: float = 0.8
    """Probability of applying the brightness/contrast jitter (SimCLR: 0.8)."""
    grayscale_prob: float = 0.2
    """Random grayscale probability (SimCLR: 0.2); a no-op on 1-channel echo."""
    blur_prob: float = 0.5
    """Gaussian blur probability for "simclr" and DINO local crops (SimCLR: 0.5)."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Blur sigma range in pixels (SimCLR: [0.1, 2.0])."""
    blur_kernel_fraction: float = 0.1
    """Blur kernel side as a fraction of the image side, made odd (SimCLR: 10 %)."""
    dino_global_crop_scale: tuple[float, float] = (0.4, 1.0)
    """DINO global crop area fraction (Caron et al. 2021: (0.4, 1))."""
    dino_local_crop_scale: tuple[float, float] = (0.05, 0.4)
    """DINO local crop area fraction (Caron et al. 2021: (0.05, 0.4))."""
    dino_local_size: int | None = None
    """DINO local crop side; ``None`` = 3/7 of ``image_size`` (DINO's 96/224) rounded to a
    multiple of 16 (ViT patch), at least 16 and at most ``image_size``: 48 at 112."""
    dino_num_local_crops: int = 6
    """Number of DINO local crops N (Caron et al. use 6-10)."""
    dino_global_blur_prob: float = 0.5
    """Blur probability of DINO global crops (the paper uses 1.0 and 0.1 for the two crops)."""
    normalize_mean: float = 0.5
    normalize_std: float = 0.5
    """Final normalisation; the defaults map [0, 1] to [-1, 1]."""

    def __post_init__(self) -> None:
        owner = "AugmentConfig"
        if self.dino_local_size is None:
            self.dino_local_size = min(self.image_size, max(16, 16 * round(self.image_size * 3 / 7 / 16)))
        for name in ("image_size", "dino_local_size"):
            if getattr(self, name) < 8:
                raise ValueError(f"{owner}.{name}={getattr(self, name)} is too small; use >= 8 pixels")
        for name in ("crop_scale", "seg_crop_scale", "dino_global_crop_scale", "dino_local_crop_scale"):
            _check_range(owner, name, tuple(getattr(self, name)), 0.0, 1.0)
        _check_range(owner, "crop_ratio", tuple(self.crop_ratio), 0.0, float("inf"))
        _check_range(owner, "blur_sigma", tuple(self.blur_sigma), 0.0, float("inf"))
        for name in ("hflip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "dino_global_blur_prob"):
            _check_probability(owner, name, getattr(self, name))
        for name in ("brightness", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"{owner}.{name}={getattr(self, name)} must be in [0, 1) so that the factor "
                    f"range [1 - {name}, 1 + {name}] stays positive"
                )
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ValueError(f"{owner}.rotation_degrees={self.rotation_degrees}; use a value in [0, 180]")
        if not 0.0 < self.blur_kernel_fraction <= 1.0:
            raise ValueError(f"{owner}.blur_kernel_fraction={self.blur_kernel_fraction}; use (0, 1]")
        if self.dino_num_local_crops < 0:
            raise ValueError(f"{owner}.dino_num_local_crops={self.dino_num_local_crops}; use >= 0")
        if self.dino_local_size > self.image_size:
            raise ValueError(
                f"{owner}.dino_local_size={self.dino_local_size} exceeds image_size={self.image_size}; "
                f"local crops must be smaller than global crops"
            )
        if self.normalize_std <= 0:
            raise ValueError(f"{owner}.normalize_std={self.normalize_std}; use a positive value")


@dataclass
class SSLConfig:
    """Self-supervised pretraining method and its hyper-parameters.

    Contrastive methods (``simclr``, ``multi_instance``, ``echoclr``) use NT-Xent (Chen et al.
    2020); ``echoclr`` adds the frame-reordering pretext task (Holste et al. 2023); ``dino``
    follows Caron et al. 2021. Schedules (teacher temperature warm-up, teacher momentum) are in
    optimizer steps.
    """

    method: str = "simclr"
    temperature: float | None = None
    """NT-Xent temperature; ``None`` = the method's paper value (simclr 0.5, multi-instance and
    echoclr 0.05). Unused by dino."""
    projection_dim: int = 128
    """SimCLR projection head output size (Chen et al. 2020: 128)."""
    projection_hidden_dim: int | None = None
    """SimCLR projection head hidden size; ``None`` = the backbone's embed_dim (as SimCLR)."""
    positive_level: str = "study"
    """Multi-instance positives: two different videos of the same "study" or "patient"; "video":
    two different clips of one video (for datasets with one video per study, e.g. EchoNet-LVH)."""
    clip_length: int = 16
    """Frames per clip for clip methods (multi_instance, echoclr)."""
    clip_stride: int = 1
    """Temporal stride between the frames of a clip."""
    frame_order_frames: int = 4
    """Frames (or clip chunks) shuffled by the frame-order task; EchoCLR uses 4 (24 classes)."""
    frame_order_weight: float = 1.0
    """Weight of the frame-order cross-entropy in the echoclr loss (added to NT-Xent)."""
    frame_order_hidden_dim: int = 512
    """Hidden size of the frame-order classification head (0 = a linear head)."""
    dino_out_dim: int = 4096
    """DINO head output size K (Caron et al. use 65536; smaller keeps the federated update
    small)."""
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_norm_last_layer: bool = True
    """Freeze the weight-norm gain of the DINO head's last layer at 1 (Caron et al.)."""
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    """Teacher temperature rises linearly from warmup_teacher_temp to teacher_temp over these
    optimizer steps, then stays."""
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    teacher_momentum_final: float = 1.0
    """Teacher EMA momentum follows a cosine from teacher_momentum to teacher_momentum_final
    over ``schedule_steps`` optimizer steps (Caron et al. 2021)."""
    schedule_steps: int = 10_000
    # --- DINOv2 (Oquab et al. 2023; read by ssl.method=dinov2 only; defaults are the paper's) ----
    ibot_weight: float = 1.0
    """Weight of the iBOT masked-patch loss (0 = off: no masking, no mask token, no patch head)."""
    ibot_separate_head: bool = False
    """A patch head of its own (True) or the [CLS] DINO head shared (False, DINOv2's default)."""
    ibot_out_dim: int | None = None
    """Prototypes of a separate patch head; ``None`` = dino_out_dim."""
    mask_probability: float = 0.5
    """Probability that a global crop is masked at all (DINOv2: 0.5)."""
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    """Range of the per-crop masked fraction of patches (DINOv2: (0.1, 0.5))."""
    mask_min_patches: int = 4
    """Smallest block area in patches."""
    mask_max_fraction: float = 0.5
    """Largest block area as a fraction of the patches (DINOv2: 0.5)."""
    mask_min_aspect: float = 0.3
    """Block aspect ratios are log-uniform in [mask_min_aspect, 1 / mask_min_aspect]."""
    koleo_weight: float = 0.1
    """Weight of KoLeo on the student's [CLS] features of each global crop (0 = off)."""
    centering: str = "sinkhorn"
    """Teacher target centring: "sinkhorn" (Sinkhorn-Knopp, DINOv2) or "softmax" (DINO's centre)."""
    sinkhorn_iterations: int = 3
    weight_decay_final: float | None = 0.2
    """Weight decay follows a cosine from train.weight_decay to this over ``schedule_steps``
    (DINOv2: 0.04 -> 0.2); ``None`` = constant train.weight_decay."""
    layerwise_decay: float = 0.9
    """Layer-wise lr decay: block i of L gets lr * decay^(L + 1 - i), embeddings decay^(L + 1),
    heads and final norm the full lr (DINOv2: 0.9; 1 = off)."""
    patch_embed_lr_mult: float = 0.2
    """Extra lr factor of the patch embedding (DINOv2: 0.2; 1 = off)."""
    norm_bias_weight_decay: bool = False
    """Apply weight decay to biases, norms and tokens too (DINOv2: no, False)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        owner = "SSLConfig"
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.method not in SSL_METHOD_NAMES:
            raise ValueError(
                f"{owner}.method={self.method!r} is unknown; choose one of {', '.join(SSL_METHOD_NAMES)}"
            )
        if self.temperature is None and self.method in _DEFAULT_TEMPERATURE:
            self.temperature = _DEFAULT_TEMPERATURE[self.method]
        for name in ("temperature", "student_temp", "teacher_temp", "warmup_teacher_temp"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{owner}.{name}={value}; a temperature must be > 0 (e.g. 0.1)")
        if self.positive_level not in ("study", "patient", "video"):
            raise ValueError(
                f"{owner}.positive_level={self.positive_level!r}; use 'study', 'patient' or 'video'"
            )
        if self.frame_order_frames != 4:
            raise ValueError(
                f"{owner}.frame_order_frames={self.frame_order_frames}; the frame-order task is "
                f"defined on 4 frames/chunks (24 permutations): set it to 4"
            )
        if self.clip_length < 1 or self.clip_stride < 1:
            raise ValueError(f"{owner}: clip_length and clip_stride must be >= 1")
        if self.method == "echoclr" and self.clip_length % self.frame_order_frames:
            raise ValueError(
                f"{owner}.clip_length={self.clip_length} is not divisible by frame_order_frames="
                f"{self.frame_order_frames}; use a multiple of 4 (e.g. 16)"
            )
        if self.frame_order_weight < 0:
            raise ValueError(f"{owner}.frame_order_weight={self.frame_order_weight}; use >= 0")
        self._check_dinov2(owner)
        for name in ("projection_dim", "dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{owner}.{name}={getattr(self, name)}; use a positive size")
        if self.projection_hidden_dim is not None and self.projection_hidden_dim < 1:
            raise ValueError(f"{owner}.projection_hidden_dim; use a positive size or None")
        if self.frame_order_hidden_dim < 0:
            raise ValueError(f"{owner}.frame_order_hidden_dim; use >= 0 (0 = linear head)")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ValueError(f"{owner}.center_momentum={self.center_momentum}; use [0, 1) (DINO: 0.9)")
        for name in ("teacher_momentum", "teacher_momentum_final"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{owner}.{name}={getattr(self, name)}; use [0, 1] (DINO: 0.996 -> 1)")
        if self.schedule_steps < 1 or self.warmup_teacher_temp_steps < 0:
            raise ValueError(f"{owner}: schedule_steps must be >= 1, warmup_teacher_temp_steps >= 0")

    def _check_dinov2(self, owner: str) -> None:
        if self.centering not in ("sinkhorn", "softmax"):
            raise ValueError(f"{owner}.centering={self.centering!r}; use 'sinkhorn' or 'softmax'")
        for name in ("ibot_weight", "koleo_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{owner}.{name}={getattr(self, name)}; use >= 0 (0 turns it off)")
        _check_probability(owner, "mask_probability", self.mask_probability)
        _check_range(owner, "mask_ratio", tuple(self.mask_ratio), 0.0, 1.0)
        if not 0.0 < self.mask_max_fraction <= 1.0 or not 0.0 < self.mask_min_aspect <= 1.0:
            raise ValueError(f"{owner}: mask_max_fraction and mask_min_aspect must be in (0, 1]")
        if self.mask_min_patches < 1 or self.sinkhorn_iterations < 1:
            raise ValueError(f"{owner}: mask_min_patches and sinkhorn_iterations must be >= 1")
        if self.ibot_out_dim is not None and self.ibot_out_dim < 1:
            raise ValueError(f"{owner}.ibot_out_dim={self.ibot_out_dim}; use a positive size or None")
        if not 0.0 < self.layerwise_decay <= 1.0 or self.patch_embed_lr_mult <= 0:
            raise ValueError(
                f"{owner}: layerwise_decay={self.layerwise_decay} must be in (0, 1] (1 = off) and "
                f"patch_embed_lr_mult={self.patch_embed_lr_mult} > 0"
            )
        if self.weight_decay_final is not None and self.weight_decay_final < 0:
            raise ValueError(f"{owner}.weight_decay_final={self.weight_decay_final}; use >= 0 or null")

    def batch_coupled_parts(self) -> list[str]:
        """Parts of this method whose loss couples the samples of a batch (no per-sample gradient:
        sample-level DP-SGD cannot bound one sample's influence). Empty = DP-SGD compatible."""
        if self.method in _DEFAULT_TEMPERATURE:
            return ["NT-Xent"]
        parts = []
        if self.method == "dinov2" and self.koleo_weight > 0:
            parts.append("KoLeo (ssl.koleo_weight > 0)")
        if self.method == "dinov2" and self.centering == "sinkhorn":
            parts.append("Sinkhorn-Knopp centring (ssl.centering=sinkhorn)")
        return parts
