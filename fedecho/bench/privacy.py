"""Benchmark 5: a DP-SGD step vs a non-private step on LoRA models (opacus, Abadi et al. 2016).

Cases: ViT-S (224 px), ResNet-18 with GroupNorm (112 px) and Segformer-B0 (256 px), each with a
rank-8 LoRA adapter and a view head, batches of 8 random images. Sides, interleaved per
repetition on their own identical models: the plain engine step; fedecho's
:class:`~fedecho.privacy.SitePrivacy` (opacus ``grad_sample_mode="hooks"``, Poisson batches of
mean size 8); and opacus' other per-sample gradient modes where they apply (``"functorch"``:
per-layer ``torch.func`` vmap; ``"ew"``: expanded weights). Times are seconds per example
(Poisson batches vary in size); a row is the per-repetition ratio DP / plain.
"""

from __future__ import annotations

from typing import Any

from fedecho.bench.common import BenchOptions, Goal, Row, interleave, ratio_row

__all__ = ["DP_GOAL", "GRAD_SAMPLE_MODES", "run"]

DP_GOAL = Goal("<=", 2.0)

#: opacus per-sample gradient modes tried besides fedecho's own path (hooks, via SitePrivacy).
GRAD_SAMPLE_MODES = ("functorch", "ew")


def _images(n: int, size: int):
    import torch
    from torch.utils.data import Dataset

    class Images(Dataset):
        """``n`` random (1, size, size) images with view labels 0..4 (seeded)."""

        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.rand(n, 1, size, size, generator=g)
            self.y = torch.randint(0, 5, (n,), generator=g)

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"image": self.x[i], "label": self.y[i]}

    return Images()


def _side(cfg: Any, data: Any, batch: int, mode: str | None, model: str):
    """A trainer and loader for one side: plain (mode None), ``hooks`` through SitePrivacy, or
    another opacus mode through ``PrivacyEngine.make_private``. Returns a callable timing one
    pass in seconds per example."""
    import time

    from torch.utils.data import DataLoader

    from fedecho.config.federation import PrivacyConfig
    from fedecho.config.train import TrainConfig
    from fedecho.engine.build import build_task_learner
    from fedecho.engine.trainer import Trainer

    trainer = Trainer(build_task_learner(cfg), TrainConfig(lr=1e-3, progress=False, log_every=10**9),
                      total_steps=10**6)
    loader = DataLoader(data, batch_size=batch, shuffle=False)
    if mode == "hooks":
        from fedecho.privacy import SitePrivacy

        loader = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0, unit="example")).attach(
            trainer, loader, per_sample_loss=True, what=model)
    elif mode is not None:
        from opacus import PrivacyEngine

        _, trainer.optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=trainer.learner, optimizer=trainer.optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode=mode)

    def one_pass() -> float:
        start = time.perf_counter()
        result = trainer.train_epoch(loader)
        return (time.perf_counter() - start) / max(1, result.examples)

    return one_pass


def run(options: BenchOptions) -> list[Row]:
    from fedecho.config.compose import compose_run_config

    if options.quick:
        cases, batch, steps, modes = [("resnet18", 32, ["model.norm=group"])], 2, 2, ()
    else:
        cases = [("vit-s16", 224, []), ("resnet18", 112, ["model.norm=group"]), ("segformer-b0", 256, [])]
        batch, steps, modes = 8, 2, GRAD_SAMPLE_MODES
    reps = options.repetitions(3)
    rows = []
    for model, size, extra in cases:
        cfg = compose_run_config([f"model={model}", f"model.image_size={size}", "task=view",
                                  f"task.image_size=[{size},{size}]", "encoder=lora", *extra])
        data = _images(batch * steps, size)
        sides = {"plain": _side(cfg, data, batch, None, model), "hooks": _side(cfg, data, batch, "hooks", model)}
        not_applicable = {}
        for mode in modes:
            try:
                side = _side(cfg, data, batch, mode, model)
                side()  # some modes fail only at the first step
                sides[mode] = side
            except Exception as err:  # noqa: BLE001 - a mode that does not apply is reported, not fatal
                not_applicable[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        times = interleave(sides, reps)
        for mode in ("hooks", *modes):
            case = f"{model} {size}px LoRA batch {batch}, opacus {mode}"
            if mode in not_applicable:
                rows.append(Row(case, "DP-SGD / plain s per example", "ratio", None,
                                note=f"not applicable: {not_applicable[mode]}"))
                continue
            ratios = [d / p for d, p in zip(times[mode], times["plain"], strict=True)]
            rows.append(ratio_row(case, "DP-SGD / plain s per example", ratios, DP_GOAL,
                                  {"plain_s_per_example": times["plain"], f"{mode}_s_per_example": times[mode]},
                                  note="fedecho SitePrivacy" if mode == "hooks" else "opacus make_private"))
    return rows
