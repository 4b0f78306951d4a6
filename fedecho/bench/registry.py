"""The benchmark names ``fedecho bench`` knows, in the issue's order, each with its title, goal and
the ``module:function`` that runs it (imported only when it runs, so ``--list`` stays fast)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from fedecho.bench.common import BenchOptions, Row
from fedecho.registry import Registry

__all__ = ["BENCHMARKS", "BenchmarkSpec", "benchmark_names"]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    title: str
    goal: str
    target: str
    """``module:function``; the function takes :class:`BenchOptions` and returns rows."""

    def load(self) -> Callable[[BenchOptions], list[Row]]:
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


#: name -> spec (loud: a duplicate name raises; an unknown one lists the valid names).
BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")

_ORDER: list[str] = []

for _spec in (
    BenchmarkSpec("ratio", "federated simulation (K = 3, 10) vs pooled training, same total optimiser steps",
                  "wall ratio ≤ 1.10", "fedecho.bench.federation_ratio:run"),
    BenchmarkSpec("bytes", "bytes per site per round: LoRA adapter vs full encoder, per backbone",
                  "≤ 1 % of the encoder", "fedecho.bench.wire:run"),
    BenchmarkSpec("engine", "engine training step vs a plain PyTorch loop (same model, batch, data)",
                  "≤ 1.05", "fedecho.bench.engine_step:run"),
    BenchmarkSpec("pipeline", "data pipeline samples/s vs samples/s a training step consumes (AVI, NIfTI, DICOM)",
                  "≥ 2×", "fedecho.bench.pipeline:run"),
    BenchmarkSpec("pipeline-gpu", "data loader vs a GPU: cold and cached (decoded cache, device augmentation) "
                  "clips/frames per s vs the GPU's consumption rate", "≥ 500 clips/s, ≥ 2000 frames/s",
                  "fedecho.bench.pipeline_gpu:run"),
    BenchmarkSpec("dp", "DP-SGD step vs non-private step on LoRA models (opacus per-sample gradient modes)",
                  "≤ 2×", "fedecho.bench.privacy:run"),
    BenchmarkSpec("scale", "10, 30, 100 simulated sites: round time, peak memory, linear fit",
                  "linear in sites", "fedecho.bench.scale:run"),
    BenchmarkSpec("aggregate", "coordinator: validate + aggregate 100 LoRA updates (ViT-S, Segformer-B0)",
                  "< 1 s", "fedecho.bench.aggregation:run"),
    BenchmarkSpec("deploy-round", "deployed round (SuperLink + 2 sites with the warm site worker on 127.0.0.1) vs "
                  "the same round simulated; where a deployed round's time goes", "ratio ≤ 1.3",
                  "fedecho.bench.deploy_round:run"),
    BenchmarkSpec("superlink-call", "coordinator CPU per authenticated Fleet call: Flower's HTTP middleware on every "
                  "path vs narrowed to the paths each layer acts on (fedecho.deploy.superlink)", "reported",
                  "fedecho.bench.superlink_call:run"),
    BenchmarkSpec("ssl-gpu", "SSL pretraining throughput on a GPU: images/s and bf16 MFU (ViT-S DINO and "
                  "DINOv2, ResNet-18 SimCLR)", "reported (needs CUDA)", "fedecho.bench.ssl_throughput:run"),
):
    BENCHMARKS.add(_spec.name, _spec)
    _ORDER.append(_spec.name)
del _spec


def benchmark_names() -> list[str]:
    """All benchmark names in the issue's order (``BENCHMARKS.names()`` is alphabetical)."""
    return list(_ORDER)
