"""Local training configuration (one site, one phase): optimiser, schedule, stopping, logging."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig"]

_OPTIMIZERS = ("adamw", "adam", "sgd")
_SCHEDULES = ("constant", "cosine", "poly")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    """adamw | adam | sgd (momentum 0.9)"""
    schedule: str = "cosine"
    """constant | cosine | poly (power 0.9, as in SegFormer) — over the whole run, with warmup"""
    warmup_steps: int = 0
    grad_clip: float | None = None
    """Clip the global gradient norm (not DP clipping, which is per sample in fedecho.privacy)."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement of the task's primary metric."""
    eval_every: int = 1
    """Evaluate on the validation split every N epochs."""
    log_every: int = 10
    """Steps between TensorBoard scalar writes."""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N"""
    num_workers: int | None = None
    """DataLoader worker processes; None = the free cores: all of them when training on CUDA (the
    main process mostly waits for the GPU), those the training threads leave on CPU (usually 0).
    Workers > 0 are persistent (kept across epochs)."""
    pin_memory: bool | None = None
    """Page-locked batches for fast, non-blocking host-to-device copies; None = on with CUDA."""
    augment_on: str = "auto"
    """Where training augmentation runs: loader (per sample, CPU, in the DataLoader) | device
    (one batched op after the transfer, fedecho.transforms.batched) | auto (device on CUDA)."""
    autocast: bool | None = None
    """bf16 autocast of the forward pass and loss; None = on with CUDA (bf16 is not used on CPU)."""
    channels_last: bool | None = None
    """channels_last memory format for convolutions (3D: channels_last_3d); None = on with CUDA."""
    threads: int | None = None
    """torch intra-op threads (``torch.set_num_threads``); None keeps torch's default. On a machine
    whose cores other jobs share, 1 is often several times faster than the default."""
    progress: bool = True
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"train.optimizer {self.optimizer!r} is unknown; valid: {', '.join(_OPTIMIZERS)}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"train.schedule {self.schedule!r} is unknown; valid: {', '.join(_SCHEDULES)}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("train.early_stopping_patience must be >= 1 or null (no early stopping)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"train.threads must be >= 1 or null (torch's default), got {self.threads}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0 or null (the free cores), got {self.num_workers}")
        if self.augment_on not in ("auto", "loader", "device"):
            raise ValueError(f"train.augment_on must be auto, loader or device, got {self.augment_on!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
