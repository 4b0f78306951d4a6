"""Benchmark ``pipeline-gpu``: can a site's data loader feed a GPU? (issue 14 §1)

Per case (EchoNet-Dynamic layout: 16×112² clips for R(2+1)D-18; CAMUS layout: 256² frames for
Segformer-B0 with the ``seg_train`` augmentation; the real CAMUS subset at ``$FEDECHO_CAMUS`` when
present), the real training loader (``task_loaders``) with the site defaults for a GPU: decoded
cache, ``train.augment_on=device``, workers = the free cores, persistent:

- **cold**: the first epoch, which decodes every item into an empty cache;
- **cached**: later epochs, read from the cache (goal ≥ 500 clips/s, ≥ 2000 frames/s);
- **cached, CPU augmentation**: the same with ``augment_on=loader`` (interleaved with the cached
  side, so machine load hits both alike);
- **before**: today's path before this change (no cache, CPU augmentation, ``num_workers`` 0);
- **GPU rate**: samples/s the GPU consumes: measured training steps where CUDA is present, else
  the model's training FLOPs per sample (``torch.utils.flop_counter``) at a stated effective
  TFLOP/s (``$FEDECHO_GPU_TFLOPS``, default 100: an H100 at ~10 % of its bf16 peak, the issue's
  30–150 range), and the loader's coverage of it (cached / GPU rate).

``details.profile_ms_per_sample`` (wall) and ``profile_cpu_ms_per_sample`` (process CPU time)
break one sample down by stage, before (decode, example, CPU augmentation, collate) and after
(cache read, uint8 example + parameter draw, collate, and the batched augmentation on this
machine's CPU, which on a GPU costs a small fraction of a step). On a shared machine the CPU times
give ``cpu_bound_rate_on_idle_cores``: the rate the usable cores would sustain running only the
loader's steady-state per-sample work (cache entries already open, as in a persistent worker after
its first epoch; DataLoader inter-process transfer not included).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedecho.bench.common import BenchOptions, Goal, Row, interleave, summarize, usable_cores
from fedecho.bench.pipeline import real_camus_root

__all__ = ["DEFAULT_GPU_TFLOPS", "GpuCase", "run"]

DEFAULT_GPU_TFLOPS = 100.0


@dataclass(frozen=True)
class GpuCase:
    name: str
    fmt: str
    task: str
    model: str
    size: int
    batch: int
    goal: float
    unit: str
    synth_patients: int = 0
    synth_size: int | None = None
    root: str | None = None
    max_records: int | None = None
    extra: tuple[str, ...] = ()


def _cases(quick: bool) -> list[GpuCase]:
    if quick:
        return [
            GpuCase("AVI clips (EchoNet-Dynamic)", "echonet-dynamic", "ef", "r2plus1d18", 32, 2, 500, "clips/s",
                    synth_patients=4, synth_size=48, extra=("task.clip_length=4",)),
            GpuCase("NIfTI frames (CAMUS)", "camus", "lv_seg", "segformer-b0", 64, 4, 2000, "frames/s",
                    synth_patients=4, synth_size=64),
        ]
    cases = [
        GpuCase("AVI clips 16×112² (EchoNet-Dynamic)", "echonet-dynamic", "ef", "r2plus1d18", 112, 8, 500, "clips/s",
                synth_patients=32, extra=("task.clip_length=16",)),
        GpuCase("NIfTI frames 256² (CAMUS, seg_train augmentation)", "camus", "lv_seg", "segformer-b0", 256, 16, 2000,
                "frames/s", synth_patients=48),
    ]
    root = real_camus_root()
    if root is not None:
        cases.append(GpuCase("NIfTI frames 256² (real CAMUS subset)", "camus", "lv_seg", "segformer-b0", 256, 16,
                             2000, "frames/s", root=str(root), max_records=400))
    return cases


def _config(case: GpuCase, root: str, cache_dir: Path, *, cache: bool = True, **train: Any):
    from fedecho.config.compose import compose_run_config

    overrides = [f"train.{k}={'null' if v is None else v}" for k, v in train.items()]
    overrides.append(f"data.cache={str(cache).lower()}")
    return compose_run_config([
        f"data.format={case.fmt}", f"data.root={root}", f"task={case.task}",
        f"task.image_size=[{case.size},{case.size}]",
        f"model={case.model}", f"model.image_size={case.size}", "encoder=lora", f"train.batch_size={case.batch}",
        "train.progress=false", f"data.cache_dir={cache_dir}", *case.extra, *overrides])


def _loader(cfg, case: GpuCase):
    from fedecho.engine.build import build_task_learner
    from fedecho.engine.data import load_site
    from fedecho.engine.loaders import task_loaders

    site = load_site(cfg.data)
    if case.max_records:
        site.train = site.train[: case.max_records]
    learner = build_task_learner(cfg)
    return task_loaders(cfg, site, learner.task, splits=("train",))["train"], learner


def _worker_cpu_seconds(loader) -> float:
    """CPU seconds (user + system) used so far by ``loader``'s persistent worker processes."""
    workers = getattr(getattr(loader, "_iterator", None), "_workers", None) or []
    total = 0.0
    for worker in workers:
        try:
            fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def _epoch_rates(loader, epoch: int, min_samples: int = 0) -> tuple[float, float]:
    """(samples/s wall clock, samples per CPU-second of this process and the loader's workers) of
    whole passes over ``loader`` (epochs ``epoch``, ``epoch + 1``, ... until at least
    ``min_samples``). The second barely depends on what else the machine runs: on idle cores the
    loader reaches about (cores × samples per CPU-second), as long as its processes keep them busy."""
    start, samples = time.perf_counter(), 0
    cpu_start = time.process_time() + _worker_cpu_seconds(loader)
    while True:
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            samples += int(next(v for k, v in batch.items() if k != "num_skipped" and hasattr(v, "shape")).shape[0])
        epoch += 1
        if samples >= min_samples:
            wall = time.perf_counter() - start
            cpu = time.process_time() + _worker_cpu_seconds(loader) - cpu_start
            return samples / wall, samples / max(cpu, 1e-9)


def _epoch_rate(loader, epoch: int, min_samples: int = 0) -> float:
    """Samples/s of whole passes over ``loader`` (see :func:`_epoch_rates`)."""
    return _epoch_rates(loader, epoch, min_samples)[0]


def _gpu_rate(cfg, learner, loader, tflops: float) -> tuple[float, str, float]:
    """(samples/s the GPU consumes, how it was obtained, training GFLOP per sample)."""
    import torch

    from fedecho.bench.flops import training_flops
    from fedecho.engine.trainer import move_batch

    batch = move_batch(next(iter(loader)), torch.device("cpu"))
    one = {k: (v[:1] if hasattr(v, "shape") and v.ndim > 0 else v) for k, v in batch.items()}

    def step() -> None:
        loss, _ = learner.loss(one)
        loss.backward()

    gflop = training_flops(step) / 1e9
    if not torch.cuda.is_available():
        return tflops * 1e3 / gflop, f"FLOPs at {tflops:g} TFLOP/s (no GPU here)", gflop
    from fedecho.engine.trainer import Trainer

    trainer = Trainer(learner, cfg.train, total_steps=10**6, device="cuda")
    batches = [b for _, b in zip(range(4), loader, strict=False)]
    trainer.train_epoch(batches)  # warm-up (cuDNN autotune, allocator)
    torch.cuda.synchronize()
    result = trainer.train_epoch(batches * 5)
    torch.cuda.synchronize()
    return result.examples / result.seconds, f"measured on {torch.cuda.get_device_name(0)}", gflop


def _profile(cfg, case: GpuCase, dataset, n: int) -> dict[str, dict[str, float]]:
    """Milliseconds per sample by stage, single process, before and after (the first ``n``
    examples of the training ``dataset``): wall clock and this process's CPU time (the latter
    barely depends on what else the machine runs)."""
    import numpy as np

    from fedecho.data.cache import DecodedCache
    from fedecho.engine.loaders import _augment
    from fedecho.tasks import collate_examples
    from fedecho.tasks.dataset import _to_tensors
    from fedecho.tasks.frames import keep_uint8
    from fedecho.transforms.batched import augment_batch
    from fedecho.transforms.presets import build_transform

    reader = dataset.reader.reader  # the DecodedCache's own reader
    task = dataset.task
    records = [dataset.records[i] for i, _ in dataset.examples[:n]]
    keys = [key for _, key in dataset.examples[:n]]
    transform = build_transform("seg_train", _augment(cfg, case.size))
    cache = DecodedCache(reader, cfg.data.cache_dir, (case.size, case.size))
    clock: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def lap(name: str, fn):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - start_cpu
        return out

    for record in records:  # steady state: a persistent worker opened each entry in its first epoch
        lap("after: cache open (once per item and worker)", lambda r=record: cache.load(r))
    before, after = [], []
    for i, (record, key) in enumerate(zip(records, keys, strict=True)):
        rng = np.random.default_rng(i)
        sample = lap("before: decode", lambda r=record: reader.load(r))
        example = lap("before: example (float, resize)", lambda s=sample, k=key: task.make_example(s, k, rng))
        example = lap("before: CPU augmentation", lambda e=example: transform(e, rng))
        before.append(_to_tensors(example))
        cached = lap("after: cache read", lambda r=record: cache.load(r))
        with keep_uint8():
            raw = lap("after: uint8 example", lambda s=cached, k=key: task.make_example(s, k, rng))
        # the loader's own step: parameter draw + uint8 masks (TaskDataset._raw_example)
        raw = lap("after: parameter draw, uint8 mask", lambda e=raw: dataset._raw_example(e, rng))
        after.append(_to_tensors(raw))
    collate_examples(before), collate_examples(after)  # warm-up: the first call pays one-off costs
    lap("before: collate", lambda: collate_examples(before))
    batch = lap("after: collate", lambda: collate_examples(after))
    lap("after: batched augmentation (this CPU)", lambda: augment_batch(batch, "cpu"))
    wall = {k: round(1e3 * v / len(records), 3) for k, v in clock.items()}
    cpu_ms = {k: round(1e3 * v / len(records), 3) for k, v in cpu.items()}
    return {"wall": wall, "cpu": cpu_ms}


def _measure(case: GpuCase, root: str, reps: int, tmp: Path) -> list[Row]:
    import numpy as np

    tflops = float(os.environ.get("FEDECHO_GPU_TFLOPS", DEFAULT_GPU_TFLOPS))
    load_start = round(os.getloadavg()[0], 2)
    workers = usable_cores()
    cache_dir = tmp / "cache"
    cfg = _config(case, root, cache_dir, augment_on="device", num_workers=workers)
    loader, learner = _loader(cfg, case)
    n = len(loader.dataset)
    cold = _epoch_rate(loader, 1)
    min_samples = max(n, 8 * case.batch * workers)
    cpu_cfg = _config(case, root, cache_dir, augment_on="loader", num_workers=workers)
    cpu_loader, _ = _loader(cpu_cfg, case)
    epochs = iter(range(2, 10**6, 1))
    per_cpu_s: list[float] = []

    def cached_side() -> float:
        wall, per_cpu = _epoch_rates(loader, next(epochs), min_samples)
        per_cpu_s.append(per_cpu)
        return wall

    rates = interleave({"cached": cached_side,
                        "cached_cpu_augmentation": lambda: _epoch_rate(cpu_loader, next(epochs), min_samples)}, reps)
    old_cfg = _config(case, root, cache_dir, cache=False, augment_on="loader", num_workers=0)
    old_loader, _ = _loader(old_cfg, case)
    old_loader.dataset.set_epoch(1)
    start, seen = time.perf_counter(), 0
    for _, batch in zip(range(2), old_loader, strict=False):
        seen += len(next(v for k, v in batch.items() if k != "num_skipped"))
    before = seen / (time.perf_counter() - start)
    gpu, how, gflop = _gpu_rate(cfg, learner, loader, tflops)
    profile = _profile(cfg, case, loader.dataset, min(n, 2 * case.batch))
    cached = summarize(rates["cached"])
    details = {
        "cold_first_epoch": round(cold, 1), "cached": cached.as_dict(),
        "cached_cpu_augmentation": summarize(rates["cached_cpu_augmentation"]).as_dict(),
        "before_no_cache_cpu_augmentation_workers_0": round(before, 1),
        "gpu_rate": round(gpu, 1), "gpu_rate_from": how, "training_gflop_per_sample": round(gflop, 2),
        "coverage_cached_over_gpu": float(f"{cached.median / gpu:.4g}"), "workers": workers, "train_items": n,
        # load-robust: samples per CPU-second of the main process + workers, and that × the cores
        "cached_per_cpu_second": summarize(per_cpu_s[-reps:]).as_dict(),
        "cached_cpu_bound_rate": round(usable_cores() * float(np.median(per_cpu_s[-reps:])), 1),
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "profile_ms_per_sample": profile["wall"], "profile_cpu_ms_per_sample": profile["cpu"],
    }
    loader_cpu = sum(v for k, v in profile["cpu"].items()
                     if k.startswith("after:") and "batched" not in k and "open" not in k)
    old_cpu = sum(v for k, v in profile["cpu"].items() if k.startswith("before:"))
    # what the cores would sustain if they ran only this (worker IPC not included)
    details["cpu_bound_rate_on_idle_cores"] = {"after": round(workers * 1e3 / loader_cpu, 1),
                                               "before": round(workers * 1e3 / old_cpu, 1)}
    note = (f"{case.task} on {case.model}, batch {case.batch}, {workers} workers, {n} items; cold {cold:.0f}, "
            f"before {before:.0f}, GPU {gpu:.0f} {case.unit} ({how})")
    rate_row = Row(f"{case.name}: cached loader", f"{case.unit} from the cache, device augmentation", case.unit,
                   cached, Goal(">=", case.goal), details=details, note=note)
    cover = Row(f"{case.name}: loader / GPU rate", "cached loader samples/s over GPU samples/s", "ratio",
                summarize([r / gpu for r in rates["cached"]]), Goal(">=", 1.0), note=how)
    return [rate_row, cover]


def run(options: BenchOptions) -> list[Row]:
    from fedecho.data.synthetic import synthesize

    reps = options.repetitions(3)
    rows: list[Row] = []
    for case in _cases(options.quick):
        with tempfile.TemporaryDirectory(prefix="fedecho-bench-gpu-") as tmp:
            root = case.root
            if root is None:
                root = str(Path(tmp) / "data")
                synthesize(case.fmt, root, patients=case.synth_patients, seed=0, image_size=case.synth_size)
            rows.extend(_measure(case, root, reps, Path(tmp)))
    return rows
