"""Engine training step vs a plain PyTorch loop on the same model, batch and data.

Cases (issue: "a local training step through the engine costs <= 1.05x a plain PyTorch loop"):
ResNet-18 SimCLR at 112x112 and Segformer-B0 LoRA (LV segmentation) at 256x256. The two loops run
interleaved, repetition by repetition, on identical fresh models, so machine load hits both alike;
the ratio is engine / plain per repetition, reported as median and spread.

    python benchmarks/engine_step.py [--reps 5] [--steps 5] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from fedecho.config.compose import compose_run_config
from fedecho.config.train import TrainConfig
from fedecho.engine.build import build_pretrain_learner, build_task_learner
from fedecho.engine.trainer import Trainer


def simclr_case(batch: int):
    cfg = compose_run_config(["model=resnet18", "model.image_size=112", "mode=pretrain", "ssl=simclr"])
    make = lambda: build_pretrain_learner(cfg)  # noqa: E731
    data = {"view_a": torch.randn(batch, 1, 112, 112), "view_b": torch.randn(batch, 1, 112, 112)}
    return "resnet18 simclr 112", make, data


def segformer_lora_case(batch: int):
    cfg = compose_run_config(["model=segformer-b0", "task=lv_seg", "encoder=lora"])
    make = lambda: build_task_learner(cfg)  # noqa: E731
    data = {"image": torch.randn(batch, 1, 256, 256), "mask": torch.randint(0, 4, (batch, 256, 256))}
    return "segformer-b0 lora lv_seg 256", make, data


_OPTIMIZERS: dict[int, torch.optim.Optimizer] = {}
_TRAINERS: dict[int, Trainer] = {}


def plain_loop(learner, batches) -> float:
    optimizer = _OPTIMIZERS.setdefault(
        id(learner), torch.optim.AdamW([p for p in learner.parameters() if p.requires_grad], lr=1e-4))
    learner.train()
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.loss(batch)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def engine_loop(learner, batches) -> float:
    cfg = TrainConfig(lr=1e-4, optimizer="adamw", schedule="constant", progress=False, log_every=10**9)
    trainer = _TRAINERS.setdefault(id(learner), Trainer(learner, cfg, total_steps=10**6))
    start = time.perf_counter()
    trainer.train_epoch(batches)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, CUDA {torch.cuda.is_available()}")
    rows = []
    for case in (simclr_case, segformer_lora_case):
        name, make, batch = case(args.batch)
        batches = [batch] * args.steps
        plain_learner, engine_learner = make(), make()
        plain_loop(plain_learner, batches[:1])  # warm-up both (allocator, lazy init)
        engine_loop(engine_learner, batches[:1])
        plain_t, engine_t, ratios = [], [], []
        for rep in range(args.reps):
            order = (plain_loop, engine_loop) if rep % 2 == 0 else (engine_loop, plain_loop)
            times = {}
            for loop in order:
                learner = plain_learner if loop is plain_loop else engine_learner
                times[loop.__name__] = loop(learner, batches) / args.steps
            plain_t.append(times["plain_loop"])
            engine_t.append(times["engine_loop"])
            ratios.append(times["engine_loop"] / times["plain_loop"])
        row = {"case": name, "batch": args.batch, "plain_s_per_step": statistics.median(plain_t),
               "engine_s_per_step": statistics.median(engine_t), "ratio_median": statistics.median(ratios),
               "ratio_min": min(ratios), "ratio_max": max(ratios)}
        rows.append(row)
        print(f"{name:32s} plain {row['plain_s_per_step']:.3f} s/step  engine {row['engine_s_per_step']:.3f} s/step  "
              f"ratio {row['ratio_median']:.3f} (min {row['ratio_min']:.3f}, max {row['ratio_max']:.3f}, {args.reps} reps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
