"""Benchmark 8 (GPU only): self-supervised pretraining throughput and bf16 model FLOP utilisation.

Cases: ViT-S/16 DINO (Caron et al. 2021; 2 global 224 px + 6 local 96 px crops per image,
batch 64), ViT-S/16 DINOv2 (Oquab et al. 2023; the same crops, block masks on the global crops
drawn as in training, iBOT + KoLeo + Sinkhorn-Knopp, layer-wise lr decay groups) and ResNet-18
SimCLR (Chen et al. 2020; two 112 px views, batch 256). A step is ``zero_grad``, the method's loss
under ``torch.autocast(dtype=bfloat16)``, ``backward``, the learner's before-step hook (DINOv2's
weight-decay schedule), AdamW ``step`` and the after-step hook (the EMA teacher). Images/s counts source images
(one per sample, whatever its number of views). FLOPs per step come from
:func:`~fedecho.bench.flops.training_flops` (forward + backward); MFU divides the achieved
FLOP/s by the device's dense bf16 peak (:data:`~fedecho.bench.flops.PEAK_BF16_TFLOPS`).
Without a CUDA device every row is reported as skipped.
"""

from __future__ import annotations

import time
from typing import Any

from fedecho.bench.common import BenchOptions, Row, summarize
from fedecho.bench.flops import mfu, peak_bf16_tflops, training_flops

__all__ = ["NO_CUDA", "run"]

NO_CUDA = "skipped: no CUDA device"

_CASES = (("vit-s16 dino", "vit-s16", "dino", 224, 64), ("vit-s16 dinov2", "vit-s16", "dinov2", 224, 64),
          ("resnet18 simclr", "resnet18", "simclr", 112, 256))


def _batch(method: str, cfg: Any, batch: int, device: Any) -> dict[str, Any]:
    """Random views shaped as the method's collate makes them: SimCLR ``view_a``/``view_b``
    (B, 1, S, S); DINO ``global_crops`` (B, 2, 1, S, S) and ``local_crops`` (B, N, 1, s, s);
    DINOv2 also ``masks`` (B, 2, P) drawn by the training mask sampler."""
    import numpy as np
    import torch

    augment = cfg.ssl.augment
    size = augment.image_size
    if method in ("dino", "dinov2"):
        local = augment.dino_local_size
        views = {"global_crops": torch.randn(batch, 2, 1, size, size, device=device),
                 "local_crops": torch.randn(batch, augment.dino_num_local_crops, 1, local, local, device=device)}
        if method == "dinov2":
            from fedecho.ssl.dinov2_masking import sample_crop_masks

            ssl, side, rng = cfg.ssl, size // 16, np.random.default_rng(0)
            masks = [sample_crop_masks(2, (side, side), rng, probability=ssl.mask_probability,
                                       ratio=tuple(ssl.mask_ratio), min_patches=ssl.mask_min_patches,
                                       max_fraction=ssl.mask_max_fraction, min_aspect=ssl.mask_min_aspect)
                     for _ in range(batch)]
            views["masks"] = torch.from_numpy(np.stack(masks).reshape(batch, 2, -1)).to(device)
        return views
    return {"view_a": torch.randn(batch, 1, size, size, device=device),
            "view_b": torch.randn(batch, 1, size, size, device=device)}


def run(options: BenchOptions) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        return [Row(case, metric, unit, None, note=NO_CUDA) for case, *_ in _CASES
                for metric, unit in (("pretraining throughput", "images/s"), ("bf16 MFU", "fraction"))]
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_tflops(name)
    reps, steps = options.repetitions(5), (2 if options.quick else 10)
    rows = []
    for case, model, method, size, batch in _CASES:
        size, batch = (64, 4) if options.quick else (size, batch)
        seconds, flops = _measure(model, method, size, batch, reps, steps, device)
        torch.cuda.empty_cache()
        command_note = f"batch {batch} at {size} px, {steps} steps per repetition, {name}"
        rows.append(Row(case, "pretraining throughput", "images/s", summarize([batch / s for s in seconds]),
                        details={"flops_per_step": flops, "seconds_per_step": summarize(seconds).as_dict()},
                        note=command_note))
        if peak is None:
            rows.append(Row(case, "bf16 MFU", "fraction", None,
                            note=f"skipped: no bf16 peak known for {name} (fedecho.bench.flops.PEAK_BF16_TFLOPS)"))
        else:
            rows.append(Row(case, "bf16 MFU", "fraction", summarize([mfu(flops, s, peak) for s in seconds]),
                            details={"peak_tflops": peak, "flops_per_step": flops},
                            note=f"{flops / 1e9:.1f} GFLOP per step (forward + backward), peak {peak} TFLOP/s"))
    return rows


def _measure(model: str, method: str, size: int, batch: int, reps: int, steps: int,
             device: Any) -> tuple[list[float], int]:
    """Seconds per step (one value per repetition of ``steps`` steps) and FLOPs per step; runs on
    any ``device`` (``run`` uses CUDA only; the CPU serves the tests)."""
    import torch

    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_pretrain_learner

    cfg = compose_run_config([f"model={model}", f"model.image_size={size}", "mode=pretrain", f"ssl={method}",
                              f"ssl.augment.image_size={size}"])
    learner = build_pretrain_learner(cfg).to(device)
    groups = learner.optimizer_groups(1e-4, 0.04)
    optimizer = torch.optim.AdamW(groups or [p for p in learner.parameters() if p.requires_grad], lr=1e-4)
    data = _batch(method, cfg, batch, device)

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = learner.loss(data)
        loss.backward()

    def step() -> None:
        forward_backward()
        learner.before_optimizer_step(optimizer)
        optimizer.step()
        learner.after_optimizer_step()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    learner.train()
    flops = training_flops(forward_backward)
    for _ in range(3):  # warm-up: kernels, allocator, DINO teacher copy
        step()
    seconds = []
    for _ in range(reps):
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        seconds.append((time.perf_counter() - start) / steps)
    return seconds, flops
