"""DataLoaders for a task or a pretraining method over a site's splits (shared by ``fedecho train``
and the federated site).

Task loaders read through the site's decoded cache (``data.cache``, :mod:`fedecho.data.cache`) at
the task's image size; the training loader either augments per sample (``train.augment_on`` =
loader) or ships uint8 examples with their augmentation parameters for the batched device op
(device, :mod:`fedecho.transforms.batched`); evaluation loaders always finish their examples here.
Workers (``train.num_workers``; null = the free cores), persistence and pinned memory follow
:mod:`fedecho.engine.precision`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import DataLoader

from fedecho.config.run import RunConfig
from fedecho.engine.data import PretrainDataset, SiteData, make_loader

__all__ = ["pretrain_loader", "site_reader", "task_loaders"]


def _augment(cfg: RunConfig, size: int):
    # tasks use no DINO crops; let the local-crop size be derived again from the new size
    return dataclasses.replace(cfg.ssl.augment, image_size=size, dino_local_size=None)


def site_reader(cfg: RunConfig, site: SiteData, size, *, cache_dir: str | Path | None = None):
    """The site's reader, behind the decoded cache at ``size`` unless ``data.cache`` is off.

    The cache folder: ``data.cache_dir``, else ``cache_dir`` (the caller's: a deployed site passes
    its state directory), else ``$FEDECHO_CACHE/decoded``."""
    if not cfg.data.cache:
        return site.reader
    from fedecho.data.cache import DecodedCache, default_cache_dir

    folder = cfg.data.cache_dir or cache_dir or default_cache_dir()
    return DecodedCache(site.reader, folder, size)


def task_loaders(cfg: RunConfig, site: SiteData, task, *, splits=("train", "val", "test"),
                 seed: int | None = None, cache_dir: str | Path | None = None) -> dict[str, DataLoader]:
    """Training loader (augmented, shuffled) and deterministic evaluation loaders for ``task``."""
    from fedecho.engine.precision import augment_on, resolve_device, use_pin_memory, workers
    from fedecho.tasks import TaskDataset, collate_examples
    from fedecho.transforms.presets import build_transform

    seed = cfg.train.seed if seed is None else seed
    size = cfg.task_config(task.name).image_size
    side = size if isinstance(size, int) else max(size)
    device = resolve_device(cfg.train)
    on_device = augment_on(cfg.train, device) == "device"
    reader = site_reader(cfg, site, size, cache_dir=cache_dir)
    loaders = {}
    for name in splits:
        records = site.split(name)
        if not records:
            continue
        train = name == "train"
        transform = build_transform("seg_train" if train else "eval", _augment(cfg, side))
        if train and on_device:
            dataset = TaskDataset(reader, records, task, device_augment=transform, seed=seed,
                                  on_error=cfg.data.on_error)
        else:
            dataset = TaskDataset(reader, records, task, transform=transform, seed=seed, on_error=cfg.data.on_error)
        if len(dataset) == 0:
            continue
        loaders[name] = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=train, seed=seed,
                                    collate=collate_examples, num_workers=workers(cfg.train, device),
                                    pin_memory=use_pin_memory(cfg.train, device))
    if "train" in splits and "train" not in loaders:
        raise ValueError(
            f"task {task.name}: no training example in {len(site.train)} training records (are the "
            f"labels {task.label_keys} present in this data?)"
        )
    return loaders


def pretrain_loader(cfg: RunConfig, site: SiteData, method, *, seed: int | None = None) -> DataLoader:
    from fedecho.engine.precision import resolve_device, use_pin_memory, workers

    seed = cfg.train.seed if seed is None else seed
    device = resolve_device(cfg.train)
    dataset = PretrainDataset(site.reader, site.train, method, seed=seed, on_error=cfg.data.on_error)
    batch = min(cfg.train.batch_size, len(dataset))
    return make_loader(dataset, batch_size=batch, shuffle=True, seed=seed, collate=dataset.collate,
                       num_workers=workers(cfg.train, device), pin_memory=use_pin_memory(cfg.train, device),
                       drop_last=len(dataset) >= 2 * batch)
