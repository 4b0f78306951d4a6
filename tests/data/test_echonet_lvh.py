"""EchoNet-LVH reader/writer: round trip, Batch folders, index column, validation, clips."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fedecho.data.base import open_reader
from fedecho.data.echonet_lvh import MEASUREMENT_COLUMNS, EchoNetLVHReader, write_echonet_lvh
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import Sample
from fedecho.data.writers import get_writer


def make_sample(rng, name, split, n_frames=12, shape=(48, 64)):
    ramp = np.linspace(40, 200, shape[1], dtype=np.float32)[None, None, :]
    frames = (ramp + rng.normal(0, 2, (n_frames, *shape))).clip(0, 255).astype(np.uint8)
    labels = {
        "measurements": {"IVSd": 1.1, "LVIDd": 4.75, "LVPWd": 0.95},
        "landmarks": {"IVSd": np.array([10.5, 8.0, 12.25, 20.0]), "LVIDd": np.array([12.25, 20.0, 15.0, 41.5]),
                      "LVPWd": np.array([15.0, 41.5, 16.0, 46.0])},
        "landmark_frames": {"IVSd": 3, "LVIDd": 3, "LVPWd": 7},
        "fps": 30.0,
    }
    return Sample("echonet-lvh", name, name, name, frames, fps=30.0, labels=labels, split=split)


def test_round_trip_with_round_robin_batches(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"0x{i:08x}" for i in range(5)]
    samples = [make_sample(rng, n, s) for n, s in zip(names, ["train", "train", "val", "test", "train"], strict=True)]
    write_echonet_lvh(tmp_path, samples)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("Batch*/*.avi")) == [
        f"Batch1/{names[0]}.avi", f"Batch1/{names[4]}.avi", f"Batch2/{names[1]}.avi",
        f"Batch3/{names[2]}.avi", f"Batch4/{names[3]}.avi"]
    reader = open_reader("echonet-lvh", tmp_path)
    records = reader.scan().records
    assert sorted(r.item_id for r in records) == names
    for record in records:
        original = next(s for s in samples if s.item_id == record.item_id)
        loaded = reader.load(record)
        assert (loaded.patient_id, loaded.study_id, loaded.split) == (original.item_id, original.item_id, original.split)
        assert loaded.frames.shape == original.frames.shape and loaded.fps == 30.0
        assert np.abs(loaded.frames.astype(int) - original.frames).mean() < 3.0
        assert loaded.labels["measurements"] == original.labels["measurements"]
        assert loaded.labels["landmark_frames"] == original.labels["landmark_frames"]
        assert loaded.labels["landmarks"].keys() == original.labels["landmarks"].keys()
        for calc, points in original.labels["landmarks"].items():
            np.testing.assert_array_equal(loaded.labels["landmarks"][calc], points)


def rewrite_manifest(root, edit):
    """Apply ``edit(header, rows)`` to MeasurementsList.csv."""
    path = root / "MeasurementsList.csv"
    header, *rows = list(csv.reader(path.open()))
    header, rows = edit(header, rows)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_unnamed_index_column_as_pandas_writes_it(tmp_path):
    write_echonet_lvh(tmp_path, [make_sample(np.random.default_rng(1), "abc", "val")])
    rewrite_manifest(tmp_path, lambda header, rows: (["", *header[1:]], rows))
    (record,) = EchoNetLVHReader(tmp_path).scan().records
    assert record.item_id == "abc" and record.labels["measurements"]["LVIDd"] == 4.75
    assert record.labels["landmarks"]["IVSd"].tolist() == [10.5, 8.0, 12.25, 20.0]  # X1, Y1, X2, Y2


def test_missing_columns_are_listed_in_one_error(tmp_path):
    write_echonet_lvh(tmp_path, [make_sample(np.random.default_rng(1), "abc", "val")])
    drop = [MEASUREMENT_COLUMNS.index("CalcValue") + 1, MEASUREMENT_COLUMNS.index("split") + 1]
    rewrite_manifest(tmp_path, lambda h, rows: ([c for i, c in enumerate(h) if i not in drop],
                                                [[c for i, c in enumerate(r) if i not in drop] for r in rows]))
    with pytest.raises(EchoDataError, match=r"missing column\(s\) CalcValue, split"):
        EchoNetLVHReader(tmp_path).scan()


def test_scan_lists_every_problem_and_skip_keeps_good_videos(tmp_path):
    rng = np.random.default_rng(2)
    write_echonet_lvh(tmp_path, [make_sample(rng, n, "train") for n in ("good", "gone", "odd", "late")])
    (tmp_path / "Batch2" / "gone.avi").unlink()

    def edit(header, rows):
        calc, frame, name = header.index("Calc"), header.index("Frame"), header.index("HashedFileName")
        for row in rows:
            if row[name] == "odd" and row[calc] == "LVPWd":
                row[calc] = "LVMass"
            if row[name] == "late" and row[calc] == "IVSd":
                row[frame] = "12"  # the videos have 12 frames: 0..11
        return header, rows

    rewrite_manifest(tmp_path, edit)
    with pytest.raises(EchoDataError) as err:
        EchoNetLVHReader(tmp_path).scan()
    message = str(err.value)
    assert "3 problems" in message
    assert "gone: video listed in MeasurementsList.csv is in no Batch folder" in message
    assert "odd: unknown Calc 'LVMass'; expected one of IVSd, LVIDd, LVPWd, IVSs, LVIDs, LVPWs" in message
    assert "late IVSd: Frame 12 is beyond the video's 12 frames" in message
    result = EchoNetLVHReader(tmp_path, on_error="skip").scan()
    assert [r.item_id for r in result.records] == ["good"] and len(result.issues) == 3


def test_frame_beyond_the_decoded_video_fails_at_load(tmp_path):
    write_echonet_lvh(tmp_path, [make_sample(np.random.default_rng(3), "short", "test", n_frames=12)])
    rewrite_manifest(tmp_path, lambda h, rows: (h, [[*r[: h.index("Frames")], "40", *r[h.index("Frames") + 1 :]]
                                                    for r in rows]))
    rewrite_manifest(tmp_path, lambda h, rows: (h, [[*r[: h.index("Frame")], "30", *r[h.index("Frame") + 1 :]]
                                                    for r in rows]))
    reader = EchoNetLVHReader(tmp_path)
    (record,) = reader.scan().records
    with pytest.raises(EchoDataError, match=r"short\.avi: short: landmark frame\(s\) .* beyond the 12 decodable"):
        reader.load(record)


def test_load_frames_keeps_landmarks_inside_the_clip(tmp_path):
    write_echonet_lvh(tmp_path, [make_sample(np.random.default_rng(4), "clip", "train")])
    reader = EchoNetLVHReader(tmp_path)
    (record,) = reader.scan().records
    full = reader.load(record)
    clip = reader.load_frames(record, range(5, 9))
    np.testing.assert_array_equal(clip.frames, full.frames[5:9])
    assert clip.labels["landmark_frames"] == {"LVPWd": 2}
    assert list(clip.labels["landmarks"]) == ["LVPWd"]
    assert clip.labels["measurements"] == full.labels["measurements"]


def test_writer_rejects_inconsistent_labels(tmp_path):
    sample = make_sample(np.random.default_rng(5), "bad", "train")
    del sample.labels["landmark_frames"]["LVPWd"]
    with pytest.raises(ValueError, match="must name the same Calcs"):
        write_echonet_lvh(tmp_path, [sample])


def test_writer_is_the_registered_one():
    assert get_writer("echonet-lvh") is write_echonet_lvh
