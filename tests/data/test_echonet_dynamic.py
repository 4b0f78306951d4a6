"""EchoNet-Dynamic reader/writer: round trip, hand-made tracings, validation, clip decoding."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from fedecho.data.base import open_reader
from fedecho.data.echonet_dynamic import EchoNetDynamicReader, clip_labels, write_echonet_dynamic
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import Sample
from fedecho.data.writers import get_writer
from fedecho.data.video import read_avi, write_avi

SIZE = 112


def smooth_video(rng, n_frames):
    """(T, 112, 112) uint8 smooth texture (MJPG keeps it within a few grey levels)."""
    noise = rng.uniform(0, 255, (n_frames, SIZE // 8, SIZE // 8)).astype(np.float32)
    return np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for f in noise]).clip(0, 255).astype(np.uint8)


def ellipse(half_rows, half_cols, angle=12.0):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(mask, ((56.0, 58.0), (2.0 * half_cols, 2.0 * half_rows), angle), 1, -1)
    return mask


def make_sample(rng, name, split, n_frames=24, frames_traced=(18, 4)):
    masks = np.stack([ellipse(30, 12), ellipse(40, 18)])  # small (ES) first, then large (ED)
    labels = {"ef": 51.25, "edv": 130.5, "esv": 63.6, "fps": 50.0, "mask": masks,
              "mask_frames": list(frames_traced)}
    return Sample("echonet-dynamic", name, name, name, smooth_video(rng, n_frames), fps=50.0,
                  labels=labels, split=split)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    samples = [make_sample(rng, f"0X{i:04X}", split) for i, split in enumerate(["train", "val", "test"])]
    write_echonet_dynamic(tmp_path, samples)
    reader = open_reader("echonet-dynamic", tmp_path)
    records = reader.scan().records
    assert [r.item_id for r in records] == [s.item_id for s in samples]
    for record, original in zip(records, samples, strict=True):
        loaded = reader.load(record)
        assert (loaded.patient_id, loaded.study_id, loaded.split) == (original.item_id,) * 2 + (original.split,)
        assert loaded.frames.shape == original.frames.shape and loaded.fps == 50.0
        assert np.abs(loaded.frames.astype(int) - original.frames).mean() < 3.0
        for key in ("ef", "edv", "esv", "fps"):
            assert loaded.labels[key] == original.labels[key]
        # masks come back sorted by frame; the larger cavity (frame 4) is ED
        assert loaded.labels["mask_frames"] == [4, 18]
        assert (loaded.labels["ed_frame"], loaded.labels["es_frame"]) == (4, 18)
        assert loaded.labels["mask"].shape == (2, SIZE, SIZE)
        assert dice(loaded.labels["mask"][0], original.labels["mask"][1]) > 0.9
        assert dice(loaded.labels["mask"][1], original.labels["mask"][0]) > 0.9


def write_root(root, rows, tracings, videos=None, n_frames=10):
    """A hand-made EchoNet-Dynamic root; ``videos`` names the AVIs to create."""
    header = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
    with (root / "FileList.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with (root / "VolumeTracings.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["FileName", "X1", "Y1", "X2", "Y2", "Frame"], *tracings])
    for name in videos or []:
        write_avi(root / "Videos" / f"{name}.avi", np.full((n_frames, 16, 16), 90, np.uint8), fps=30)


def square_tracing(name, frame, lo, hi):
    """Long axis + 2 chords of the square [lo, hi]² (pixel centres, x = column)."""
    mid = (lo + hi) / 2
    return [[f"{name}.avi", mid, lo, mid, hi, frame], [f"{name}.avi", lo, lo, hi, lo, frame],
            [f"{name}.avi", lo, hi, hi, hi, frame]]


def test_hand_made_tracings_draw_the_echonet_polygon(tmp_path):
    row = ["vid1.avi", 60, 20, 50, 16, 16, 30, 10, "TRAIN"]  # FileName with .avi is accepted
    write_root(tmp_path, [row], square_tracing("vid1", 2, 3, 11) + square_tracing("vid1", 7, 5, 9),
               videos=["vid1"])
    reader = EchoNetDynamicReader(tmp_path)
    (record,) = reader.scan().records
    assert record.item_id == "vid1" and record.split == "train"
    assert (record.labels["ed_frame"], record.labels["es_frame"]) == (2, 7)
    sample = reader.load(record)
    expected = np.zeros((2, 16, 16), np.uint8)
    expected[0, 3:12, 3:12] = 1
    expected[1, 5:10, 5:10] = 1
    np.testing.assert_array_equal(sample.labels["mask"], expected)


def test_missing_columns_are_listed_in_one_error(tmp_path):
    (tmp_path / "FileList.csv").write_text("FileName,EF,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames\nx,1,2,3,4,5,6\n")
    with pytest.raises(EchoDataError, match=r"FileList.csv: .* missing column\(s\) ESV, Split"):
        EchoNetDynamicReader(tmp_path).scan()


def test_scan_finds_every_bad_row_and_skip_keeps_the_good_ones(tmp_path):
    rows = [[name, 60, 20, 50, 16, 16, 30, 10, "TEST"] for name in ("good", "absent", "empty", "late", "once")]
    tracings = (square_tracing("good", 1, 3, 11) + square_tracing("good", 5, 5, 9)
                + square_tracing("absent", 1, 3, 11) + square_tracing("absent", 5, 5, 9)
                + square_tracing("empty", 1, 3, 11) + square_tracing("empty", 5, 5, 9)
                + square_tracing("late", 1, 3, 11) + square_tracing("late", 12, 5, 9)
                + square_tracing("once", 1, 3, 11))
    write_root(tmp_path, rows, tracings, videos=["good", "late", "once"])
    (tmp_path / "Videos" / "empty.avi").write_bytes(b"")
    with pytest.raises(EchoDataError) as err:
        EchoNetDynamicReader(tmp_path).scan()
    message = str(err.value)
    assert "4 problems" in message
    assert "absent: video listed in FileList.csv does not exist" in message
    assert "empty: video file is empty (0 bytes)" in message
    assert "late.avi: traced frame(s) [12] beyond the video's 10 frames" in message
    assert "once.avi has 1 traced frame(s); 2 (ED and ES) are needed" in message
    result = EchoNetDynamicReader(tmp_path, on_error="skip").scan()
    assert [r.item_id for r in result.records] == ["good"] and len(result.issues) == 4


def test_truncated_video_fails_at_load_naming_the_file(tmp_path):
    write_root(tmp_path, [["cut", 60, 20, 50, 16, 16, 30, 10, "VAL"]],
               square_tracing("cut", 1, 3, 11) + square_tracing("cut", 5, 5, 9), videos=["cut"])
    video = tmp_path / "Videos" / "cut.avi"
    video.write_bytes(video.read_bytes()[:300])
    reader = EchoNetDynamicReader(tmp_path)
    (record,) = reader.scan().records
    with pytest.raises(EchoDataError, match="cut.avi"):
        reader.load(record)
    skipping = EchoNetDynamicReader(tmp_path, on_error="skip")
    assert list(skipping.iter_samples()) == [] and len(skipping.skipped) == 1


def test_clip_decoding_equals_full_decoding(tmp_path):
    rng = np.random.default_rng(3)
    write_echonet_dynamic(tmp_path, [make_sample(rng, "clip", "train", n_frames=40, frames_traced=(30, 9))])
    reader = EchoNetDynamicReader(tmp_path)
    (record,) = reader.scan().records
    full = reader.load(record)
    clip = reader.load_frames(record, range(8, 24))
    np.testing.assert_array_equal(clip.frames, full.frames[8:24])
    assert clip.labels["ed_frame"] == 1 and "es_frame" not in clip.labels
    assert clip.labels["mask_frames"] == [1]
    np.testing.assert_array_equal(clip.labels["mask"][0], full.labels["mask"][0])
    # sparse, unsorted indices (the reader seeks over gaps in MJPG) come back in the asked order
    picked = [35, 2, 20, 21, 39]
    np.testing.assert_array_equal(reader.load_frames(record, picked).frames, full.frames[picked])
    frames, _ = read_avi(record.files["video"], frames=[0, 39])
    np.testing.assert_array_equal(frames, full.frames[[0, 39]])
    with pytest.raises(EchoDataError, match="frame 40 was requested"):
        read_avi(record.files["video"], frames=[3, 40])


def test_clip_labels_maps_frames_to_clip_positions():
    labels = {"ef": 50.0, "ed_frame": 12, "es_frame": 30, "mask_frames": [12, 30]}
    assert clip_labels(labels, range(10, 26)) == {"ef": 50.0, "ed_frame": 2, "mask_frames": [2]}
    assert clip_labels(labels, [30, 12]) == {"ef": 50.0, "ed_frame": 1, "es_frame": 0, "mask_frames": [1, 0]}


def test_writer_needs_the_labels_the_format_stores(tmp_path):
    sample = make_sample(np.random.default_rng(0), "v", "train")
    del sample.labels["edv"]
    with pytest.raises(ValueError, match=r"needs labels ef, edv, esv.*missing \['edv'\]"):
        write_echonet_dynamic(tmp_path, [sample])


def test_writer_is_the_registered_one():
    assert get_writer("echonet-dynamic") is write_echonet_dynamic


def test_ef_only_export_reads_every_video_for_tasks_that_need_no_tracings(tmp_path, caplog):
    """FileList.csv + Videos/ without VolumeTracings.csv: EF/volumes and clips work; lv_seg finds
    no examples; the log says which tasks need the tracings."""
    from fedecho.config.task import TaskConfig
    from fedecho.tasks import build_task
    from fedecho.tasks.dataset import TaskDataset

    rng = np.random.default_rng(3)
    samples = [make_sample(rng, f"0X{i:04X}", split) for i, split in enumerate(["train", "train", "test"])]
    write_echonet_dynamic(tmp_path, samples)
    (tmp_path / "VolumeTracings.csv").unlink()
    reader = open_reader("echonet-dynamic", tmp_path)
    with caplog.at_level("INFO", logger="fedecho.data.echonet_dynamic"):
        scan = reader.scan()
    assert scan.issues == []
    assert [r.item_id for r in scan.records] == [s.item_id for s in samples]
    assert "need the tracings" in caplog.text and "lv_seg" in caplog.text
    record = scan.records[0]
    assert {k: record.labels[k] for k in ("ef", "edv", "esv")} == {"ef": 51.25, "edv": 130.5, "esv": 63.6}
    assert "mask_frames" not in record.labels and "tracings" not in record.files
    sample = reader.load(record)
    assert sample.frames.shape == (24, SIZE, SIZE) and "mask" not in sample.labels
    clip = reader.load_frames(record, [2, 4, 6])
    assert clip.frames.shape == (3, SIZE, SIZE) and clip.labels["ef"] == 51.25
    ef = TaskDataset(reader, scan.records, build_task(TaskConfig(name="ef", image_size=32, clip_length=3)))
    assert len(ef) == 3 and float(ef[0]["target"]) == pytest.approx(51.25)
    seg = build_task(TaskConfig(name="lv_seg", image_size=32))
    assert all(seg.example_keys(r) == [] for r in scan.records)


def test_tracings_file_present_still_requires_two_traced_frames(tmp_path):
    rng = np.random.default_rng(4)
    write_echonet_dynamic(tmp_path, [make_sample(rng, "0X0001", "train")])
    with (tmp_path / "VolumeTracings.csv").open("w") as f:  # header only: no video is traced
        f.write("FileName,X1,Y1,X2,Y2,Frame\n")
    scan = open_reader("echonet-dynamic", tmp_path, on_error="skip").scan()
    assert scan.records == [] and "2 (ED and ES) are needed" in str(scan.issues[0])
