"""CAMUS reader/writer: round trip, validation, volumes; the real 4CH subset (../shared/data/camus)."""

from __future__ import annotations

import gzip
import time
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from fedecho.data.base import open_reader
from fedecho.data.camus import CamusReader, camus_volumes, write_camus
from fedecho.data.errors import EchoDataError
from fedecho.data.geometry import simpson_volume_ml
from fedecho.data.schema import Sample
from fedecho.data.writers import get_writer


def cavity_mask(shape, half_long, half_short, centre=None):
    """Label map (H, W): LV cavity 1 (an ellipse, half axes in pixels), myocardium 2 around it,
    left atrium 3 below it."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    cy, cx = centre or (shape[0] * 0.45, shape[1] / 2)
    mask = np.zeros(shape, np.uint8)
    mask[((rows - cy) / (half_long + 4)) ** 2 + ((cols - cx) / (half_short + 4)) ** 2 <= 1] = 2
    mask[((rows - cy - half_long - 10) / 9) ** 2 + ((cols - cx) / half_short) ** 2 <= 1] = 3
    mask[((rows - cy) / half_long) ** 2 + ((cols - cx) / half_short) ** 2 <= 1] = 1
    return mask


def make_samples(rng, patient="patient0001", split="train", spacing=(0.3, 0.5)):
    samples = []
    cfg = {"age": 63.0, "sex": "F", "ef": 55.5, "edv": 120.0, "esv": 54.0}
    for view, quality in (("A4C", "Good"), ("A2C", "Poor")):
        code = "4CH" if view == "A4C" else "2CH"
        for phase, half_short in (("ED", 14), ("ES", 10)):
            labels = {"view": view, "phase": phase, "image_quality": quality, **cfg,
                      "mask": cavity_mask((96, 64), 30, half_short)}
            samples.append(Sample("camus", patient, patient, f"{patient}_{code}_{phase}",
                                  rng.integers(0, 256, (96, 64), dtype=np.uint8), spacing=spacing,
                                  labels=labels, split=split))
    seq_masks = np.stack([cavity_mask((96, 64), 30, 14 - t) for t in range(5)])
    samples.append(Sample("camus", patient, patient, f"{patient}_4CH_half_sequence",
                          rng.integers(0, 256, (5, 96, 64), dtype=np.uint8), spacing=spacing, fps=47.5,
                          labels={"view": "A4C", "image_quality": "Good", **cfg, "ed_frame": 0,
                                  "es_frame": 4, "fps": 47.5, "mask": seq_masks,
                                  "mask_frames": list(range(5))}, split=split))
    return samples


def assert_same(loaded: Sample, original: Sample):
    assert (loaded.patient_id, loaded.study_id, loaded.item_id, loaded.split) == (
        original.patient_id, original.study_id, original.item_id, original.split)
    np.testing.assert_array_equal(loaded.frames, original.frames)
    assert loaded.frames.dtype == np.uint8
    assert loaded.spacing == pytest.approx(original.spacing)
    assert loaded.labels.keys() == original.labels.keys()
    for key, value in original.labels.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded.labels[key], value)
        else:
            assert loaded.labels[key] == value, key


def test_round_trip_images_sequences_cfg_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    samples = make_samples(rng, "patient0001", "train") + make_samples(rng, "patient0002", "test")
    write_camus(tmp_path, samples)
    assert (tmp_path / "database_split" / "subgroup_testing.txt").read_text() == "patient0002\n"
    assert "ED: 1\nES: 5\n" in (tmp_path / "database_nifti/patient0001/Info_4CH.cfg").read_text()
    reader = open_reader("camus", tmp_path)
    result = reader.scan()
    assert len(result.records) == len(samples) and not result.issues
    by_id = {s.item_id: s for s in samples}
    for record in result.records:
        loaded = reader.load(record)
        assert_same(loaded, by_id[record.item_id])
        assert loaded.fps == by_id[record.item_id].fps


def test_reads_the_release_layout_written_by_hand(tmp_path):
    """(x, y) NIfTI axes, 1-based cfg frames, LVef/LVedv keys and uncompressed .nii."""
    folder = tmp_path / "database_nifti" / "patient0007"
    folder.mkdir(parents=True)
    image_xy = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)  # x = 6 columns, y = 4 rows
    nib.save(nib.Nifti1Image(image_xy, np.diag([-0.2, -0.7, 1, 1])), folder / "patient0007_2CH_ES.nii")
    sequence = np.zeros((6, 4, 3), np.uint8)
    sequence[1, 2, 0] = 9  # x=1, y=2 of frame 0
    nib.save(nib.Nifti1Image(sequence, np.eye(4)), folder / "patient0007_2CH_half_sequence.nii.gz")
    (folder / "Info_2CH.cfg").write_text("ED: 1\nES: 3\nNbFrame: 3\nSex: M\nAge: 81\n"
                                         "ImageQuality: Medium\nLVedv: 98.5\nLVesv: 40\nLVef: 59\n")
    reader = CamusReader(tmp_path)
    image_record, sequence_record = sorted(reader.scan().records, key=lambda r: r.item_id)
    image = reader.load(image_record)
    np.testing.assert_array_equal(image.frames, image_xy.T)
    assert image.frames.shape == (4, 6) and image.spacing == pytest.approx((0.7, 0.2))
    assert image.labels == {"view": "A2C", "phase": "ES", "sex": "M", "age": 81.0,
                            "image_quality": "Medium", "edv": 98.5, "esv": 40.0, "ef": 59.0}
    assert image.split is None
    sequence_sample = reader.load(sequence_record)
    assert sequence_sample.frames.shape == (3, 4, 6) and sequence_sample.frames[0, 2, 1] == 9
    assert (sequence_sample.labels["ed_frame"], sequence_sample.labels["es_frame"]) == (0, 2)


def write_patient(root, patient="patient0012", mask=None, image_shape=(64, 48)):
    folder = root / "database_nifti" / patient
    folder.mkdir(parents=True, exist_ok=True)
    for phase in ("ED", "ES"):
        nib.save(nib.Nifti1Image(np.zeros(image_shape, np.uint8), np.eye(4)),
                 folder / f"{patient}_4CH_{phase}.nii.gz")
        if mask is not None:
            nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / f"{patient}_4CH_{phase}_gt.nii.gz")
    return folder


def test_mask_labels_outside_camus_vocabulary_name_file_and_labels(tmp_path):
    mask = np.zeros((64, 48), np.uint8)
    mask[:3], mask[3:6] = 1, 5
    write_patient(tmp_path, mask=mask)
    reader = CamusReader(tmp_path)
    records = reader.scan().records
    es = next(r for r in records if r.item_id == "patient0012_4CH_ES")
    with pytest.raises(EchoDataError, match=r"CAMUS patient0012: mask patient0012_4CH_ES_gt.nii.gz "
                       r"has labels \{0,1,5\}; expected a subset of \{0,1,2,3\}"):
        reader.load(es)


def test_scan_collects_every_problem_and_skip_mode_keeps_good_items(tmp_path):
    write_patient(tmp_path, "patient0001", mask=np.zeros((64, 48), np.uint8))  # good, with masks
    write_patient(tmp_path, "patient0002")  # good: images without masks are fine
    write_patient(tmp_path, "patient0003", mask=np.zeros((64, 40), np.uint8))
    bad_dims = write_patient(tmp_path, "patient0004", image_shape=(64, 48, 3))
    corrupt = write_patient(tmp_path, "patient0005")
    (corrupt / "patient0005_4CH_ED.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (tmp_path / "database_split").mkdir()
    (tmp_path / "database_split" / "subgroup_training.txt").write_text("patient0001\npatient0002\n")
    (tmp_path / "database_split" / "subgroup_testing.txt").write_text("patient0099\n")
    with pytest.raises(EchoDataError) as err:
        CamusReader(tmp_path).scan()
    message = str(err.value)
    assert "problems" in message
    assert "mask shape (64, 40) differs from image patient0003_4CH_ED.nii.gz shape (64, 48)" in message
    assert f"{bad_dims / 'patient0004_4CH_ED.nii.gz'}: NIfTI has shape (64, 48, 3); expected a 2-D" in message
    assert f"{corrupt / 'patient0005_4CH_ED.nii.gz'}: unreadable NIfTI header" in message
    assert "CAMUS patient0099 is listed in the test split but" in message
    result = CamusReader(tmp_path, on_error="skip").scan()
    kept = Counter(r.patient_id for r in result.records)
    assert kept == {"patient0001": 2, "patient0002": 2, "patient0005": 1}
    assert len(result.issues) == 2 + 2 + 1 + 1
    assert {r.split for r in result.records if r.patient_id in ("patient0001", "patient0002")} == {"train"}
    assert "mask" not in CamusReader(tmp_path, on_error="skip").load(
        next(r for r in result.records if r.patient_id == "patient0002")).labels


def test_truncated_gzip_fails_at_load_naming_the_file(tmp_path):
    folder = write_patient(tmp_path, "patient0001")
    path = folder / "patient0001_4CH_ED.nii.gz"
    data = path.read_bytes()
    path.write_bytes(gzip.compress(gzip.decompress(data)[:400]))  # header intact, pixels cut off
    reader = CamusReader(tmp_path)
    record = next(r for r in reader.scan().records if r.item_id == "patient0001_4CH_ED")
    with pytest.raises(EchoDataError, match="patient0001_4CH_ED.nii.gz: unreadable NIfTI data"):
        reader.load(record)


def test_volumes_biplane_and_single_plane_match_ellipsoids(tmp_path):
    rng = np.random.default_rng(1)
    spacing = (0.3, 0.5)
    samples = [s for s in make_samples(rng, spacing=spacing) if s.frames.ndim == 2]
    write_camus(tmp_path, samples)
    volumes = camus_volumes(tmp_path, "patient0001")
    assert volumes["method"] == "biplane"
    # cavity: half axes 30 rows (9 mm) x 14 or 10 columns (7 or 5 mm) in both views
    edv, esv = (np.pi / 6 * 18 * (2 * r * 0.5) ** 2 / 1000 for r in (14, 10))
    assert volumes["edv"] == pytest.approx(edv, rel=0.06)
    assert volumes["esv"] == pytest.approx(esv, rel=0.06)
    assert volumes["ef"] == pytest.approx(100 * (volumes["edv"] - volumes["esv"]) / volumes["edv"])
    cavity = (samples[0].labels["mask"] == 1).sum() * 0.15
    assert volumes["areas_mm2"]["A4C_ED"] == pytest.approx(cavity)
    single = tmp_path / "single"
    write_camus(single, [s for s in samples if s.labels["view"] == "A4C"])
    one_view = camus_volumes(CamusReader(single), "patient0001")
    assert one_view["method"] == "single-plane A4C"
    assert one_view["edv"] == pytest.approx(simpson_volume_ml(samples[0].labels["mask"], spacing))


def test_writer_rejects_what_camus_cannot_hold(tmp_path):
    image = Sample("camus", "patient0001", "patient0001", "x", np.zeros((8, 8), np.uint8),
                   spacing=(1, 1), labels={"view": "PLAX", "phase": "ED"})
    with pytest.raises(ValueError, match="view must be A4C or A2C"):
        write_camus(tmp_path, [image])
    image.labels["view"], image.spacing = "A4C", None
    with pytest.raises(ValueError, match="need a pixel spacing"):
        write_camus(tmp_path, [image])


@pytest.mark.realdata
def test_real_camus_subset(camus_root):
    start = time.perf_counter()
    reader = CamusReader(camus_root)
    result = reader.scan()
    scan_s = time.perf_counter() - start
    assert len(result.patients) == 499 and len(result.records) == 998 and not result.issues
    splits = Counter(r.split for r in result.records if r.item_id.endswith("_ED"))
    assert splits == {"train": 399, "val": 50, "test": 50}
    start = time.perf_counter()
    samples = [reader.load(r) for r in result.records]
    load_s = time.perf_counter() - start
    labels = set()
    masks: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]] = {}
    for sample in samples:
        assert sample.spacing[0] > 0 and sample.spacing[1] > 0
        assert sample.frames.dtype == np.uint8 and sample.frames.shape == sample.labels["mask"].shape
        labels |= set(np.unique(sample.labels["mask"]).tolist())
        masks[(sample.patient_id, sample.labels["phase"])] = (sample.labels["mask"], sample.spacing)
    assert labels == {0, 1, 2, 3}
    edv = np.array([simpson_volume_ml(*masks[(p, "ED")]) for p in sorted(result.patients)])
    esv = np.array([simpson_volume_ml(*masks[(p, "ES")]) for p in sorted(result.patients)])
    ef = 100 * (edv - esv) / edv
    assert 60 < np.median(edv) < 200 and 30 < np.median(ef) < 75
    assert camus_volumes(reader, "patient0001")["edv"] == pytest.approx(edv[0])
    print(f"\nCAMUS real subset: scan {scan_s:.2f} s, load {len(samples)} items {load_s:.2f} s; "
          f"median EDV {np.median(edv):.1f} mL, ESV {np.median(esv):.1f} mL, EF {np.median(ef):.1f} %")


def test_writer_is_the_registered_one():
    assert get_writer("camus") is write_camus
