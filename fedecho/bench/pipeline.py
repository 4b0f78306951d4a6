"""Benchmark 4: data pipeline throughput vs what a training step consumes.

For each on-disk format, the real training path: ``load_site`` (reader scan, patient splits) ->
``task_loaders`` (``TaskDataset`` decoding + augmentation, ``DataLoader`` with
``train.num_workers`` as configured, default 0) -> batches. Two sides, interleaved per repetition:

- loader: samples/s of a fresh pass over a few batches (a new epoch each pass, so new clips,
  frames and augmentations are drawn);
- training: samples/s of ``Trainer.train_epoch`` on batches already in memory (a representative
  model for the task: R(2+1)D-18 for EchoNet EF clips as in Ouyang et al. 2020, Segformer-B0 for
  CAMUS LV segmentation, ResNet-18 for DICOM views; LoRA rank 8, as a federated site trains).

The row is loader / training (goal >= 2: decoding never starves a step). Cases: AVI clips
(EchoNet-Dynamic layout), NIfTI frames (CAMUS layout) and DICOM cine, generated with
:func:`fedecho.data.synthetic.synthesize` in a temporary folder, plus the real CAMUS subset at
``$FEDECHO_CAMUS`` (default ``../shared/data/camus`` beside the checkout) when it exists.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fedecho.bench.common import BenchOptions, Goal, Row, interleave, ratio_row

__all__ = ["PIPELINE_GOAL", "PipelineCase", "real_camus_root", "run"]

PIPELINE_GOAL = Goal(">=", 2.0)


@dataclass(frozen=True)
class PipelineCase:
    """One format: ``synth`` the synthetic format to write (None: read ``root`` as is), the task,
    model, input side, batch size, training steps and loader batches per pass."""

    name: str
    fmt: str
    task: str
    model: str
    size: int
    batch: int
    steps: int
    loader_batches: int
    synth_patients: int = 0
    synth_size: int | None = None
    root: str | None = None
    extra: tuple[str, ...] = ()


def real_camus_root() -> Path | None:
    """The real CAMUS subset (``$FEDECHO_CAMUS``, else ``../shared/data/camus`` beside the
    checkout) if present."""
    checkout = Path(__file__).resolve().parents[2]
    root = Path(os.environ.get("FEDECHO_CAMUS", checkout.parent / "shared" / "data" / "camus"))
    return root if (root / "database_nifti").is_dir() else None


def _cases(quick: bool) -> list[PipelineCase]:
    if quick:
        return [
            PipelineCase("AVI clips (EchoNet-Dynamic)", "echonet-dynamic", "ef", "r2plus1d18", 32, 2, 1, 2,
                         synth_patients=4, extra=("task.clip_length=4",)),
            PipelineCase("NIfTI frames (CAMUS)", "camus", "lv_seg", "segformer-b0", 64, 2, 1, 2,
                         synth_patients=4, synth_size=64),
            PipelineCase("DICOM cine", "dicom", "view", "resnet18", 32, 2, 1, 2, synth_patients=3, synth_size=64),
        ]
    cases = [
        PipelineCase("AVI clips (EchoNet-Dynamic)", "echonet-dynamic", "ef", "r2plus1d18", 112, 4, 1, 8,
                     synth_patients=16),
        PipelineCase("NIfTI frames (CAMUS)", "camus", "lv_seg", "segformer-b0", 256, 8, 2, 8, synth_patients=12),
        PipelineCase("DICOM cine", "dicom", "view", "resnet18", 112, 8, 2, 8, synth_patients=8),
    ]
    root = real_camus_root()
    if root is not None:
        cases.append(PipelineCase("NIfTI frames (real CAMUS subset)", "camus", "lv_seg", "segformer-b0", 256, 8, 2,
                                  8, root=str(root)))
    return cases


def _measure(case: PipelineCase, root: str, reps: int) -> Row:
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_task_learner
    from fedecho.engine.data import load_site
    from fedecho.engine.loaders import task_loaders
    from fedecho.engine.trainer import Trainer

    cfg = compose_run_config([f"data.format={case.fmt}", f"data.root={root}", f"task={case.task}",
                              f"task.image_size=[{case.size},{case.size}]", f"model={case.model}",
                              f"model.image_size={case.size}", "encoder=lora", f"train.batch_size={case.batch}",
                              "train.progress=false", *case.extra])
    site = load_site(cfg.data)
    learner = build_task_learner(cfg)
    loader = task_loaders(cfg, site, learner.task, splits=("train",))["train"]
    epoch = iter(range(1, 10**9))

    def loader_pass() -> float:
        loader.dataset.set_epoch(next(epoch))
        start, samples = time.perf_counter(), 0
        for _, batch in zip(range(case.loader_batches), loader, strict=False):
            samples += len(next(v for v in batch.values() if hasattr(v, "shape") and v.ndim > 0))
        return samples / (time.perf_counter() - start)

    batches = [batch for _, batch in zip(range(case.steps), loader, strict=False)]
    trainer = Trainer(learner, cfg.train, total_steps=10**6)

    def training_pass() -> float:
        result = trainer.train_epoch(batches)
        return result.examples / result.seconds

    rates = interleave({"loader_samples_per_s": loader_pass, "training_samples_per_s": training_pass}, reps)
    ratios = [lo / tr for lo, tr in zip(rates["loader_samples_per_s"], rates["training_samples_per_s"], strict=True)]
    shape = {k: list(v.shape) for k, v in batches[0].items() if hasattr(v, "shape") and v.ndim > 1}
    row = ratio_row(case.name, "loader / training samples per s", ratios, PIPELINE_GOAL, rates,
                    note=f"{case.task} on {case.model} LoRA, batch {case.batch}, num_workers "
                         f"{cfg.train.num_workers}, {len(site.train)} train records")
    row.details["batch_shapes"] = shape
    return row


def run(options: BenchOptions) -> list[Row]:
    from fedecho.data.synthetic import synthesize

    reps = options.repetitions(3)
    rows = []
    for case in _cases(options.quick):
        if case.root is not None:
            rows.append(_measure(case, case.root, reps))
            continue
        with tempfile.TemporaryDirectory(prefix="fedecho-bench-") as tmp:
            synthesize(case.fmt, Path(tmp) / "data", patients=case.synth_patients, seed=0,
                       image_size=case.synth_size)
            rows.append(_measure(case, str(Path(tmp) / "data"), reps))
    return rows
