"""DataLoaders for a task or a pretraining method over a site's splits (shared by ``fedecho train``
and the federated site)."""

from __future__ import annotations

import dataclasses

from torch.utils.data import DataLoader

from fedecho.config.run import RunConfig
from fedecho.engine.data import PretrainDataset, SiteData, make_loader

__all__ = ["pretrain_loader", "task_loaders"]


def _augment(cfg: RunConfig, size: int):
    # tasks use no DINO crops; let the local-crop size be derived again from the new size
    return dataclasses.replace(cfg.ssl.augment, image_size=size, dino_local_size=None)


def task_loaders(cfg: RunConfig, site: SiteData, task, *, splits=("train", "val", "test"),
                 seed: int | None = None) -> dict[str, DataLoader]:
    """Training loader (augmented, shuffled) and deterministic evaluation loaders for ``task``."""
    from fedecho.tasks import TaskDataset, collate_examples
    from fedecho.transforms.presets import build_transform

    seed = cfg.train.seed if seed is None else seed
    size = cfg.task_config(task.name).image_size
    side = size if isinstance(size, int) else max(size)
    loaders = {}
    for name in splits:
        records = site.split(name)
        if not records:
            continue
        train = name == "train"
        transform = build_transform("seg_train" if train else "eval", _augment(cfg, side))
        dataset = TaskDataset(site.reader, records, task, transform=transform, seed=seed,
                              on_error=cfg.data.on_error)
        if len(dataset) == 0:
            continue
        loaders[name] = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=train, seed=seed,
                                    collate=collate_examples, num_workers=cfg.train.num_workers)
    if "train" in splits and "train" not in loaders:
        raise ValueError(
            f"task {task.name}: no training example in {len(site.train)} training records (are the "
            f"labels {task.label_keys} present in this data?)"
        )
    return loaders


def pretrain_loader(cfg: RunConfig, site: SiteData, method, *, seed: int | None = None) -> DataLoader:
    seed = cfg.train.seed if seed is None else seed
    dataset = PretrainDataset(site.reader, site.train, method, seed=seed, on_error=cfg.data.on_error)
    batch = min(cfg.train.batch_size, len(dataset))
    return make_loader(dataset, batch_size=batch, shuffle=True, seed=seed, collate=dataset.collate,
                       num_workers=cfg.train.num_workers, drop_last=len(dataset) >= 2 * batch)
