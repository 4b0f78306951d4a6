"""LV segmentation examples from the decoded cache: the mask's label values stored in the cache
entry replace the per-read pixel scan, and uint8 examples (device augmentation) get a uint8 mask
remapped by a uint8 table (or left as is when the label map fixes every value present). The
outputs must equal the scanning, int64 path's, value for value; bad labels must fail as before.
Data: the project's synthetic CAMUS writer and hand-built samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from fedecho.config.ssl import AugmentConfig
from fedecho.config.task import TaskConfig
from fedecho.data.base import open_reader
from fedecho.data.cache import DecodedCache, map_values
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import Sample
from fedecho.data.synthetic import synthesize
from fedecho.tasks import TaskDataset, build_task
from fedecho.tasks.frames import keep_uint8
from fedecho.transforms.batched import AUGMENT_KEY
from fedecho.transforms.presets import build_transform

S = 32
CLASSES = [None, ("lv_cavity",), ("myocardium", "left_atrium")]


@pytest.fixture(scope="module")
def camus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camus") / "data"
    synthesize("camus", root, patients=3, seed=0, image_size=40)
    return root


class _Unknown:
    """A reader that forgets ``label_values``: the path that scans the mask's pixels."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def load(self, record) -> Sample:
        return dataclasses.replace(self.reader.load(record), label_values={})


def _task(classes):
    return build_task(TaskConfig(name="lv_seg", image_size=(S, S), classes=classes))


@pytest.mark.parametrize("classes", CLASSES)
def test_device_path_examples_equal_the_scanning_int64_path(camus, tmp_path, classes):
    reader = open_reader("camus", camus)
    records = sorted(reader.scan().records, key=lambda r: r.item_id)
    cache = DecodedCache(reader, tmp_path / "cache", (S, S))
    task = _task(classes)
    transform = build_transform("seg_train", AugmentConfig(image_size=S))
    fast = TaskDataset(cache, records, task, device_augment=transform, seed=3)
    slow = TaskDataset(_Unknown(cache), records, task, device_augment=transform, seed=3)
    assert len(fast) > 4
    stacks = 0
    for i in range(len(fast)):
        a, b = fast[i], slow[i]
        assert a.keys() == b.keys() and AUGMENT_KEY in a
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
            else:
                assert value == b[key]
        # the mask as before this change: int64 table lookup, then the loader's uint8 cast
        record, key = fast.examples[i]
        raw = np.asarray(cache.load(records[record]).labels["mask"])
        if raw.ndim == 3:  # a half sequence: the example's traced frame (drawn when the key is None)
            raw = raw[int(fast.generators(i)[0].integers(len(raw))) if key is None else key]
            stacks += 1
        assert a["mask"].dtype == torch.uint8
        assert np.array_equal(a["mask"].numpy(), task.lut[raw.astype(np.int64)].astype(np.uint8))
    assert stacks  # the synthetic CAMUS has half sequences: (K, H, W) value lists are used too


@pytest.mark.parametrize("classes", CLASSES)
def test_float_examples_keep_their_int64_mask(camus, tmp_path, classes):
    reader = open_reader("camus", camus)
    record = next(r for r in reader.scan().records if "mask" in r.files)
    cached = DecodedCache(reader, tmp_path / "cache", (S, S)).load(record)
    task = _task(classes)
    rng = np.random.default_rng(0)
    fast = task.make_example(cached, None, rng)
    slow = task.make_example(dataclasses.replace(cached, label_values={}), None, rng)
    assert fast["mask"].dtype == np.int64 and np.array_equal(fast["mask"], slow["mask"])
    with keep_uint8():
        small = task.make_example(cached, None, rng)
    assert small["mask"].dtype == np.uint8 and np.array_equal(small["mask"], fast["mask"])
    assert small["image"].dtype == np.uint8


def test_cache_entry_stores_the_mask_values(camus, tmp_path):
    reader = open_reader("camus", camus)
    record = next(r for r in reader.scan().records if "mask" in r.files)
    cache = DecodedCache(reader, tmp_path / "cache", (S, S))
    cache.load(record)
    sample = DecodedCache(reader, tmp_path / "cache", (S, S)).load(record)  # read back from disk
    assert sample.label_values["mask"] == sorted(np.unique(sample.labels["mask"]).tolist())
    assert map_values(np.array([[[0, 3], [3, 0]], [[1, 1], [1, 2]]])) == [[0, 3], [1, 2]]


def _image_sample(mask: np.ndarray, values) -> Sample:
    frames = np.full(mask.shape, 90, np.uint8)
    return Sample(source="camus", patient_id="p1", study_id="s1", item_id="p1_4CH_ED", frames=frames,
                  labels={"mask": mask}, path="/data/p1_4CH_ED.nii.gz", label_values=values)


@pytest.mark.parametrize("known", [False, True])
def test_labels_outside_the_mask_set_fail_with_the_same_message(known):
    mask = np.zeros((S, S), np.uint8)
    mask[4:8, 4:8] = 5
    sample = _image_sample(mask, {"mask": map_values(mask)} if known else {})
    message = r"mask has labels \{0, 5\}; expected a subset of \{0, 1, 2, 3\}"
    with keep_uint8(), pytest.raises(EchoDataError, match=message):
        _task(None).make_example(sample, None, np.random.default_rng(0))


def test_stack_values_are_checked_per_traced_frame():
    good = np.zeros((S, S), np.uint8)
    good[8:20, 8:20] = 1
    bad = good.copy()
    bad[0, 0] = 7
    masks = np.stack([good, bad])
    frames = np.full((5, S, S), 80, np.uint8)
    sample = Sample(source="echonet-dynamic", patient_id="p", study_id="s", item_id="v", frames=frames,
                    labels={"mask": masks, "mask_frames": [1, 3]}, path="/data/v.avi",
                    label_values={"mask": map_values(masks)})
    task = build_task(TaskConfig(name="lv_seg", image_size=(S, S), classes=("lv_cavity",)))
    with keep_uint8():
        example = task.make_example(sample, 0, np.random.default_rng(0))
        assert example["mask"].dtype == np.uint8 and np.array_equal(example["mask"], good)
        with pytest.raises(EchoDataError, match=r"\{0, 1, 7\}"):
            task.make_example(sample, 1, np.random.default_rng(0))
