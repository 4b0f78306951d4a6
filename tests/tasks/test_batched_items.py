"""``TaskDataset.__getitems__``: a batch assembled in one buffer must equal the per-example path
(``collate_examples([dataset[i] for i in indices])``) value for value — pixels, masks, augmentation
draws, ids, skips — in one process and from DataLoader workers, for the device-augmentation path
(uint8) and the CPU-augmentation path (float). Data: the project's synthetic CAMUS writer, read
through the decoded cache, and an in-test reader whose listed items fail like corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fedecho.config.ssl import AugmentConfig
from fedecho.config.task import TaskConfig
from fedecho.data.base import open_reader
from fedecho.data.cache import DecodedCache
from fedecho.data.errors import EchoDataError
from fedecho.data.synthetic import synthesize
from fedecho.engine.data import make_loader
from fedecho.privacy.dpsgd import _EmptySafeCollate
from fedecho.tasks import TaskDataset, build_task, collate_examples, is_empty_batch
from fedecho.tasks import dataset as dataset_module
from fedecho.tasks.dataset import ExampleBatch
from fedecho.transforms.batched import AUGMENT_KEY
from fedecho.transforms.presets import build_transform

S = 32


@pytest.fixture(scope="module")
def camus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camus") / "data"
    synthesize("camus", root, patients=4, seed=0, image_size=40)
    return root


class _Corrupt:
    """The cache's reader, except that ``bad`` items fail to decode like a corrupt file."""

    def __init__(self, reader, bad: set[str]) -> None:
        self.reader, self.bad = reader, bad

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def load(self, record):
        if record.item_id in self.bad:
            raise EchoDataError.at(record.path, "NIfTI header is truncated")
        return self.reader.load(record)


class _PerExample(Dataset):
    """The dataset without ``__getitems__``: DataLoader builds its batches one example at a time."""

    def __init__(self, dataset: TaskDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.dataset.epoch


def _dataset(camus: Path, cache_dir: Path, *, device: bool, bad: tuple[str, ...] = (), **kwargs) -> TaskDataset:
    reader = open_reader("camus", camus)
    records = sorted(reader.scan().records, key=lambda r: r.item_id)
    cache = DecodedCache(reader, cache_dir, (S, S))
    source = _Corrupt(cache, set(bad)) if bad else cache
    task = build_task(TaskConfig(name="lv_seg", image_size=(S, S)))
    transform = build_transform("seg_train", AugmentConfig(image_size=S))
    if device:
        return TaskDataset(source, records, task, device_augment=transform, seed=7, **kwargs)
    return TaskDataset(source, records, task, transform=transform, seed=7, **kwargs)


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            other = b[key]
            assert value.dtype == other.dtype and value.shape == other.shape, key
            assert value.is_contiguous() and torch.equal(value, other), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("device", [True, False], ids=["uint8-device-augmentation", "float-cpu-augmentation"])
def test_assembled_batch_equals_the_per_example_collate(camus, tmp_path, device):
    data = _dataset(camus, tmp_path / "cache", device=device)
    assert len(data) >= 12
    order = np.random.default_rng(0).permutation(len(data)).tolist()
    for epoch in (1, 2):
        data.set_epoch(epoch)
        for start in range(0, len(order), 5):
            indices = order[start:start + 5]
            items = data.__getitems__(indices)
            assert isinstance(items, ExampleBatch) and len(items) == len(indices)
            batch = collate_examples(items)
            _assert_same(batch, collate_examples([data[i] for i in indices]))
            # every number of the batch lives in one buffer: one storage to send from a worker
            storages = {v.untyped_storage().data_ptr() for v in batch.values() if isinstance(v, torch.Tensor)}
            assert len(storages) == 1
            # (epoch, index) pairs from an EpochSampler give the same batch
            _assert_same(collate_examples(data.__getitems__([(epoch, i) for i in indices])), batch)
    if device:
        assert batch["image"].dtype == torch.uint8 and batch["mask"].dtype == torch.uint8
        assert batch[AUGMENT_KEY].dtype == torch.float64
    else:
        assert batch["image"].dtype == torch.float32 and batch["mask"].dtype == torch.int64


def test_corrupt_items_are_skipped_and_counted_as_per_example(camus, tmp_path):
    data = _dataset(camus, tmp_path / "cache", device=True, on_error="skip")
    bad = {data.records[data.examples[i][0]].item_id for i in (1, 4)}
    batched = _dataset(camus, tmp_path / "cache", device=True, on_error="skip", bad=tuple(bad))
    single = _dataset(camus, tmp_path / "cache", device=True, on_error="skip", bad=tuple(bad))
    skipped = [i for i in range(len(data)) if data.records[data.examples[i][0]].item_id in bad]
    indices = list(range(8))
    batch = collate_examples(batched.__getitems__(indices))
    _assert_same(batch, collate_examples([single[i] for i in indices]))
    assert int(batch["num_skipped"]) == len([i for i in indices if i in skipped]) >= 2
    assert len(batch["item_id"]) == len(indices) - int(batch["num_skipped"])
    assert [str(i) for i in batched.skipped] == [str(i) for i in single.skipped]
    assert all(name in str(batched.skipped) for name in bad)
    only_bad = collate_examples(batched.__getitems__(skipped[:2]))
    assert is_empty_batch(only_bad) and int(only_bad["num_skipped"]) == 2
    with pytest.raises(EchoDataError, match="NIfTI header is truncated"):
        _dataset(camus, tmp_path / "cache", device=True, bad=tuple(bad)).__getitems__(indices)


def test_workers_send_the_same_batches_in_shared_memory(camus, tmp_path):
    data = _dataset(camus, tmp_path / "cache", device=True)
    per_example = _PerExample(_dataset(camus, tmp_path / "cache", device=True))
    loaders = [make_loader(d, batch_size=4, shuffle=True, seed=1, collate=collate_examples, num_workers=w)
               for d, w in ((data, 1), (per_example, 1))]
    draws = []
    for epoch in (1, 2):
        data.set_epoch(epoch), per_example.set_epoch(epoch)
        batches, expected = list(loaders[0]), list(loaders[1])
        assert len(batches) == len(expected) > 2
        for a, b in zip(batches, expected, strict=True):
            _assert_same(a, b)
            assert a["image"].is_shared()  # made in the worker's shared memory, not copied into it
        draws.append(torch.cat([b[AUGMENT_KEY] for b in batches]))
    assert not torch.equal(draws[0], draws[1])  # the persistent worker drew epoch 2 anew


def test_the_example_generator_is_made_only_when_drawn_from(camus, tmp_path, monkeypatch):
    data = _dataset(camus, tmp_path / "cache", device=True)
    made: list[list[int]] = []
    real = np.random.default_rng

    def counting(seed=None):
        made.append(list(seed))
        return real(seed)

    monkeypatch.setattr(dataset_module.np.random, "default_rng", counting)
    still = next(i for i, (r, key) in enumerate(data.examples) if key is None
                 and np.asarray(data.reader.load(data.records[r]).labels["mask"]).ndim == 2)
    data[still]
    assert made == [[7, 0, still, 1]]  # the transform's generator only: a still image draws no frame
    made.clear()
    # a half sequence whose traced frame is drawn: the lazy generator gives the eager one's draw
    drawn = next((i for i, (r, key) in enumerate(data.examples) if key is None
                  and np.asarray(data.reader.load(data.records[r]).labels["mask"]).ndim == 3), None)
    assert drawn is not None  # the synthetic CAMUS has half sequences
    example = data[drawn]
    assert [7, 0, drawn, 0] in made
    record = data.reader.load(data.records[data.examples[drawn][0]])
    k = int(real([7, 0, drawn, 0]).integers(len(record.labels["mask"])))
    assert torch.equal(example["mask"], torch.from_numpy(np.array(record.labels["mask"][k])))


def test_other_collates_and_mixed_examples_take_the_per_example_path(camus, tmp_path):
    data = _dataset(camus, tmp_path / "cache", device=True)
    items = data.__getitems__([0, 1, 2])
    assert [e["item_id"] for e in items] == [data[i]["item_id"] for i in range(3)]  # per-example tensors
    assert torch.equal(torch.stack([e["image"] for e in items[0:2]]), collate_examples(items)["image"][:2])
    assert data.__getitems__([]) == [] and _EmptySafeCollate(collate_examples)(data.__getitems__([])) == {}
    # examples the buffer cannot hold (a tensor, differing shapes) are collated as before, errors included
    mixed = ExampleBatch([{"image": np.zeros((1, 4, 4), np.uint8), "t": torch.ones(2), "item_id": "a"},
                          {"image": np.ones((1, 4, 4), np.uint8), "t": torch.zeros(2), "item_id": "b"}, None])
    batch = collate_examples(mixed)
    assert torch.equal(batch["t"], torch.stack([torch.ones(2), torch.zeros(2)])) and int(batch["num_skipped"]) == 1
    ragged = ExampleBatch([{"image": np.zeros((1, 4, 4), np.float32)}, {"image": np.zeros((1, 5, 4), np.float32)}])
    with pytest.raises(ValueError, match="shapes .* differ; resize examples"):
        collate_examples(ragged)
    numbers = ExampleBatch([{"ef": 61.5, "label": 2, "flag": True}, {"ef": np.float64(40.25), "label": np.int32(0),
                                                                    "flag": False}])
    _assert_same(collate_examples(numbers), collate_examples(list(numbers)))
    assert collate_examples(numbers)["ef"].dtype == torch.float32
