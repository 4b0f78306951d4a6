"""From reader records to torch batches for one task: :class:`TaskDataset` and its collate.

The index is built from record labels only (``task.example_keys``), so a site's dataset is known
before any pixel is decoded. ``__getitem__`` decodes (with a small LRU cache, so the K traced
frames of one video decode it once), builds the example with a generator seeded by
``(seed, epoch, index)`` (same seed and epoch -> same example, whatever the worker or order), applies
the optional transform, and returns tensors.

With ``device_augment`` (``train.augment_on=device``) the example keeps its uint8 pixels (masks
uint8 too) and, instead of applying that preset, only draws its parameters from the same
generator (:func:`fedecho.transforms.batched.sample_params`) into the ``augment`` entry; the
consumer applies them as one batched op after the transfer. ``reader`` may be a
:class:`fedecho.data.cache.DecodedCache`, which serves decoded uint8 arrays at the training size.

Error policy (``on_error``), for bad *data* (:class:`EchoDataError`) only; code errors always raise:

- ``"raise"``: labels that cannot be indexed are all collected and raised as one error at
  construction; a decoding error propagates with its file name.
- ``"skip"``: such records / examples are left out, logged and recorded in ``skipped``; a sample
  that fails to decode gives ``None`` and :func:`collate_examples` drops it, counting it in the
  batch's ``num_skipped`` (the count survives DataLoader worker processes), so one corrupt video
  does not kill a round.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from fedecho.data.base import EchoReader, OnError
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord, Sample
from fedecho.tasks.base import Task
from fedecho.tasks.frames import keep_uint8

__all__ = ["EpochSampler", "TaskDataset", "collate_examples", "concat_batches", "is_empty_batch"]

log = logging.getLogger(__name__)

Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]

#: Batch key holding how many examples of the batch were dropped (skip mode).
NUM_SKIPPED = "num_skipped"


class TaskDataset(Dataset):
    """Examples of ``task`` from ``records`` decoded by ``reader``.

    ``examples[i] = (record_index, key)`` for every record and every key of
    ``task.example_keys(record)``. ``transform(example, generator)`` may change any array of the
    example (it receives numpy arrays and a ``np.random.Generator`` of its own).
    """

    def __init__(
        self,
        reader: EchoReader,
        records: Sequence[ItemRecord],
        task: Task,
        transform: Transform | None = None,
        seed: int = 0,
        cache_size: int = 4,
        on_error: OnError = "raise",
        device_augment: Any | None = None,
    ) -> None:
        if transform is not None and device_augment is not None:
            raise ValueError("give either transform (applied here) or device_augment (applied on the device), not both")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.reader = reader
        self.records = list(records)
        self.task = task
        self.transform = transform
        self.device_augment = device_augment
        self.seed = seed
        self.epoch = 0
        self.cache_size = cache_size
        self.on_error: OnError = on_error
        #: every data problem met (label indexing at construction, decoding in this process)
        self.skipped: list[DataIssue] = []
        self._cache: OrderedDict[int, Sample] = OrderedDict()
        self.examples: list[tuple[int, Hashable]] = []
        issues: list[DataIssue] = []
        for i, record in enumerate(self.records):
            try:
                keys = task.example_keys(record)
            except EchoDataError as err:
                issues.extend(err.issues)
                continue
            self.examples.extend((i, key) for key in keys)
        if issues:
            if on_error == "raise":
                raise EchoDataError(issues, context=f"task {task.name!r}: labels that cannot be used")
            self._skip(issues)
        used = {i for i, _ in self.examples}
        #: records that yield no example (labels missing or outside the configured label set)
        self.num_records_without_examples = len(self.records) - len(used)

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch so that random frames, clips and augmentations are drawn anew."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.examples)

    def generators(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        """The (example, transform) generators of example ``index`` at the current epoch."""
        return (
            np.random.default_rng([self.seed, self.epoch, index, 0]),
            np.random.default_rng([self.seed, self.epoch, index, 1]),
        )

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any] | None:
        if isinstance(index, tuple):  # (epoch, index) from an EpochSampler: persistent workers
            self.epoch, index = int(index[0]), int(index[1])
        record_index, key = self.examples[index]
        example_rng, transform_rng = self.generators(index)
        try:
            sample = self._load(record_index)
            if self.device_augment is None:
                example = self.task.make_example(sample, key, example_rng)
            else:
                with keep_uint8():
                    example = self.task.make_example(sample, key, example_rng)
        except EchoDataError as err:
            if self.on_error == "raise":
                raise
            self._skip(err.issues)
            return None
        if self.transform is not None:
            example = self.transform(example, transform_rng)
        elif self.device_augment is not None:
            example = self._raw_example(example, transform_rng)
        return _to_tensors(example)

    def _raw_example(self, example: dict[str, Any], generator: np.random.Generator) -> dict[str, Any]:
        from fedecho.transforms.batched import AUGMENT_KEY, sample_params
        from fedecho.transforms.compose import spatial_size

        example = dict(example)
        example[AUGMENT_KEY] = sample_params(self.device_augment, spatial_size(example), generator)
        mask = example.get("mask")
        if (isinstance(mask, np.ndarray) and mask.dtype != np.uint8 and mask.size
                and 0 <= mask.min() and mask.max() <= 255):
            example["mask"] = mask.astype(np.uint8)
        return example

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # decoded samples are not shipped to DataLoader workers
        return state

    def _load(self, record_index: int) -> Sample:
        if record_index in self._cache:
            self._cache.move_to_end(record_index)
            return self._cache[record_index]
        sample = self.reader.load(self.records[record_index])
        if self.cache_size:
            self._cache[record_index] = sample
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return sample

    def _skip(self, issues: list[DataIssue]) -> None:
        self.skipped.extend(issues)
        for issue in issues:
            log.warning("task %s: skipping %s", self.task.name, issue)


class EpochSampler(Sampler):
    """Yields ``(dataset.epoch, index)`` for each index of ``sampler``, read when an epoch starts in
    the main process, so that persistent DataLoader workers (which hold their own copy of the
    dataset) see :meth:`TaskDataset.set_epoch` too and draw new clips and augmentations."""

    def __init__(self, sampler: Sampler, dataset: Any) -> None:
        self.sampler = sampler
        self.dataset = dataset

    def __iter__(self):
        epoch = int(self.dataset.epoch)
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def _to_tensors(example: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in example.items():
        if isinstance(value, Tensor | str):
            out[key] = value
        elif isinstance(value, np.ndarray):
            # a read-only view (of the decoded cache's memory map) is copied: tensors are writable
            out[key] = torch.from_numpy(np.ascontiguousarray(value) if value.flags.writeable else np.array(value))
        elif isinstance(value, bool | int | np.integer):
            out[key] = torch.tensor(int(value), dtype=torch.int64)
        elif isinstance(value, float | np.floating):
            out[key] = torch.tensor(float(value), dtype=torch.float32)
        else:
            raise TypeError(f"example key {key!r} holds {type(value).__name__}; expected an array, number or str")
    return out


def collate_examples(examples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack examples into a batch; ``None`` (skipped) examples are dropped and counted.

    Tensors stack along a new batch dim; strings become lists. The batch always holds
    ``num_skipped`` (int64 scalar tensor). A batch whose examples were all skipped holds only
    that key (see :func:`is_empty_batch`).
    """
    kept = [e for e in examples if e is not None]
    batch: dict[str, Any] = {NUM_SKIPPED: torch.tensor(len(examples) - len(kept), dtype=torch.int64)}
    if not kept:
        return batch
    keys = set(kept[0])
    for i, example in enumerate(kept[1:], start=1):
        if set(example) != keys:
            raise ValueError(f"example {i} has keys {sorted(example)}, example 0 has {sorted(keys)}")
    for key in kept[0]:
        values = [e[key] for e in kept]
        if isinstance(values[0], str):
            batch[key] = list(values)
        else:
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot stack {key!r}: shapes {sorted(shapes)} differ; resize examples to one "
                    f"image_size / clip_length (TaskConfig)"
                )
            batch[key] = torch.stack(values)
    return batch


def is_empty_batch(batch: Mapping[str, Any]) -> bool:
    """True when every example of the batch was skipped."""
    return set(batch) <= {NUM_SKIPPED}


def concat_batches(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate batches (e.g. a whole evaluation set) along the batch dim; sums ``num_skipped``.

    Feed the result and the concatenated outputs to ``task.metrics``.
    """
    non_empty = [b for b in batches if not is_empty_batch(b)]
    out: dict[str, Any] = {
        NUM_SKIPPED: torch.tensor(sum(int(b.get(NUM_SKIPPED, 0)) for b in batches), dtype=torch.int64)
    }
    if not non_empty:
        return out
    for key in non_empty[0]:
        if key == NUM_SKIPPED:
            continue
        values = [b[key] for b in non_empty]
        if isinstance(values[0], list):
            out[key] = [v for value in values for v in value]
        else:
            out[key] = torch.cat([v.detach().cpu() for v in values])
    return out
