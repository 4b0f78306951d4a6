"""Benchmark 3: one training step through the engine (:class:`~fedecho.engine.trainer.Trainer`)
vs a plain PyTorch loop (``zero_grad``, ``loss``, ``backward``, ``step``) on the same model, batch
and data.

Cases: ResNet-18 SimCLR (112 px) and Segformer-B0 LoRA LV segmentation (256 px). The two loops
own identical fresh models and run interleaved, repetition by repetition, so machine load hits
both alike; the row is the per-repetition ratio engine / plain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedecho.bench.common import BenchOptions, Goal, Row, interleave, ratio_row, timed

__all__ = ["ENGINE_GOAL", "plain_loop", "run"]

ENGINE_GOAL = Goal("<=", 1.05)


def plain_loop(learner: Any, optimizer: Any, batches: list[dict]) -> None:
    """What a hand-written loop does per batch (no scheduler, no hooks, no logging)."""
    learner.train()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.loss(batch)
        loss.backward()
        optimizer.step()


def _cases(quick: bool, batch: int) -> list[tuple[str, Callable[[], Any], dict]]:
    import torch

    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_pretrain_learner, build_task_learner

    size = 32 if quick else 112
    simclr = compose_run_config(["model=resnet18", f"model.image_size={size}", "mode=pretrain", "ssl=simclr"])
    g = torch.Generator().manual_seed(0)
    cases = [(f"resnet18 simclr {size}px batch {batch}", lambda: build_pretrain_learner(simclr),
              {"view_a": torch.randn(batch, 1, size, size, generator=g),
               "view_b": torch.randn(batch, 1, size, size, generator=g)})]
    if not quick:
        seg = compose_run_config(["model=segformer-b0", "task=lv_seg", "encoder=lora"])
        cases.append((f"segformer-b0 lora lv_seg 256px batch {batch}", lambda: build_task_learner(seg),
                       {"image": torch.randn(batch, 1, 256, 256, generator=g),
                        "mask": torch.randint(0, 4, (batch, 256, 256), generator=g)}))
    return cases


def run(options: BenchOptions) -> list[Row]:
    batch, steps = (2, 1) if options.quick else (8, 3)
    reps = options.repetitions(5)
    rows = []
    for case, make, data in _cases(options.quick, batch):
        times = _time_case(make, [data] * steps, reps)
        ratios = [e / p for e, p in zip(times["engine_s_per_step"], times["plain_s_per_step"], strict=True)]
        rows.append(ratio_row(case, "engine / plain s per step", ratios, ENGINE_GOAL, times,
                              note=f"{steps} steps per repetition, loops interleaved"))
    return rows


def _time_case(make: Callable[[], Any], batches: list[dict], reps: int) -> dict[str, list[float]]:
    """Seconds per step of the plain loop and of the engine, interleaved, on two fresh models."""
    import torch

    from fedecho.config.train import TrainConfig
    from fedecho.engine.trainer import Trainer

    plain_learner, engine_learner = make(), make()
    optimizer = torch.optim.AdamW([p for p in plain_learner.parameters() if p.requires_grad], lr=1e-4)
    trainer = Trainer(engine_learner, TrainConfig(lr=1e-4, optimizer="adamw", schedule="constant",
                                                  progress=False, log_every=10**9), total_steps=10**6)
    steps = len(batches)
    return interleave({"plain_s_per_step": lambda: timed(lambda: plain_loop(plain_learner, optimizer, batches)) / steps,
                       "engine_s_per_step": lambda: timed(lambda: trainer.train_epoch(batches)) / steps}, reps)
