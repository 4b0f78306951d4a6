"""Device-dependent speed switches of a training step: bf16 autocast, channels_last, the data
loader's workers, pinned memory and where augmentation runs.

Each ``train.*`` switch is ``true``/``false`` or ``null`` = "on where it helps": on CUDA. bf16
autocast runs matmuls and convolutions in bfloat16 on tensor cores (no loss scaling needed, unlike
fp16) while the optimiser keeps fp32 weights; channels_last (NHWC, and NDHWC for 3D convolutions)
is the layout cuDNN's fastest kernels use under autocast. On CPU both stay off by default: CPU
bf16 is slow without AMX and the layouts gain nothing there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from fedecho.config.train import TrainConfig

__all__ = [
    "autocast",
    "augment_on",
    "free_cores",
    "input_channels_last",
    "resolve_device",
    "to_channels_last",
    "use_autocast",
    "use_channels_last",
    "use_pin_memory",
    "workers",
]


def resolve_device(cfg: TrainConfig) -> torch.device:
    """``train.device`` with ``auto`` resolved (CUDA when available)."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _auto(value: bool | None, device: torch.device) -> bool:
    return device.type == "cuda" if value is None else bool(value)


def use_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    return _auto(cfg.autocast, device)


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return _auto(cfg.channels_last, device)


def use_pin_memory(cfg: TrainConfig, device: torch.device) -> bool:
    """Pinning needs CUDA: off on a CPU-only machine whatever the setting."""
    return _auto(cfg.pin_memory, device) and torch.cuda.is_available()


def augment_on(cfg: TrainConfig, device: torch.device) -> str:
    """``loader`` or ``device`` (``auto``: device on CUDA, loader on CPU)."""
    if cfg.augment_on == "auto":
        return "device" if device.type == "cuda" else "loader"
    return cfg.augment_on


def free_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def workers(cfg: TrainConfig, device: torch.device) -> int:
    """``train.num_workers``, or for null the free cores: all of them on CUDA; on CPU those the
    training step's threads leave free (``train.threads`` below the core count; unset: torch uses
    every core, so none)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    cores = free_cores()
    if device.type == "cuda":
        return cores
    return max(0, cores - (cfg.threads or cores))


@contextlib.contextmanager
def autocast(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """bf16 autocast on ``device`` when :func:`use_autocast`, else nothing."""
    if use_autocast(cfg, device):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert the module's 4D tensors to channels_last and 5D ones to channels_last_3d, in place
    (``Module.to(memory_format=...)`` refuses a model holding both ranks)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.ndim == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
        elif tensor.ndim == 5:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def input_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """An image batch (B, C, H, W) as channels_last, a clip batch (B, C, T, H, W) as
    channels_last_3d; other tensors unchanged."""
    if tensor.ndim == 4 and tensor.is_floating_point():
        return tensor.contiguous(memory_format=torch.channels_last)
    if tensor.ndim == 5 and tensor.is_floating_point():
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor
