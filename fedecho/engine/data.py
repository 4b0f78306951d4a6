"""From a :class:`DataConfig` to a site's records and DataLoaders.

:func:`load_site` opens the reader, applies the error policy, gives every patient a split
(patient-level), keeps one virtual site's patients in simulation (the partitioners of
``fedecho.data.partition``) and, for fine-tuning, a label fraction of the training patients.
``format=synthetic`` generates the embedded synthetic data first (once, cached).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fedecho.config.data import DataConfig
from fedecho.data.base import EchoReader, open_reader
from fedecho.data.errors import EchoDataError
from fedecho.data.fractions import label_fraction
from fedecho.data.partition import Partition, partition_patients
from fedecho.data.schema import DataIssue, ItemRecord
from fedecho.data.splits import assign_splits, split_records

__all__ = [
    "IMAGE_INTENSITY",
    "PretrainDataset",
    "SiteData",
    "load_site",
    "make_loader",
    "synthetic_root",
    "with_image_intensity",
]

#: A derived attribute for partitioning by image statistics: an item's mean grey level inside the
#: ultrasound sector (non-zero pixels). Scanners differ in gain, so this splits data the way
#: acquisition sites do, also for formats that do not record the scanner (CAMUS, EchoNet).
IMAGE_INTENSITY = "image_intensity"

log = logging.getLogger(__name__)


@dataclass
class SiteData:
    """One site's reader and its patient-level splits."""

    reader: EchoReader
    train: list[ItemRecord]
    val: list[ItemRecord]
    test: list[ItemRecord]
    issues: list[DataIssue] = field(default_factory=list)
    partition: Partition | None = None

    def split(self, name: str) -> list[ItemRecord]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDECHO_CACHE", Path.home() / ".cache" / "fedecho"))


def synthetic_root(cfg: DataConfig) -> Path:
    """Generate the configured synthetic dataset unless it exists; return its folder.

    Generation goes to a temporary sibling folder renamed into place, so concurrent site
    processes never read a half-written dataset.
    """
    from fedecho.data.synthetic import synthesize

    if cfg.root:
        root = Path(cfg.root)
    else:
        key = f"{cfg.synthetic_format}-p{cfg.synthetic_patients}-s{cfg.split_seed}-{cfg.synthetic_style}"
        key += f"-{cfg.synthetic_image_size}" if cfg.synthetic_image_size else ""
        root = _cache_dir() / "synthetic" / key
    if root.is_dir() and any(root.iterdir()):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        summary = synthesize(cfg.synthetic_format, tmp / "data", patients=cfg.synthetic_patients,
                             seed=cfg.split_seed, style=cfg.synthetic_style, image_size=cfg.synthetic_image_size)
        try:
            os.rename(tmp / "data", root)
            log.info("generated synthetic %s data (%d patients) in %s", summary.format, summary.patients, root)
        except OSError:
            if not (root.is_dir() and any(root.iterdir())):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_site(
    cfg: DataConfig,
    *,
    site: int | None = None,
    num_sites: int = 1,
    fraction_of_train: bool = False,
) -> SiteData:
    """Scan the data, split by patient, keep site ``site`` of ``num_sites`` (simulation) and,
    with ``fraction_of_train``, ``cfg.label_fraction`` of the training patients."""
    if cfg.format == "synthetic":
        fmt, root = cfg.synthetic_format, synthetic_root(cfg)
    else:
        fmt, root = cfg.format, Path(cfg.root)
    reader = open_reader(fmt, root, on_error=cfg.on_error, id_fallback=cfg.id_fallback)
    simulated = site is not None and num_sites > 1
    records, issues, partition = _split_and_partition(reader, cfg, num_sites if simulated else 1)
    if simulated:
        records = partition.site_records(site, records)
    elif cfg.partition.only_site is not None:  # local-only arm: one site's patients, pooled test split
        members = set(_split_and_partition(reader, cfg, cfg.partition.num_sites)[2].sites[cfg.partition.only_site])
        records = [r for r in records if r.split == "test" or r.patient_id in members]
    by_split = split_records(records)
    train = by_split["train"]
    if fraction_of_train and cfg.label_fraction < 1:
        train = label_fraction(train, cfg.label_fraction, seed=cfg.split_seed)
    if not train:
        where = f"site {site} of {num_sites}" if site is not None else str(root)
        raise EchoDataError.at(root, f"no training records for {where}; check data.root and the partition")
    return SiteData(reader, train, by_split["val"], by_split["test"], list(issues), partition)


_SPLIT_CACHE: dict[tuple, tuple[list[ItemRecord], list[DataIssue], Partition | None]] = {}


def _split_and_partition(reader: EchoReader, cfg: DataConfig,
                         num_sites: int) -> tuple[list[ItemRecord], list[DataIssue], Partition | None]:
    """Scan, split and partition once per process and dataset: a simulation worker serves many
    virtual sites of one dataset, and re-scanning it for each would make a round quadratic in the
    number of sites."""
    key = (reader.format, str(reader.root.resolve()), cfg.on_error, cfg.id_fallback, tuple(cfg.split_fractions),
           cfg.split_seed, repr(cfg.partition), num_sites)
    if key not in _SPLIT_CACHE:
        scan = reader.scan()
        records = assign_splits(scan.records, fractions=cfg.split_fractions, seed=cfg.split_seed)
        partition = None
        if num_sites > 1:
            if IMAGE_INTENSITY in (cfg.partition.key, cfg.partition.label):
                records = with_image_intensity(reader, records)
            partition = partition_patients(records, cfg.partition.method, num_sites, **cfg.partition.options())
        if len(_SPLIT_CACHE) >= 8:
            _SPLIT_CACHE.pop(next(iter(_SPLIT_CACHE)))
        _SPLIT_CACHE[key] = (records, list(scan.issues), partition)
    return _SPLIT_CACHE[key]


def with_image_intensity(reader: EchoReader, records: Sequence[ItemRecord]) -> list[ItemRecord]:
    """Records with the :data:`IMAGE_INTENSITY` label computed from their pixels (unreadable items
    keep no value and count as "unlabelled")."""
    out = []
    for record in records:
        try:
            frames = reader.load(record).frames
        except EchoDataError:
            out.append(record)
            continue
        inside = frames[frames > 0]
        value = float(inside.mean()) if inside.size else 0.0
        out.append(dataclasses.replace(record, labels={**record.labels, IMAGE_INTENSITY: value}))
    return out


class PretrainDataset(Dataset):
    """Items of a self-supervised method: one record (``input_unit="sample"``) or one group of
    >= 2 records of a study/patient (``"study"``). Each item is decoded and turned into views by
    ``method.make_views`` with a generator seeded by (seed, epoch, index). Under the skip policy an
    undecodable item yields None (dropped and counted by :meth:`collate`)."""

    def __init__(self, reader: EchoReader, records: Sequence[ItemRecord], method: Any, *, seed: int = 0,
                 on_error: str = "raise") -> None:
        from fedecho.ssl.views import group_by_study

        self.reader = reader
        self.method = method
        self.seed = seed
        self.epoch = 0
        self.on_error = on_error
        self.skipped: list[DataIssue] = []
        if method.input_unit == "sample":
            self.items: list[Any] = list(records)
        else:
            self.items = group_by_study(records, level=getattr(method.cfg, "positive_level", "study"))
        if not self.items:
            raise ValueError(
                f"{method.name} found no training items in {len(records)} records"
                + ("" if method.input_unit == "sample" else
                   " (it needs >= 2 videos per study; set ssl.positive_level=patient or use simclr)")
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any] | None:
        if isinstance(index, tuple):  # (epoch, index) from an EpochSampler: persistent workers
            self.epoch, index = int(index[0]), int(index[1])
        item = self.items[index]
        generator = np.random.default_rng((self.seed, self.epoch, index))
        try:
            if isinstance(item, ItemRecord):
                return self.method.make_views(self.reader.load(item), generator)
            return self.method.make_views([self.reader.load(r) for r in item], generator)
        except EchoDataError as err:
            if self.on_error == "raise":
                raise
            self.skipped.extend(err.issues)
            log.warning("skipping %s", "; ".join(map(str, err.issues)))
            return None

    def collate(self, examples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [e for e in examples if e is not None]
        if not kept:
            return {"num_skipped": torch.tensor(len(examples))}
        batch = self.method.collate(kept)
        batch["num_skipped"] = torch.tensor(len(examples) - len(kept))
        return batch


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, collate: Callable,
                num_workers: int = 0, drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader with a seeded shuffle (deterministic for ``seed``). Workers are persistent; a
    dataset with ``set_epoch`` then gets its epoch through the indices (``EpochSampler``)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    from fedecho.tasks.dataset import EpochSampler

    generator = torch.Generator()
    generator.manual_seed(int(hashlib.sha256(f"loader-{seed}".encode()).hexdigest()[:8], 16))
    if num_workers > 0 and hasattr(dataset, "set_epoch"):
        base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(base, dataset), collate_fn=collate,
                          generator=generator, num_workers=num_workers, drop_last=drop_last, persistent_workers=True,
                          pin_memory=pin_memory)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator,
                      num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0,
                      pin_memory=pin_memory)
