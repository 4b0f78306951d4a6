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

**Batches.** A DataLoader asks ``__getitems__`` for a whole batch of indices (torch calls it when
present): the examples are built as numpy arrays and copied once into **one** buffer holding every
field of the batch (uint8 images and masks stay uint8), allocated in shared memory inside a
DataLoader worker, so the batch crosses to the main process as one shared storage (one file
descriptor) instead of one per field, with no per-example tensors and no ``torch.stack``.
:func:`collate_examples` returns that batch as it is; any other collate sees the examples one by
one. The batch equals ``collate_examples([dataset[i] for i in indices])`` value for value (same
generators, same draws, same skips), which ``tests/tasks/test_batched_items.py`` checks. The
example generator is created only when the task draws from it (a still image's never does).

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
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, get_worker_info

from fedecho.data.base import EchoReader, OnError
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord, Sample
from fedecho.tasks.base import Task
from fedecho.tasks.frames import keep_uint8

__all__ = ["EpochSampler", "ExampleBatch", "TaskDataset", "collate_examples", "concat_batches", "is_empty_batch"]

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
        example = self._example(index)
        return None if example is None else _to_tensors(example)

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> Sequence[dict[str, Any] | None]:
        """The examples at ``indices`` assembled into one batch (see the module docstring): an
        :class:`ExampleBatch`, or ``[]`` for no index."""
        if len(indices) == 0:
            return []
        return ExampleBatch([self._example(index) for index in indices])

    def _example(self, index: int | tuple[int, int]) -> dict[str, Any] | None:
        """Example ``index`` as numpy arrays, numbers and strings; None when skipped."""
        if isinstance(index, tuple):  # (epoch, index) from an EpochSampler: persistent workers
            self.epoch, index = int(index[0]), int(index[1])
        record_index, key = self.examples[index]
        # the example generator is made on first use; the transform's always (it is always used
        # in training, and transforms check its type)
        example_rng = _LazyGenerator([self.seed, self.epoch, index, 0])
        transform_rng = np.random.default_rng([self.seed, self.epoch, index, 1])
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
        return example

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


class _LazyGenerator:
    """``np.random.default_rng(words)``, made on the first draw: the same stream as the eager
    generator, and nothing paid when the task never draws (seeding is most of a generator's cost)."""

    __slots__ = ("_generator", "_words")

    def __init__(self, words: list[int]) -> None:
        self._words = words
        self._generator: np.random.Generator | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._generator is None:
            self._generator = np.random.default_rng(self._words)
        return getattr(self._generator, name)


class ExampleBatch(Sequence):
    """The examples of one :meth:`TaskDataset.__getitems__` call (``None`` where skipped).

    :attr:`batch` is what :func:`collate_examples` makes of them, assembled in one buffer (see the
    module docstring); item ``i`` is example ``i`` as tensors, so another collate still works."""

    def __init__(self, examples: Sequence[dict[str, Any] | None]) -> None:
        self._examples = list(examples)
        self._batch: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [None if e is None else _to_tensors(e) for e in self._examples[i]]
        example = self._examples[i]
        return None if example is None else _to_tensors(example)

    @property
    def batch(self) -> dict[str, Any]:
        if self._batch is None:
            batch = _assemble(self._examples)
            self._batch = collate_examples(list(self)) if batch is None else batch
        return self._batch


#: numpy dtypes a batch buffer holds, and their torch views (others take the per-example path)
_TORCH_DTYPES = {np.dtype(k): v for k, v in [
    (np.bool_, torch.bool), (np.uint8, torch.uint8), (np.int8, torch.int8), (np.int16, torch.int16),
    (np.int32, torch.int32), (np.int64, torch.int64), (np.float16, torch.float16),
    (np.float32, torch.float32), (np.float64, torch.float64)]}
_ALIGN = 64  # bytes: every field of a batch buffer starts on a cache line


def _field(value: Any) -> tuple[np.dtype, tuple[int, ...]] | str | None:
    """How :func:`_to_tensors` turns ``value`` into a batch field: (dtype, shape) of its tensor,
    ``"str"`` for a string, None for anything else (tensors, unknown types: per-example path)."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, np.ndarray):
        return (value.dtype, value.shape) if value.dtype in _TORCH_DTYPES else None
    if isinstance(value, bool | int | np.integer):
        return np.dtype(np.int64), ()
    if isinstance(value, float | np.floating):
        return np.dtype(np.float32), ()
    return None


def _assemble(examples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``collate_examples([_to_tensors(e) for e in examples])`` with every number of the batch in
    one buffer (shared memory inside a DataLoader worker): one copy per example field, no per-example
    tensors. None when the examples do not all have the same keys, kinds, dtypes and shapes (the
    per-example path then collates them, or raises its error)."""
    kept = [e for e in examples if e is not None]
    fields = {key: _field(value) for key, value in kept[0].items()} if kept else {}
    if any(kind is None for kind in fields.values()):
        return None
    for example in kept[1:]:
        if example.keys() != fields.keys() or any(_field(example[k]) != kind for k, kind in fields.items()):
            return None
    layout, offset = [], _ALIGN  # bytes [0, 8): num_skipped
    for key, kind in fields.items():
        if kind != "str":
            dtype, shape = kind
            size = len(kept) * math.prod(shape) * dtype.itemsize
            layout.append((key, dtype, shape, offset, size))
            offset += -(-size // _ALIGN) * _ALIGN
    if get_worker_info() is not None:  # made in shared memory: sent to the main process as is
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(offset))
    else:
        buffer = torch.empty(offset, dtype=torch.uint8)
    flat = buffer.numpy()
    flat[:8].view(np.int64)[0] = len(examples) - len(kept)
    batch: dict[str, Any] = {NUM_SKIPPED: buffer[:8].view(torch.int64)[0]}
    places = {key: (dtype, shape, start, size) for key, dtype, shape, start, size in layout}
    for key, kind in fields.items():
        if kind == "str":
            batch[key] = [e[key] for e in kept]
            continue
        dtype, shape, start, size = places[key]
        target = flat[start:start + size].view(dtype).reshape(len(kept), *shape)
        for i, example in enumerate(kept):
            target[i] = example[key]
        batch[key] = buffer[start:start + size].view(_TORCH_DTYPES[dtype]).view(len(kept), *shape)
    return batch


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
    that key (see :func:`is_empty_batch`). An :class:`ExampleBatch` gives its assembled batch.
    """
    if isinstance(examples, ExampleBatch):  # assembled by TaskDataset.__getitems__
        return examples.batch
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
