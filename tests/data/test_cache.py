"""The site-side decoded cache: decode once, read uint8 arrays at the training size; a changed file
is decoded again; corrupt files are skipped and counted exactly as without the cache; one command
clears it. Data: the project's synthetic EchoNet-Dynamic (AVI) and CAMUS (NIfTI) writers."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedecho.cli.main import main
from fedecho.config.task import TaskConfig
from fedecho.data.base import open_reader
from fedecho.data.cache import DecodedCache, clear_cache
from fedecho.data.synthetic import synthesize
from fedecho.data.video import read_avi, write_avi
from fedecho.tasks import TaskDataset, build_task, collate_examples
from fedecho.tasks.frames import resize_image, resize_mask, to_unit_float

SIZE = (32, 32)


@pytest.fixture(scope="module")
def echonet_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("echonet") / "data"
    synthesize("echonet-dynamic", root, patients=4, seed=0, image_size=48)
    return root


@pytest.fixture(scope="module")
def camus_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camus") / "data"
    synthesize("camus", root, patients=2, seed=0, image_size=40)
    return root


@pytest.fixture
def echonet(echonet_src, tmp_path) -> Path:
    return Path(shutil.copytree(echonet_src, tmp_path / "echonet"))


def _records(reader):
    return sorted(reader.scan().records, key=lambda r: r.item_id)


def test_cold_then_cached_reads_the_same_uint8_arrays_at_the_training_size(camus_src, tmp_path):
    reader = open_reader("camus", camus_src)
    record = next(r for r in _records(reader) if "mask" in r.files and "phase" in r.labels)
    decoded = reader.load(record)
    cold = DecodedCache(reader, tmp_path / "cache", SIZE)
    first = cold.load(record)
    assert (cold.misses, cold.hits) == (1, 0)
    warm = DecodedCache(open_reader("camus", camus_src), tmp_path / "cache", SIZE)  # a later run
    second = warm.load(record)
    assert (warm.misses, warm.hits) == (0, 1)
    assert isinstance(second.frames, np.memmap) and second.frames.dtype == np.uint8
    assert np.array_equal(first.frames, second.frames) and second.frames.shape == SIZE
    expected = resize_image(to_unit_float(decoded.frames), SIZE) * 255
    assert np.abs(second.frames.astype(np.float64) - expected).max() <= 0.5 + 1e-3  # rounded grey levels
    assert np.array_equal(second.labels["mask"], resize_mask(decoded.labels["mask"], SIZE))
    h, w = decoded.frames.shape
    assert second.spacing == pytest.approx((decoded.spacing[0] * h / SIZE[0], decoded.spacing[1] * w / SIZE[1]))
    assert second.labels["view"] == decoded.labels["view"] and second.item_id == record.item_id


def test_a_changed_file_is_decoded_again(echonet, tmp_path):
    reader = open_reader("echonet-dynamic", echonet)
    record = _records(reader)[0]
    before = DecodedCache(reader, tmp_path / "cache", SIZE).load(record)
    video = Path(record.files["video"])
    frames, fps = read_avi(video)
    stat = video.stat()
    write_avi(video, (255 - frames).astype(np.uint8), fps=fps)  # new content ...
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... with the old modification time
    cache = DecodedCache(open_reader("echonet-dynamic", echonet), tmp_path / "cache", SIZE)
    after = cache.load(record)
    assert cache.misses == 1
    assert np.abs(after.frames.astype(int) + before.frames.astype(int) - 255).mean() < 8  # the inverted video
    unchanged = _records(reader)[1]
    cache.load(unchanged)
    DecodedCache(reader, tmp_path / "cache", SIZE).load(unchanged)
    assert cache.misses == 2  # first sight of the second video only
    assert DecodedCache(reader, tmp_path / "cache", (16, 16)).key(unchanged) != cache.key(unchanged)  # by size


def _skip_counts(dataset: TaskDataset) -> tuple[int, int]:
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_examples)
    batches = list(loader) + list(loader)  # two epochs
    return sum(int(b["num_skipped"]) for b in batches), sum(len(b.get("clip", [])) for b in batches)


def test_corrupt_files_are_skipped_and_counted_exactly_as_without_cache(echonet, tmp_path):
    reader = open_reader("echonet-dynamic", echonet, on_error="skip")
    records = _records(reader)
    Path(records[1].files["video"]).write_bytes(b"RIFF" + b"\0" * 400)  # not an AVI any more
    task = build_task(TaskConfig(name="ef", image_size=SIZE, clip_length=4))
    plain = TaskDataset(reader, records, task, on_error="skip", cache_size=0)
    cache = DecodedCache(reader, tmp_path / "cache", SIZE)
    cached = TaskDataset(cache, records, task, on_error="skip", cache_size=0)
    assert _skip_counts(cached) == _skip_counts(plain) == (2, 6)
    assert [str(i) for i in cached.skipped] == [str(i) for i in plain.skipped]
    assert records[1].item_id in str(cached.skipped[0])
    assert not cache.entry(records[1]).exists() and cache.entry(records[0]).exists()


def test_task_examples_from_the_cache_match_the_decoded_path(echonet, tmp_path):
    reader = open_reader("echonet-dynamic", echonet)
    records = _records(reader)
    task = build_task(TaskConfig(name="ef", image_size=SIZE, clip_length=8))
    plain = TaskDataset(reader, records, task, seed=1)
    cached = TaskDataset(DecodedCache(reader, tmp_path / "cache", SIZE), records, task, seed=1)
    for i in range(len(records)):
        a, b = plain[i], cached[i]
        assert torch.equal(a["target"], b["target"])
        assert (a["clip"] - b["clip"]).abs().max() <= 0.5 / 255 + 1e-6  # the cache rounds to grey levels


def test_workers_reopen_the_memory_maps(echonet, tmp_path):
    reader = open_reader("echonet-dynamic", echonet)
    records = _records(reader)
    cache = DecodedCache(reader, tmp_path / "cache", SIZE)
    for record in records:
        cache.load(record)
    assert len(pickle.dumps(cache)) < 20_000  # open maps are not pickled with it
    task = build_task(TaskConfig(name="ef", image_size=SIZE, clip_length=4))
    dataset = TaskDataset(cache, records, task, seed=2)
    serial = list(DataLoader(dataset, batch_size=2, collate_fn=collate_examples))
    parallel = list(DataLoader(dataset, batch_size=2, collate_fn=collate_examples, num_workers=1))
    assert all(torch.equal(a["clip"], b["clip"]) for a, b in zip(serial, parallel, strict=True))


def test_cache_clear_removes_only_cache_entries(echonet, tmp_path, capsys):
    reader = open_reader("echonet-dynamic", echonet)
    folder = tmp_path / "cache"
    cache = DecodedCache(reader, folder, SIZE)
    for record in _records(reader):
        cache.load(record)
    keep = folder / "notes.txt"
    keep.write_text("not the cache's")
    assert main(["data", "cache-clear", "--dir", str(folder)]) == 0
    assert "removed 4 decoded item(s)" in capsys.readouterr().out
    assert keep.read_text() == "not the cache's"
    assert not any(p.name == "frames.npy" for p in folder.rglob("*"))
    assert clear_cache(folder) == (0, 0) and clear_cache(tmp_path / "absent") == (0, 0)
    again = DecodedCache(reader, folder, SIZE)
    again.load(_records(reader)[0])
    assert again.misses == 1  # rebuilt on the next pass


def test_persistent_workers_see_each_new_epoch(echonet, tmp_path):
    from fedecho.engine.data import make_loader

    reader = DecodedCache(open_reader("echonet-dynamic", echonet), tmp_path / "cache", SIZE)
    records = _records(reader)
    task = build_task(TaskConfig(name="ef", image_size=SIZE, clip_length=4))

    def epochs(workers: int) -> list[torch.Tensor]:
        dataset = TaskDataset(reader, records, task, seed=5)
        loader = make_loader(dataset, batch_size=4, shuffle=False, seed=0, collate=collate_examples,
                             num_workers=workers)
        out = []
        for epoch in (1, 2):
            dataset.set_epoch(epoch)
            out.append(torch.cat([b["clip"] for b in loader]))
        return out

    serial, persistent = epochs(0), epochs(1)
    assert all(torch.equal(a, b) for a, b in zip(serial, persistent, strict=True))  # the same draws per epoch
    assert not torch.equal(persistent[0], persistent[1])  # epoch 2 draws new clips in the worker


def test_reopened_entries_read_the_same_arrays_and_a_cleared_entry_is_decoded_again(camus_src, tmp_path):
    reader = open_reader("camus", camus_src)
    records = [r for r in _records(reader) if "mask" in r.files]
    cache = DecodedCache(reader, tmp_path / "cache", SIZE, max_open=1)  # every other load reopens
    first = [cache.load(r) for r in records]
    again = [cache.load(r) for r in records]  # reopened from the known layout, no header parsing
    assert cache.misses == len(records) and cache.hits == len(records)
    for a, b in zip(first, again, strict=True):
        assert isinstance(a.frames, np.memmap) and not b.frames.flags.writeable
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels["mask"], b.labels["mask"])
        assert a.labels["mask"].dtype == b.labels["mask"].dtype and a.label_values == b.label_values
    clear_cache(tmp_path / "cache")
    cache.load(records[1])  # not open: its files are gone, so it is decoded and stored again
    third = cache.load(records[0])
    assert cache.misses == len(records) + 2 and np.array_equal(third.frames, first[0].frames)
