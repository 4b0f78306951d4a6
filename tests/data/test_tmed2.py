"""TMED-2 reader and writer: round trip, id parsing, CSV discovery, validation, patient-level splits."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from fedecho.data import EchoDataError, Sample, open_reader
from fedecho.data.tmed2 import TMED2_COLUMNS, TMED2_CSV, Tmed2Reader, parse_query_key, write_tmed2


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112), dtype=np.uint8)


def _samples() -> list[Sample]:
    def make(item: str, labels: dict, split: str | None, seed: int) -> Sample:
        patient, study, _ = parse_query_key(f"{item}.png")
        return Sample("synthetic", patient, study, item, _image(seed), labels=labels, split=split)

    return [
        make("1234s1_5", {"view": "A4C", "as_grade": "mild_AS"}, "train", 0),
        make("1234s1_6", {"view": "PLAX"}, "train", 1),
        make("1234s2_0", {}, "train", 2),
        make("77s2_0", {"as_grade": "severe_AS"}, "test", 3),
        make("901s1_10", {"view": "A4CorA2CorOther", "as_grade": "no_AS"}, "val", 4),
    ]


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] = TMED2_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)


def _row(key: str, view: str = "", diagnosis: str = "", split: str = "train", folder: str = "imgs") -> dict:
    return {
        "query_key": key, "view_label": view, "diagnosis_label": diagnosis, "SourceFolder": folder,
        "view_classifier_split": split, "diagnosis_classifier_split": split,
    }  # fmt: skip


def _png(root: Path, key: str, seed: int = 0, folder: str = "imgs") -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / folder / key), _image(seed))


@pytest.mark.parametrize(
    ("key", "ids"),
    [
        ("1234s1_5.png", ("1234", "1234s1", "1234s1_5")),
        ("7s12_0.png", ("7", "7s12", "7s12_0")),
        ("ab9s3_40.png", ("ab9", "ab9s3", "ab9s3_40")),
    ],
)
def test_parse_query_key(key, ids):
    assert parse_query_key(key) == ids


@pytest.mark.parametrize("key", ["1234_5.png", "1234s1.png", "s1_5.png", "1234s1_5.jpg", "12s4s1_5.png", "1s1_x.png"])
def test_parse_query_key_rejects_other_patterns(key):
    with pytest.raises(ValueError, match="does not match"):
        parse_query_key(key)


def test_round_trip_exact(tmp_path):
    samples = _samples()
    write_tmed2(tmp_path, samples)
    assert (tmp_path / TMED2_CSV).is_file()
    with open(tmp_path / TMED2_CSV, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == TMED2_COLUMNS
    reader = open_reader("tmed2", tmp_path)
    assert isinstance(reader, Tmed2Reader)
    loaded = {s.item_id: s for s in reader.iter_samples()}
    assert sorted(loaded) == sorted(s.item_id for s in samples)
    for original in samples:
        back = loaded[original.item_id]
        assert (back.patient_id, back.study_id, back.split) == (original.patient_id, original.study_id, original.split)
        assert back.labels == original.labels
        assert back.frames.dtype == np.uint8 and back.frames.shape == (112, 112)
        np.testing.assert_array_equal(back.frames, original.frames)
        assert back.spacing is None and back.fps is None and back.source == "tmed2"
    # the release's folders: fully labelled, view only, diagnosis only, unlabelled
    assert (tmp_path / "view_and_diagnosis_labeled_set/labeled/1234s1_5.png").is_file()
    assert (tmp_path / "view_labeled_set/labeled/1234s1_6.png").is_file()
    assert (tmp_path / "view_and_diagnosis_labeled_set/unlabeled/77s2_0.png").is_file()
    assert (tmp_path / "unlabeled_set/unlabeled/1234s2_0.png").is_file()


def test_writer_rejects_samples_outside_the_format(tmp_path):
    good = _samples()[0]
    bad_ids = Sample("s", "xs1", "xs1s1", "xs1s1_0", _image(0))  # patient id with an "s" is ambiguous
    with pytest.raises(ValueError, match="'xs1s1_0'.*does not match"):
        write_tmed2(tmp_path, [bad_ids])
    mismatch = Sample("s", "99", "1234s1", "1234s1_7", _image(0))
    with pytest.raises(ValueError, match="patient_id '1234' and study_id '1234s1'"):
        write_tmed2(tmp_path, [mismatch])
    video = Sample("s", good.patient_id, good.study_id, good.item_id, np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"single uint8 images \(H, W\)"):
        write_tmed2(tmp_path, [video])
    label = Sample("s", good.patient_id, good.study_id, good.item_id, _image(0), labels={"view": "A5C"})
    with pytest.raises(ValueError, match="view='A5C' is not one of"):
        write_tmed2(tmp_path, [label])
    with pytest.raises(ValueError, match="written twice"):
        write_tmed2(tmp_path, [good, good])


def test_split_by_diagnosis_column(tmp_path):
    rows = [_row("5s1_0.png", "A4C", "no_AS", "train"), _row("6s1_0.png", "A2C", "mild_AS", "val")]
    rows[0]["diagnosis_classifier_split"] = "test"
    rows[1]["diagnosis_classifier_split"] = "test"
    _write_csv(tmp_path / "split.csv", rows)
    _png(tmp_path, "5s1_0.png")
    _png(tmp_path, "6s1_0.png")
    by_view = {r.item_id: r.split for r in Tmed2Reader(tmp_path).scan().records}
    by_diagnosis = {r.item_id: r.split for r in Tmed2Reader(tmp_path, split_by="diagnosis").scan().records}
    assert by_view == {"5s1_0": "train", "6s1_0": "val"}
    assert by_diagnosis == {"5s1_0": "test", "6s1_0": "test"}


def test_csv_discovery_takes_first_with_all_columns(tmp_path):
    _write_csv(tmp_path / "A_notes.csv", [{"query_key": "x"}], columns=("query_key", "comment"))
    _write_csv(tmp_path / "DEV479/TMED2_fold0_labeledpart.csv", [_row("5s1_0.png", "PSAX")])
    _write_csv(tmp_path / "DEV479/TMED2_fold1_labeledpart.csv", [_row("5s1_0.png", "PSAX", split="test")])
    _png(tmp_path, "5s1_0.png")
    reader = Tmed2Reader(tmp_path)
    assert reader.csv_paths == [tmp_path / "DEV479/TMED2_fold0_labeledpart.csv"]
    assert [r.split for r in reader.scan().records] == ["train"]
    explicit = Tmed2Reader(tmp_path, csv="DEV479/TMED2_fold1_labeledpart.csv")
    assert [r.split for r in explicit.scan().records] == ["test"]


def test_no_usable_csv_lists_what_was_found(tmp_path):
    with pytest.raises(EchoDataError, match="no \\*.csv found"):
        Tmed2Reader(tmp_path)
    _write_csv(tmp_path / "other.csv", [], columns=("query_key", "view_label"))
    with pytest.raises(EchoDataError) as err:
        Tmed2Reader(tmp_path)
    assert "other.csv" in str(err.value) and "diagnosis_label" in str(err.value)
    with pytest.raises(EchoDataError, match="does not exist"):
        Tmed2Reader(tmp_path, csv="missing.csv")


def test_missing_columns_reported_in_one_error(tmp_path):
    _write_csv(tmp_path / "split.csv", [], columns=("query_key", "view_label", "SourceFolder", "view_classifier_split"))
    reader = Tmed2Reader(tmp_path, csv="split.csv")
    for on_error in ("raise", "skip"):
        reader.on_error = on_error
        with pytest.raises(EchoDataError) as err:
            reader.scan()
        assert len(err.value.issues) == 1
        assert "['diagnosis_label', 'diagnosis_classifier_split']" in str(err.value)


def test_every_bad_row_is_reported_and_skip_keeps_the_good_ones(tmp_path):
    _png(tmp_path, "1s1_0.png")
    _png(tmp_path, "2s1_0.png")
    _png(tmp_path, "3s1_0.png")
    (tmp_path / "imgs/4s1_0.png").write_bytes(b"")
    (tmp_path / "imgs/5s1_0.png").write_text("not an image")
    rows = [
        _row("1s1_0.png", "A4C", "Not_Provided"),  # good; Not_Provided = no label
        _row("2s1_0.png", "A5C"),  # unknown view
        _row("3s1_0.png", "", "very_severe_AS"),  # unknown grade
        _row("4s1_0.png"),  # zero-byte
        _row("5s1_0.png"),  # not a PNG
        _row("6s1_0.png"),  # missing
        _row("1234_0.png"),  # bad query_key
        _row("1s1_0.png", "A4C"),  # repeated key
        _row("2s1_0.png", split="holdout"),  # bad split
    ]
    _write_csv(tmp_path / "split.csv", rows)
    with pytest.raises(EchoDataError) as err:
        Tmed2Reader(tmp_path).scan()
    text = str(err.value)
    assert len(err.value.issues) == 8
    assert "view_label 'A5C' of 2s1_0.png is not one of ['A4C', 'A2C', 'PLAX', 'PSAX', 'A4CorA2CorOther']" in text
    assert "diagnosis_label 'very_severe_AS'" in text and "'mildtomod_AS'" in text
    assert "4s1_0.png: zero-byte PNG" in text
    assert "5s1_0.png: not a PNG" in text
    assert "6s1_0.png: PNG does not exist (named by" in text
    assert "split.csv row 8: query_key '1234_0.png' does not match" in text
    assert "row 9: query_key 1s1_0.png repeats" in text
    assert "'holdout' of 2s1_0.png is not one of ['train', 'val', 'test']" in text
    scan = Tmed2Reader(tmp_path, on_error="skip").scan()
    assert [(r.item_id, r.labels) for r in scan.records] == [("1s1_0", {"view": "A4C"})]
    assert len(scan.issues) == 8


def test_patient_in_two_splits_is_an_issue_or_moved_to_its_majority(tmp_path):
    keys = ["8s1_0.png", "8s1_1.png", "8s2_0.png", "8s2_1.png", "9s1_0.png"]
    for key in keys:
        _png(tmp_path, key)
    splits = ["train", "test", "test", "unlabeled", "val"]
    _write_csv(tmp_path / "split.csv", [_row(k, split=s) for k, s in zip(keys, splits, strict=True)])
    with pytest.raises(EchoDataError, match=r"patient 8 is in several splits .*train \(1 rows\), test \(2 rows\)"):
        Tmed2Reader(tmp_path).scan()
    skipped = Tmed2Reader(tmp_path, on_error="skip").scan()
    assert [r.item_id for r in skipped.records] == ["9s1_0"]  # the leaking patient is left out, not half-kept
    moved = Tmed2Reader(tmp_path, split_conflicts="majority").scan()
    assert [r.split for r in moved.records] == ["test", "test", "test", "test", "val"]


def test_majority_tie_goes_to_train_and_unsplit_rows_inherit(tmp_path):
    keys = ["8s1_0.png", "8s1_1.png", "8s1_2.png", "9s1_0.png"]
    for key in keys:
        _png(tmp_path, key)
    _write_csv(tmp_path / "split.csv", [_row(k, split=s) for k, s in zip(keys, ["val", "train", "", ""], strict=True)])
    moved = Tmed2Reader(tmp_path, split_conflicts="majority").scan()
    assert [r.split for r in moved.records] == ["train", "train", "train", None]


def test_several_csvs_are_concatenated(tmp_path):
    _png(tmp_path, "8s1_0.png")
    _png(tmp_path, "8s1_1.png", folder="unl")
    _write_csv(tmp_path / "labeled.csv", [_row("8s1_0.png", "A2C", split="val")])
    _write_csv(tmp_path / "unlabeled.csv", [_row("8s1_1.png", split="unlabeled", folder="/unl/")])
    scan = Tmed2Reader(tmp_path, csv=["labeled.csv", tmp_path / "unlabeled.csv"]).scan()
    assert [(r.item_id, r.split, r.labels) for r in scan.records] == [
        ("8s1_0", "val", {"view": "A2C"}),
        ("8s1_1", "val", {}),  # an unlabelled image of a val patient stays in val
    ]


def test_load_converts_colour_and_names_corrupt_files(tmp_path):
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (0, 0, 255)  # OpenCV is BGR: pure red
    colour[0, 1] = (0, 255, 0)
    colour[0, 2] = (255, 0, 0)
    colour[1, :] = (90, 90, 90)
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs/1s1_0.png"), colour)
    ok, encoded = cv2.imencode(".png", _image(0))
    (tmp_path / "imgs/2s1_0.png").write_bytes(encoded.tobytes()[:60])  # header intact, pixels cut
    _write_csv(tmp_path / "split.csv", [_row("1s1_0.png"), _row("2s1_0.png")])
    reader = Tmed2Reader(tmp_path)
    first, second = reader.scan().records
    # 0.299 R + 0.587 G + 0.114 B, rounded: red 76.2, green 149.7, blue 29.1
    np.testing.assert_array_equal(reader.load(first).frames, [[76, 150, 29], [90, 90, 90]])
    with pytest.raises(EchoDataError, match="2s1_0.png: unreadable PNG"):
        reader.load(second)
