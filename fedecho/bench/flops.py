"""FLOPs of a training step (``torch.utils.flop_counter.FlopCounterMode``) and model FLOP
utilisation against a GPU's dense bf16 peak.

FlopCounterMode counts the matrix products and convolutions of the forward and backward passes
(``2·M·N·K`` for an ``(M, K) @ (K, N)`` product; element-wise ops are not counted), the convention
of MFU in the PaLM paper (Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["PEAK_BF16_TFLOPS", "mfu", "peak_bf16_tflops", "training_flops"]

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, from the vendors' data sheets, matched
#: against ``torch.cuda.get_device_name()`` in this order (the first substring found wins).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("GH200", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak for a device name, or None when the device is not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def training_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (e.g. forward + ``loss.backward()``), counted, not timed."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def mfu(flops_per_step: float, seconds_per_step: float, peak_tflops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s over the peak FLOP/s."""
    if seconds_per_step <= 0 or peak_tflops <= 0:
        raise ValueError(f"seconds_per_step and peak_tflops must be > 0, got {seconds_per_step}, {peak_tflops}")
    return flops_per_step / seconds_per_step / (peak_tflops * 1e12)
