"""TaskDataset + collate on an in-test reader producing synthetic disks (image, mask, video, calipers)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedecho.config.task import TaskConfig
from fedecho.data.base import EchoReader
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import ItemRecord, Sample, ScanResult
from fedecho.tasks import TaskDataset, build_task, collate_examples, concat_batches, is_empty_batch

H, W = 48, 64  # source size (non-square, so resizing to SIZE x SIZE scales rows and columns differently)
SIZE = 32


def _disk_frame(center: tuple[int, int], radius: float, background: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frame (H, W) with a bright disk, and its mask (1 = disk = LV, 2 = ring around it)."""
    yy, xx = np.mgrid[:H, :W]
    d2 = (yy - center[0]) ** 2 + (xx - center[1]) ** 2
    frame = np.full((H, W), background, np.uint8)
    frame[d2 <= radius**2] = 230
    mask = np.zeros((H, W), np.uint8)
    mask[d2 <= radius**2] = 1
    mask[(d2 > radius**2) & (d2 <= (radius + 3) ** 2)] = 2
    return frame, mask


def _video(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t: background intensity 5·t (identifies the frame), disk radius 6 + t."""
    pairs = [_disk_frame((24, 32), 6 + t, 5 * t) for t in range(num_frames)]
    return np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs])


class DiskReader(EchoReader):
    """Decodes records into synthetic disks; items listed in ``bad`` fail like a corrupt file."""

    format = "test-disks"

    def __init__(self, root: Path, records: list[ItemRecord], bad: tuple[str, ...] = (), spacing=None) -> None:
        super().__init__(root)
        self.records = records
        self.bad = set(bad)
        self.spacing = spacing
        self.loads: Counter[str] = Counter()

    def _scan(self) -> ScanResult:
        return ScanResult(records=list(self.records))

    def load(self, record: ItemRecord) -> Sample:
        self.loads[record.item_id] += 1
        if record.item_id in self.bad:
            raise EchoDataError.at(record.path, "AVI has no decodable frame (empty or truncated file)")
        labels: dict = {}
        if record.files.get("video"):
            frames, masks = _video(int(record.labels.get("num_frames", 10)))
            if "mask_frames" in record.labels:
                labels["mask"] = masks[record.labels["mask_frames"]]
        else:
            frames, labels["mask"] = _disk_frame((20, 30), 8, 20)
        return Sample.from_record(record, frames, labels=labels, spacing=self.spacing)


def _image(item: str, **labels) -> ItemRecord:
    files = {"image": "x", "mask": "y"}
    return ItemRecord("test", item[:4], item[:4], item, f"/site/{item}.nii.gz", "train", labels, files)


def _video_record(item: str, **labels) -> ItemRecord:
    return ItemRecord("test", item, item, item, f"/site/{item}.avi", "train", labels, {"video": f"/site/{item}.avi"})


def _cfg(name: str, **kwargs) -> TaskConfig:
    return TaskConfig(name=name, image_size=SIZE, **kwargs)


def _frame_of(image: torch.Tensor) -> int:
    """Which video frame an example image came from (background intensity 5·t)."""
    return round(float(image[..., 0, 0]) * 255 / 5)


@pytest.fixture
def seg_records() -> list[ItemRecord]:
    return [
        _image("img0", view="A4C"),
        _image("img1", view="A2C"),
        _video_record("vid0", mask_frames=[2, 7], ed_frame=7, es_frame=2, ef=60.0, view="A4C"),
    ]


def test_index_and_segmentation_examples_stay_aligned(tmp_path, seg_records):
    reader = DiskReader(tmp_path, seg_records)
    data = TaskDataset(reader, seg_records, build_task(_cfg("lv_seg")))
    assert data.examples == [(0, None), (1, None), (2, 0), (2, 1)]
    for i in range(len(data)):
        example = data[i]
        image, mask = example["image"], example["mask"]
        assert image.dtype == torch.float32 and tuple(image.shape) == (1, SIZE, SIZE)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (SIZE, SIZE)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert set(mask.unique().tolist()) == {0, 1, 2}  # nearest resize keeps labels
        bright, lv = image[0] > 0.6, mask == 1
        iou = float((bright & lv).sum()) / float((bright | lv).sum())
        assert iou > 0.8, (i, iou)  # the disk and its mask moved together
    # example (2, 1) is traced frame 7: its image is frame 7 of the video
    assert _frame_of(data[3]["image"]) == 7
    assert data[3]["item_id"] == "vid0"


def test_lv_only_subset_maps_other_structures_to_background(tmp_path, seg_records):
    lv_only = build_task(_cfg("lv_seg", classes=("lv_cavity",)))
    data = TaskDataset(DiskReader(tmp_path, seg_records), seg_records, lv_only)
    assert set(data[0]["mask"].unique().tolist()) == {0, 1}
    myo = build_task(_cfg("lv_seg", classes=("myocardium",)))
    assert set(TaskDataset(DiskReader(tmp_path, seg_records), seg_records, myo)[0]["mask"].unique().tolist()) == {0, 1}


def test_decoded_samples_are_cached(tmp_path, seg_records):
    reader = DiskReader(tmp_path, seg_records)
    data = TaskDataset(reader, seg_records, build_task(_cfg("lv_seg")), cache_size=2)
    data[2], data[3], data[2]
    assert reader.loads["vid0"] == 1
    uncached_reader = DiskReader(tmp_path, seg_records)
    uncached = TaskDataset(uncached_reader, seg_records, build_task(_cfg("lv_seg")), cache_size=0)
    uncached[2], uncached[3]
    assert uncached_reader.loads["vid0"] == 2


def test_examples_are_deterministic_per_seed_epoch_and_index(tmp_path):
    records = [_video_record("vid0", view="A4C", num_frames=30)]
    data = TaskDataset(DiskReader(tmp_path, records), records, build_task(_cfg("view")), seed=3)
    first = data[0]
    assert torch.equal(first["image"], data[0]["image"])
    frames = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        frames.add(_frame_of(data[0]["image"]))
    assert len(frames) > 1  # a new epoch draws a new frame
    data.set_epoch(0)
    assert torch.equal(first["image"], data[0]["image"])
    centre = TaskDataset(DiskReader(tmp_path, records), records, build_task(_cfg("view", frame_sampling="center")))
    assert _frame_of(centre[0]["image"]) == 15


def test_transform_gets_its_own_seeded_generator(tmp_path, seg_records):
    seen = []

    def add_noise(example: dict, generator: np.random.Generator) -> dict:
        seen.append(type(generator))
        noise = generator.normal(0, 0.05, example["image"].shape)
        example["image"] = np.clip(example["image"] + noise, 0, 1).astype(np.float32)
        return example

    task = build_task(_cfg("lv_seg"))
    data = TaskDataset(DiskReader(tmp_path, seg_records), seg_records, task, transform=add_noise, seed=1)
    plain = TaskDataset(DiskReader(tmp_path, seg_records), seg_records, task, seed=1)
    assert torch.equal(data[0]["image"], data[0]["image"])
    assert not torch.equal(data[0]["image"], plain[0]["image"])
    assert not torch.equal(data[0]["image"], data[1]["image"])
    assert seen and all(t is np.random.Generator for t in seen)


def test_clip_examples_follow_length_and_stride(tmp_path):
    records = [_video_record("long", ef=55.0, num_frames=20), _video_record("short", ef=40.0, num_frames=4)]
    task = build_task(_cfg("ef", clip_length=4, clip_stride=3, frame_sampling="center"))
    data = TaskDataset(DiskReader(tmp_path, records), records, task)
    long, short = data[0], data[1]
    assert tuple(long["clip"].shape) == (1, 4, SIZE, SIZE)
    # span (4 - 1) · 3 + 1 = 10 centred in 20 frames: start (20 - 10) // 2 = 5
    assert [_frame_of(f) for f in long["clip"][0]] == [5, 8, 11, 14]
    assert [_frame_of(f) for f in short["clip"][0]] == [0, 3, 3, 3]  # too short: last frame repeats
    assert long["target"].tolist() == [55.0]


def test_ef_on_an_image_record_is_a_data_error(tmp_path):
    records = [_image("img0", ef=50.0)]
    data = TaskDataset(DiskReader(tmp_path, records), records, build_task(_cfg("ef")))
    with pytest.raises(EchoDataError, match=r"img0.nii.gz: task 'ef' needs a video"):
        data[0]


def test_volumes_from_images_and_videos(tmp_path):
    records = [
        _image("img0", phase="ED", edv=120.0, esv=50.0),
        _image("img1", phase="ES", esv=45.0),
        _image("img2", phase="ES"),  # no volume: no example
        _video_record("vid0", ed_frame=8, es_frame=3, edv=100.0, esv=40.0),
    ]
    data = TaskDataset(DiskReader(tmp_path, records), records, build_task(_cfg("volumes")))
    assert data.examples == [(0, "ED"), (1, "ES"), (3, "ED"), (3, "ES")]
    assert data.num_records_without_examples == 1
    batch = collate_examples([data[i] for i in range(4)])
    assert batch["target"][:, 0].tolist() == [120.0, 45.0, 100.0, 40.0]
    assert batch["phase"].tolist() == [0, 1, 0, 1]
    assert [_frame_of(batch["image"][i]) for i in (2, 3)] == [8, 3]


def test_lvh_examples_per_annotated_frame(tmp_path):
    landmarks = {
        "IVSd": (10.0, 20.0, 10.0, 40.0),
        "LVIDd": (30.0, 20.0, 30.0, 40.0),
        "LVPWd": (50.0, 20.0, 50.0, 30.0),
    }
    labels = {
        "landmarks": landmarks,
        "landmark_frames": {"IVSd": 3, "LVIDd": 3, "LVPWd": 5},
        "measurements": {"IVSd": 1.0, "LVIDd": 1.0, "LVPWd": 0.5},  # cm; 20 px -> 0.5 mm / px
        "view": "PLAX",
    }
    records = [_video_record("plax", **labels), _video_record("a4c", **{**labels, "view": "A4C"})]
    task = build_task(_cfg("lvh"))
    data = TaskDataset(DiskReader(tmp_path, records), records, task)
    assert data.examples == [(0, 3), (0, 5)]  # the A4C record gives none
    at3, at5 = data[0], data[1]
    assert _frame_of(at3["image"]) == 3 and _frame_of(at5["image"]) == 5
    assert at3["point_mask"].tolist() == [1, 1, 1, 1, 0, 0] and at5["point_mask"].tolist() == [0, 0, 0, 0, 1, 1]
    # (x + 0.5) · 32/64 - 0.5, (y + 0.5) · 32/48 - 0.5
    expected = [[(10.5 / 2) - 0.5, 20.5 * 2 / 3 - 0.5], [(10.5 / 2) - 0.5, 40.5 * 2 / 3 - 0.5]]
    np.testing.assert_allclose(at3["points"][:2].numpy(), expected, rtol=1e-6)
    # spacing derived from measurements: 0.5 mm per source pixel -> (0.5·48/32, 0.5·64/32)
    np.testing.assert_allclose(at3["mm_per_pixel"].numpy(), [0.75, 1.0])
    # a caliper predicted exactly has zero error; its length in mm is the measurement (20 px -> 10 mm)
    batch = collate_examples([at3, at5])
    metrics = task.metrics(batch["points"], batch)
    assert metrics["mae_mm"] == 0.0 and metrics["point_error_mm"] == 0.0
    with_spacing = TaskDataset(DiskReader(tmp_path, records, spacing=(0.3, 0.2)), records, task)
    np.testing.assert_allclose(with_spacing[0]["mm_per_pixel"].numpy(), [0.45, 0.4], rtol=1e-6)


def test_skip_mode_drops_corrupt_samples_and_counts_them(tmp_path, seg_records):
    reader = DiskReader(tmp_path, seg_records, bad=("img1",))
    data = TaskDataset(reader, seg_records, build_task(_cfg("lv_seg")), on_error="skip")
    assert data[1] is None
    assert [issue.path for issue in data.skipped] == ["/site/img1.nii.gz"]
    batches = list(DataLoader(data, batch_size=4, collate_fn=collate_examples))
    assert len(batches) == 1
    assert tuple(batches[0]["image"].shape) == (3, 1, SIZE, SIZE)
    assert int(batches[0]["num_skipped"]) == 1
    assert batches[0]["item_id"] == ["img0", "vid0", "vid0"]
    all_bad = collate_examples([None, None])
    assert is_empty_batch(all_bad) and int(all_bad["num_skipped"]) == 2


def test_raise_mode_names_the_file(tmp_path, seg_records):
    data = TaskDataset(DiskReader(tmp_path, seg_records, bad=("img1",)), seg_records, build_task(_cfg("lv_seg")))
    with pytest.raises(EchoDataError, match=r"/site/img1.nii.gz: AVI has no decodable frame"):
        data[1]


def test_unusable_labels_are_collected_at_construction(tmp_path):
    records = [_image("img0", view="A4C"), _image("img1", view=3), _image("img2", view="A9C")]
    records.append(_image("img3", view="PLAX"))
    task = build_task(_cfg("view", classes=("A4C", "A2C")))
    with pytest.raises(EchoDataError, match=r"2 problems:(.|\n)*img1.nii.gz(.|\n)*img2.nii.gz"):
        TaskDataset(DiskReader(tmp_path, records), records, task)
    data = TaskDataset(DiskReader(tmp_path, records), records, task, on_error="skip")
    assert data.examples == [(0, None)]
    assert len(data.skipped) == 2
    assert data.num_records_without_examples == 3  # two bad labels + PLAX outside the subset


def test_collate_and_concat():
    def example(h: int, item: str) -> dict:
        return {"image": torch.zeros(1, h, 4), "label": torch.tensor(1), "item_id": item}

    with pytest.raises(ValueError, match="shapes .* differ; resize examples"):
        collate_examples([example(4, "a"), example(5, "b")])
    first = collate_examples([example(4, "a"), None])
    second = collate_examples([example(4, "b"), example(4, "c")])
    whole = concat_batches([first, collate_examples([None]), second])
    assert tuple(whole["image"].shape) == (3, 1, 4, 4)
    assert whole["item_id"] == ["a", "b", "c"] and int(whole["num_skipped"]) == 2


def test_dataset_argument_errors(tmp_path, seg_records):
    reader = DiskReader(tmp_path, seg_records)
    task = build_task(_cfg("lv_seg"))
    with pytest.raises(ValueError, match="on_error"):
        TaskDataset(reader, seg_records, task, on_error="ignore")
    with pytest.raises(ValueError, match="seed"):
        TaskDataset(reader, seg_records, task, seed=-1)


def test_batches_feed_a_registered_backbone(tmp_path, seg_records):
    import fedecho.config.model as model_cfg
    import fedecho.models as models

    torch.manual_seed(0)
    task = build_task(_cfg("lv_seg", decoder_dim=16))
    backbone = models.build_backbone(model_cfg.BackboneConfig(name="segformer-tiny", image_size=SIZE))
    head = task.build_head(backbone)
    data = TaskDataset(DiskReader(tmp_path, seg_records), seg_records, task)
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_examples)))
    outputs = task.forward(backbone, head, batch)
    assert tuple(outputs.shape) == (4, 4, SIZE, SIZE)
    assert torch.isfinite(task.loss(outputs, batch))
    assert set(task.metrics(outputs.detach(), batch)) >= {"dice", "dice/lv_cavity", "iou/left_atrium", "loss"}


def test_seg_train_transform_keeps_disk_and_mask_aligned(tmp_path, seg_records):
    import fedecho.config.ssl as ssl_cfg
    import fedecho.transforms as transforms

    augment = transforms.build_transform("seg_train", ssl_cfg.AugmentConfig(image_size=SIZE))
    data = TaskDataset(DiskReader(tmp_path, seg_records), seg_records, build_task(_cfg("lv_seg")), transform=augment)
    batch = collate_examples([data[i] for i in range(len(data))])
    assert tuple(batch["image"].shape) == (4, 1, SIZE, SIZE) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    for image, mask in zip(batch["image"][:, 0], batch["mask"], strict=True):
        bright, lv = image > (image.min() + image.max()) / 2, mask == 1
        assert float((bright & lv).sum()) / float((bright | lv).sum()) > 0.7
    assert torch.equal(data[0]["image"], data[0]["image"])  # seeded by (seed, epoch, index)
