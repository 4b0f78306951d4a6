"""The device-dependent switches (train.autocast, channels_last, pin_memory, num_workers,
augment_on): their resolution on CPU and CUDA, and a real training step through the device-side
augmentation path, with bf16 autocast and channels_last forced on, on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedecho.config.train import TrainConfig
from fedecho.engine import precision
from fedecho.transforms.batched import AUGMENT_KEY

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_null_switches_are_on_with_cuda_only():
    cfg = TrainConfig()
    assert (cfg.autocast, cfg.channels_last, cfg.pin_memory, cfg.num_workers, cfg.augment_on) == (
        None, None, None, None, "auto")
    assert not precision.use_autocast(cfg, CPU) and precision.use_autocast(cfg, CUDA)
    assert not precision.use_channels_last(cfg, CPU) and precision.use_channels_last(cfg, CUDA)
    assert precision.augment_on(cfg, CPU) == "loader" and precision.augment_on(cfg, CUDA) == "device"
    forced = TrainConfig(autocast=True, channels_last=False, augment_on="device")
    assert precision.use_autocast(forced, CPU) and not precision.use_channels_last(forced, CUDA)
    assert precision.augment_on(forced, CPU) == "device"


def test_pinned_memory_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not precision.use_pin_memory(TrainConfig(pin_memory=True), CUDA)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.use_pin_memory(TrainConfig(), CUDA) and not precision.use_pin_memory(TrainConfig(), CPU)


def test_workers_default_to_the_free_cores(monkeypatch):
    monkeypatch.setattr(precision, "free_cores", lambda: 4)
    assert precision.workers(TrainConfig(), CUDA) == 4  # the main process mostly waits for the GPU
    assert precision.workers(TrainConfig(), CPU) == 0  # the CPU step's threads use every core
    assert precision.workers(TrainConfig(threads=1), CPU) == 3
    assert precision.workers(TrainConfig(num_workers=2), CUDA) == 2


@pytest.mark.parametrize("bad", [{"augment_on": "gpu"}, {"num_workers": -1}])
def test_bad_switch_values_name_the_key(bad):
    with pytest.raises(ValueError, match=f"train.{next(iter(bad))}"):
        TrainConfig(**bad)


def test_autocast_context_runs_bf16_only_when_on():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision.autocast(TrainConfig(autocast=True), CPU):
        assert (a @ b).dtype == torch.bfloat16
    with precision.autocast(TrainConfig(), CPU):
        assert (a @ b).dtype == torch.float32


def test_channels_last_converts_2d_and_3d_convolutions_in_one_model():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv3d(2, 4, 3))
    precision.to_channels_last(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[1].weight.is_contiguous(memory_format=torch.channels_last_3d)
    clip = precision.input_channels_last(torch.rand(2, 1, 4, 8, 8))
    assert clip.is_contiguous(memory_format=torch.channels_last_3d)


def test_a_training_step_through_device_augmentation_with_bf16_and_channels_last(tmp_path, monkeypatch):
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_task_learner
    from fedecho.engine.data import load_site
    from fedecho.engine.loaders import task_loaders
    from fedecho.engine.trainer import Trainer

    monkeypatch.setenv("FEDECHO_CACHE", str(tmp_path / "cache"))
    cfg = compose_run_config([
        "data.synthetic_format=camus", "data.synthetic_patients=4", "data.synthetic_image_size=40",
        f"data.root={tmp_path / 'synth'}", "task=lv_seg", "task.image_size=[32,32]", "model=resnet18",
        "model.image_size=32", "encoder=lora", "train.batch_size=2", "train.progress=false", "train.device=cpu",
        "train.augment_on=device", "train.autocast=true", "train.channels_last=true",
    ])
    site = load_site(cfg.data)
    learner = build_task_learner(cfg)
    loaders = task_loaders(cfg, site, learner.task)
    batch = next(iter(loaders["train"]))
    assert batch["image"].dtype == torch.uint8 and batch[AUGMENT_KEY].shape == (2, 15)
    assert batch["mask"].dtype == torch.uint8
    assert AUGMENT_KEY not in next(iter(loaders["val"]))  # evaluation is finished in the loader
    assert loaders["train"].num_workers == 0 and not loaders["train"].pin_memory  # CPU defaults
    assert any(p.name == "frames.npy" for p in (tmp_path / "cache").rglob("*"))  # read through the cache
    trainer = Trainer(learner, cfg.train, total_steps=4)
    result = trainer.train_epoch(loaders["train"], max_steps=2)
    assert result.steps == 2 and math.isfinite(result.loss)
    assert math.isfinite(next(iter(trainer.evaluate(loaders["val"]).values())))
