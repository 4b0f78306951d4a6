"""DICOM folder reader and writer: round trip, pydicom's real ultrasound files, colour conversion,
compressed syntaxes, validation, labels CSV and patient-level splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder
from pydicom.uid import (
    MPEG4HP41,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

import fedecho.data.dicom_pixels as dicom_module
from fedecho.data import EchoDataError, Sample, open_reader
from fedecho.data.dicom import DicomReader, decode_grayscale, dicom_uid_for, write_dicom
from fedecho.data.dicom_write import sample_to_dataset


def _real(name: str, dest: Path) -> Path:
    """Copy one of pydicom's bundled test files (offline) to ``dest``."""
    source = get_testdata_file(name)
    assert source is not None, f"pydicom test file {name} is not bundled"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, dest)
    return dest


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma 0.299 R + 0.587 G + 0.114 B, rounded (the reference for colour conversion)."""
    rgb = rgb.astype(np.float64)
    return np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)


def _samples() -> list[Sample]:
    rng = np.random.default_rng(7)
    return [
        Sample("synthetic", "P001", "study-A", "clip-1", rng.integers(0, 256, (6, 20, 24), dtype=np.uint8),
               spacing=(0.3, 0.25), fps=50.0, split="train",
               labels={"view": "A4C", "ef": 57.5, "edv": 120.25, "esv": 51.1, "age": 65.4, "sex": "F",
                       "ed_frame": 0, "es_frame": 4, "scanner": "Vendor X"}),
        Sample("synthetic", "P001", "study-A", "still-1", rng.integers(0, 256, (20, 24), dtype=np.uint8),
               spacing=(0.2, 0.2), split="train", labels={"view": "PLAX", "as_grade": "moderate_AS"}),
        Sample("synthetic", "P002", "study-B", "clip-2", rng.integers(0, 256, (3, 9, 11), dtype=np.uint8),
               fps=29.97, split="test", labels={"image_quality": "Poor", "phase": "ED"}),
        Sample("synthetic", "P/3", "study C", "clip-3", rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)),
    ]  # fmt: skip


# --- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB", "YBR_FULL"])
def test_round_trip(tmp_path, photometric):
    samples = _samples()
    write_dicom(tmp_path, samples, photometric=photometric)
    reader = open_reader("dicom", tmp_path)
    assert isinstance(reader, DicomReader)
    loaded = {s.item_id: s for s in reader.iter_samples()}
    assert len(loaded) == len(samples)
    for original in samples:
        back = loaded[dicom_uid_for(original.patient_id, original.study_id, original.item_id)]
        assert back.patient_id == original.patient_id
        assert back.study_id == dicom_uid_for(original.patient_id, original.study_id)
        assert back.split == original.split
        assert back.labels == original.labels
        assert back.frames.dtype == np.uint8
        np.testing.assert_array_equal(back.frames, original.frames)
        if original.spacing is None:
            assert back.spacing is None
        else:
            assert back.spacing == pytest.approx(original.spacing, rel=1e-12)
        assert back.fps == (None if original.fps is None else pytest.approx(original.fps, abs=1e-3))


def test_written_files_are_ultrasound_objects(tmp_path):
    write_dicom(tmp_path, _samples())
    clip = pydicom.dcmread(tmp_path / "P001/study-A/1.dcm")
    still = pydicom.dcmread(tmp_path / "P001/study-A/2.dcm")
    assert (tmp_path / "P_3/study_C/1.dcm").is_file()  # ids made safe as folder names
    assert clip.SOPClassUID == UltrasoundMultiFrameImageStorage and still.SOPClassUID == UltrasoundImageStorage
    assert clip.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    assert clip.file_meta.MediaStorageSOPInstanceUID == clip.SOPInstanceUID
    assert (clip.NumberOfFrames, clip.Rows, clip.Columns, clip.BitsAllocated) == (6, 20, 24, 8)
    assert "NumberOfFrames" not in still and still.PhotometricInterpretation == "MONOCHROME2"
    assert (clip.Modality, clip.PatientID, clip.PatientAge, clip.PatientSex) == ("US", "P001", "065Y", "F")
    assert float(clip.FrameTime) == 20.0 and clip.CineRate == 50
    region = clip.SequenceOfUltrasoundRegions[0]
    assert (region.PhysicalUnitsXDirection, region.PhysicalDeltaX, region.PhysicalDeltaY) == (3, 0.025, 0.03)
    assert clip.StudyInstanceUID == still.StudyInstanceUID and clip.SeriesInstanceUID == still.SeriesInstanceUID
    # deterministic: writing again gives the same UIDs
    write_dicom(tmp_path / "again", _samples())
    assert pydicom.dcmread(tmp_path / "again/P001/study-A/1.dcm").SOPInstanceUID == clip.SOPInstanceUID
    header = (tmp_path / "labels.csv").read_text().splitlines()[0]
    assert header.split(",") == [
        "SOPInstanceUID", "view", "phase", "ef", "edv", "esv", "age", "sex", "image_quality", "as_grade",
        "ed_frame", "es_frame", "scanner", "split",
    ]  # fmt: skip


def test_uid_ids_round_trip_unchanged(tmp_path):
    sample = Sample("s", "P9", "1.2.3.4", "1.2.3.4.5", np.arange(12, dtype=np.uint8).reshape(3, 4))
    write_dicom(tmp_path, [sample])
    (back,) = DicomReader(tmp_path).iter_samples()
    assert (back.patient_id, back.study_id, back.item_id) == ("P9", "1.2.3.4", "1.2.3.4.5")
    assert dicom_uid_for("P9", "study") == dicom_uid_for("P9", "study") != dicom_uid_for("P8", "study")


def test_writer_rejects_bad_samples(tmp_path):
    with pytest.raises(ValueError, match=r"'x'.*uint8 \(T, H, W\) or \(H, W\), got float32"):
        write_dicom(tmp_path, [Sample("s", "P", "S", "x", np.zeros((4, 4), np.float32))])
    with pytest.raises(ValueError, match="PatientID must be 1-64"):
        write_dicom(tmp_path, [Sample("s", "", "S", "x", np.zeros((4, 4), np.uint8))])
    twice = Sample("s", "P", "S", "x", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="written twice"):
        write_dicom(tmp_path, [twice, twice])


# --- pydicom's real ultrasound files -----------------------------------------------------------
def test_real_ybr_full_422_jpeg_cine(tmp_path):
    _real("examples_ybr_color.dcm", tmp_path / "export/204/IM_0001")  # no extension: found by preamble
    reader = DicomReader(tmp_path)
    (record,) = reader.scan().records
    sample = reader.load(record)
    ds = pydicom.dcmread(record.path)
    assert (record.patient_id, record.study_id, record.item_id) == ("204", ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert sample.frames.shape == (30, 240, 320) and sample.frames.dtype == np.uint8
    # luma Y of the JPEG equals the luminance of pydicom's RGB decoding up to JPEG rounding/clipping
    reference = _luminance(ds.pixel_array)
    difference = np.abs(sample.frames.astype(np.float64) - reference)
    assert difference.mean() < 0.05 and np.percentile(difference, 99) <= 1
    assert sample.fps == 30.0  # FrameTime 33.333 ms
    assert sample.spacing == pytest.approx((0.5104970559477806, 0.5104970559477806))  # 0.0510 cm
    assert record.labels == {"scanner": "SonoSite, Inc. Turbo"}


def test_real_rgb_and_its_lossless_encodings_decode_identically(tmp_path):
    source = _real("examples_rgb_color.dcm", tmp_path / "a/rgb.dcm")
    rgb = pydicom.dcmread(source).pixel_array
    for index, (uid, name) in enumerate(((JPEG2000Lossless, "j2k.dcm"), (RLELossless, "rle.dcm"))):
        ds = pydicom.dcmread(source)
        ds.compress(uid, encoding_plugin="pylibjpeg" if uid == JPEG2000Lossless else "")
        assert ds.file_meta.TransferSyntaxUID == uid
        ds.SOPInstanceUID = f"1.2.3.{index}"
        ds.save_as(tmp_path / "a" / name)
    reader = DicomReader(tmp_path)
    frames = {Path(r.path).name: reader.load(r).frames for r in reader.scan().records}
    assert sorted(frames) == ["j2k.dcm", "rgb.dcm", "rle.dcm"]
    assert frames["rgb.dcm"].shape == (240, 320)
    np.testing.assert_array_equal(frames["j2k.dcm"], frames["rgb.dcm"])
    np.testing.assert_array_equal(frames["rle.dcm"], frames["rgb.dcm"])
    assert np.abs(frames["rgb.dcm"] - _luminance(rgb)).max() <= 1  # OpenCV's fixed-point rounding


def test_real_jpeg2000_ybr_rct_and_palette(tmp_path):
    j2k = _real("examples_jpeg2k.dcm", tmp_path / "j2k.dcm")
    palette = _real("examples_palette.dcm", tmp_path / "palette.dcm")
    reader = DicomReader(tmp_path)
    frames = {Path(r.path).name: reader.load(r) for r in reader.scan().records}
    assert frames["j2k.dcm"].frames.shape == (480, 640)
    assert np.abs(frames["j2k.dcm"].frames - _luminance(pydicom.dcmread(j2k).pixel_array)).max() <= 1
    ds = pydicom.dcmread(palette)
    expected = _luminance(apply_color_lut(ds.pixel_array, ds) >> 8)  # 16-bit table entries
    assert frames["palette.dcm"].frames.shape == (350, 800)
    assert np.abs(frames["palette.dcm"].frames - expected).max() <= 1
    assert frames["palette.dcm"].spacing == pytest.approx((0.2622878766, 0.2622878766))


def test_real_16_bit_lossless_syntaxes_decode_identically(tmp_path):
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    for index, name in enumerate(names):
        ds = pydicom.dcmread(_real(name, tmp_path / name))
        ds.SOPInstanceUID = f"1.2.3.{index}"
        ds.save_as(tmp_path / name)
    assert pydicom.dcmread(tmp_path / names[3]).file_meta.TransferSyntaxUID == JPEGLSLossless
    reader = DicomReader(tmp_path)
    frames = [reader.load(r).frames for r in reader.scan().records]
    assert len(frames) == 4
    raw = pydicom.dcmread(tmp_path / "MR_small.dcm").pixel_array.astype(np.float64)
    expected = np.rint((raw - raw.min()) * 255.0 / (raw.max() - raw.min()))  # min..max -> 0..255
    for decoded in frames:
        np.testing.assert_array_equal(decoded, frames[0])
    assert np.abs(frames[0] - expected).max() <= 1 and frames[0].min() == 0 and frames[0].max() == 255


def test_colour_conversion_on_known_colours():
    sample = Sample("s", "P", "S", "x", np.zeros((2, 3), np.uint8))
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 255], [0, 0, 0], [128, 64, 32]]], np.uint8)
    expected = [[76, 150, 29], [255, 0, 79]]  # 0.299 R + 0.587 G + 0.114 B; 38.27 + 37.57 + 3.65 = 79.49
    rgb = sample_to_dataset(sample, photometric="RGB")
    rgb.PixelData = colours.tobytes()
    np.testing.assert_array_equal(decode_grayscale(rgb), expected)
    ybr = sample_to_dataset(sample, photometric="YBR_FULL")
    ybr.PixelData = convert_color_space(colours, "RGB", "YBR_FULL").tobytes()
    assert np.abs(decode_grayscale(ybr).astype(int) - expected).max() <= 1
    mono1 = sample_to_dataset(Sample("s", "P", "S", "x", np.array([[0, 10, 255]], np.uint8)))
    mono1.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(decode_grayscale(mono1), [[255, 245, 0]])


# --- undecodable syntaxes ----------------------------------------------------------------------
def test_video_transfer_syntax_names_file_syntax_and_package(tmp_path):
    ds = sample_to_dataset(Sample("s", "P", "S", "x", np.zeros((2, 8, 8), np.uint8)))
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01\x67" + b"\x00" * 11])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "video.dcm")
    reader = DicomReader(tmp_path)
    (record,) = reader.scan().records  # the header is fine; decoding is what fails
    with pytest.raises(EchoDataError) as err:
        reader.load(record)
    text = str(err.value)
    assert "video.dcm" in text and "MPEG-4 AVC/H.264 High Profile / Level 4.1" in text
    assert "1.2.840.10008.1.2.4.102" in text and "PyAV" in text


def test_missing_decoder_plugin_names_the_package(tmp_path, monkeypatch):
    path = _real("MR_small_jpeg_ls_lossless.dcm", tmp_path / "ls.dcm")

    class NoPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-libjpeg"]

    monkeypatch.setattr(dicom_module, "get_decoder", lambda uid: NoPlugin())
    with pytest.raises(EchoDataError) as err:
        decode_grayscale(pydicom.dcmread(path), path)
    text = str(err.value)
    assert "ls.dcm" in text and "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in text
    assert "install pylibjpeg and pylibjpeg-libjpeg" in text


def test_stream_no_installed_plugin_decodes_names_file_syntax_and_gdcm(tmp_path):
    path = _real("JPEG-lossy.dcm", tmp_path / "lossy.dcm")  # 12-bit JPEG that pydicom documents as GDCM-only
    reader = DicomReader(tmp_path)
    (record,) = reader.scan().records
    if "gdcm" in get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).available_plugins:
        pytest.skip("python-gdcm is installed and decodes this stream")
    with pytest.raises(EchoDataError) as err:
        reader.load(record)
    text = str(err.value)
    assert "lossy.dcm" in text and "JPEG Extended (Process 2 and 4), 1.2.840.10008.1.2.4.51" in text
    assert "python-gdcm" in text


# --- validation ---------------------------------------------------------------------------------
def test_every_bad_file_is_reported_and_skip_keeps_good_ones(tmp_path):
    write_dicom(tmp_path, _samples()[:2])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/empty.dcm").write_bytes(b"")
    (tmp_path / "bad/text.dcm").write_text("not dicom")
    (tmp_path / "bad/README").write_text("no extension, no preamble: ignored")
    (tmp_path / "bad/notes.txt").write_text("ignored")
    _real("DICOMDIR", tmp_path / "DICOMDIR")  # an index, not data: ignored
    _real("test-SR.dcm", tmp_path / "bad/report.dcm")
    _real("MR_truncated.dcm", tmp_path / "bad/truncated.dcm")
    no_patient = pydicom.dcmread(tmp_path / "P001/study-A/2.dcm")
    del no_patient.PatientID
    no_patient.SOPInstanceUID = "1.2.3.99"
    no_patient.save_as(tmp_path / "bad/no_patient.dcm")
    no_rows = pydicom.dcmread(tmp_path / "P001/study-A/2.dcm")
    del no_rows.Rows
    no_rows.SOPInstanceUID = "1.2.3.98"
    no_rows.save_as(tmp_path / "bad/no_rows.dcm")
    shutil.copy(tmp_path / "P001/study-A/2.dcm", tmp_path / "bad/copy.dcm")
    with pytest.raises(EchoDataError) as err:
        DicomReader(tmp_path).scan()
    reasons = {Path(issue.path).name: issue.reason for issue in err.value.issues}
    assert reasons == {
        "empty.dcm": "zero-byte file",
        "text.dcm": "not a DICOM file (no 'DICM' preamble at byte 128)",
        "report.dcm": "no pixel data (Comprehensive SR Storage): not an image",
        "truncated.dcm": "truncated pixel data: 8130 bytes of the 8192 that 64x64x1 frames need",
        "no_patient.dcm": reasons["no_patient.dcm"],
        "no_rows.dcm": "image attributes missing: Rows",
        "copy.dcm": reasons["copy.dcm"],
    }
    assert reasons["no_patient.dcm"].startswith("missing PatientID; patient-level splits need them")
    assert reasons["copy.dcm"].startswith("duplicate SOPInstanceUID")
    scan = DicomReader(tmp_path, on_error="skip").scan()
    assert len(scan.records) == 2 and len(scan.issues) == 7
    fallback = DicomReader(tmp_path, on_error="skip", id_fallback=True).scan()
    derived = [r for r in fallback.records if r.item_id == "1.2.3.99"]
    assert [r.patient_id for r in derived] == [no_patient.StudyInstanceUID]


# --- labels CSV and splits -----------------------------------------------------------------------
def _two_patients(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [
        Sample("s", patient, "S1", f"{patient}-{n}", rng.integers(0, 256, (4, 5), dtype=np.uint8))
        for patient in ("A", "B") for n in range(2)
    ]  # fmt: skip
    write_dicom(tmp_path, samples)
    (tmp_path / "labels.csv").unlink()


def test_labels_by_uid_relative_path_and_unique_base_name(tmp_path):
    _two_patients(tmp_path)
    uid = pydicom.dcmread(tmp_path / "B/S1/2.dcm").SOPInstanceUID
    (tmp_path / "extra").mkdir()
    shutil.copy(tmp_path / "A/S1/1.dcm", tmp_path / "extra/unique_name.dcm")
    ds = pydicom.dcmread(tmp_path / "extra/unique_name.dcm")
    ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "extra/unique_name.dcm")
    (tmp_path / "my_labels.csv").write_text(
        "SOPInstanceUID,File,EF,View,ED_frame,split\n"
        f"{uid},,40.5,A2C,,train\n"
        ",A/S1/1.dcm,62,,3,VAL\n"
        ",unique_name.dcm,,PSAX,,\n"
    )
    scan = DicomReader(tmp_path, labels_csv="my_labels.csv").scan()
    records = {r.path.replace(str(tmp_path) + "/", ""): r for r in scan.records}
    assert records["B/S1/2.dcm"].labels == {"ef": 40.5, "view": "A2C"}
    assert records["B/S1/1.dcm"].split == "train"  # inherits its patient's split
    assert records["A/S1/1.dcm"].labels == {"ef": 62.0, "ed_frame": 3} and records["A/S1/1.dcm"].split == "val"
    assert records["extra/unique_name.dcm"].labels == {"view": "PSAX"}
    assert records["extra/unique_name.dcm"].split == "val"  # same patient A


def test_labels_csv_problems(tmp_path):
    _two_patients(tmp_path)
    (tmp_path / "labels.csv").write_text(
        "file,ef,view,split\n"
        "1.dcm,50,A4C,train\n"  # ambiguous: A/S1/1.dcm and B/S1/1.dcm
        "C/S1/1.dcm,50,A4C,train\n"  # no such file
        "A/S1/2.dcm,fifty,A5C,train\n"  # bad values
        "B/S1/2.dcm,50,A4C,holdout\n"  # bad split
        "B/S1/1.dcm,50,A4C,test\n"
        "B/S1/1.dcm,51,A4C,test\n"  # repeated
    )
    with pytest.raises(EchoDataError) as err:
        DicomReader(tmp_path).scan()
    text = str(err.value)
    assert len(err.value.issues) == 5
    assert "row 2: file name 1.dcm is ambiguous (2 files)" in text
    assert "row 3: file C/S1/1.dcm does not exist under" in text
    assert "ef 'fifty' is not a valid float; view 'A5C' is not one of" in text
    assert "split 'holdout' is not one of ['train', 'val', 'test']" in text
    assert "row 7: labels" in text and "again (first at row 6)" in text
    scan = DicomReader(tmp_path, on_error="skip").scan()
    assert sorted(r.path.replace(str(tmp_path) + "/", "") for r in scan.records) == ["A/S1/1.dcm"]
    (tmp_path / "labels.csv").write_text("file,EF,comment\nA/S1/1.dcm,50,x\n")
    with pytest.raises(EchoDataError, match=r"unknown columns \['comment'\]"):
        DicomReader(tmp_path).scan()
    with pytest.raises(EchoDataError, match="labels CSV does not exist"):
        DicomReader(tmp_path, labels_csv="nope.csv")


def test_patient_split_conflict_and_no_split_column(tmp_path):
    _two_patients(tmp_path)
    (tmp_path / "labels.csv").write_text("file,split\nA/S1/1.dcm,train\nA/S1/2.dcm,test\nB/S1/1.dcm,val\n")
    with pytest.raises(EchoDataError, match=r"patient A is in several splits of the labels CSV: train \(1 files\), test \(1 files\)"):
        DicomReader(tmp_path).scan()
    skipped = DicomReader(tmp_path, on_error="skip").scan()
    assert {(r.patient_id, r.split) for r in skipped.records} == {("B", "val")}
    moved = DicomReader(tmp_path, split_conflicts="majority").scan()
    assert {(r.patient_id, r.split) for r in moved.records} == {("A", "train"), ("B", "val")}
    (tmp_path / "labels.csv").write_text("file,view\nA/S1/1.dcm,A4C\n")
    assert {r.split for r in DicomReader(tmp_path).scan().records} == {None}


# --- id fallback from the command line and the config ----------------------------------------------
def _export_without_patient_ids(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    write_dicom(root, _samples()[:3])
    for path in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        del ds.PatientID
        ds.save_as(path)
    return root


def test_id_fallback_is_reachable_from_both_check_commands_and_counted(tmp_path, capsys):
    import json

    from fedecho.cli.client import main as client_main
    from fedecho.cli.main import main

    root = _export_without_patient_ids(tmp_path)
    assert main(["data", "check", str(root), "--format", "dicom", "--json"]) == 2
    refused = json.loads(capsys.readouterr().out)
    assert refused["readable_items"] == 0 and "--id-fallback" in refused["errors"][0]["reason"]
    assert "data.id_fallback=true" in refused["errors"][0]["reason"]
    assert main(["data", "check", str(root), "--format", "dicom", "--json", "--id-fallback"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["readable_items"] == 3 and report["derived_ids"] == {"PatientID": 3}
    assert report["patients"] == 2  # two studies: each study counts as its own patient
    assert client_main(["check", "--data", str(root), "--format", "dicom", "--id-fallback"]) == 0
    assert "ids derived (id fallback): PatientID for 3 file(s)" in capsys.readouterr().out


def test_data_id_fallback_in_the_run_config_reaches_the_reader(tmp_path):
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.data import load_site

    root = _export_without_patient_ids(tmp_path)
    base = ["data=dicom", f"data.root={root}", "data.on_error=raise", "data.split_fractions=[1.0,0.0,0.0]"]
    with pytest.raises(EchoDataError, match="data.id_fallback=true"):
        load_site(compose_run_config(base).data)
    site = load_site(compose_run_config([*base, "data.id_fallback=true"]).data)
    # the export's labels.csv puts P001's two files in train; their patient id is now their study UID
    assert len(site.train) == 2 and all(r.patient_id == r.study_id for r in site.train)
