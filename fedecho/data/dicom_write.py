"""Write Samples as a hospital-style DICOM export (read back by :class:`fedecho.data.dicom.DicomReader`),
and the ``labels.csv`` schema both directions share.

Layout: ``<root>/<PatientID>/<study_id>/<n>.dcm`` (folder names with characters other than
letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``; ``n`` = InstanceNumber, from 1 in each
folder) plus ``<root>/labels.csv`` keyed by SOPInstanceUID with one column per scalar label and
``split``. Files are uncompressed Explicit VR Little Endian, 8-bit; a video (T, H, W) with T > 1
is Ultrasound Multi-frame Image Storage (NumberOfFrames, FrameTime, CineRate), anything else
Ultrasound Image Storage (a (1, H, W) clip therefore reads back as an (H, W) image).

Ids: PatientID = ``patient_id``; StudyInstanceUID = ``dicom_uid_for(patient_id, study_id)``;
SOPInstanceUID = ``dicom_uid_for(patient_id, study_id, item_id)``. These are the ids the reader
returns, so samples whose ``study_id`` / ``item_id`` already are valid UIDs round-trip unchanged.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable
from numbers import Real
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from fedecho.data.schema import AS_GRADES, VIEWS, Sample
from fedecho.data.splits import SPLITS

__all__ = [
    "CSV_LABELS",
    "LABEL_COLUMNS",
    "Photometric",
    "dicom_uid_for",
    "parse_label_cell",
    "sample_to_dataset",
    "write_dicom",
]

Photometric = Literal["MONOCHROME2", "RGB", "YBR_FULL"]

#: The labels CSV's label columns (canonical keys) and how a cell is parsed: a type, or the valid values.
LABEL_COLUMNS: dict[str, type | tuple[str, ...]] = {
    "view": VIEWS, "phase": ("ED", "ES"), "ef": float, "edv": float, "esv": float, "age": float,
    "sex": ("M", "F"), "image_quality": str, "as_grade": AS_GRADES, "ed_frame": int, "es_frame": int,
    "scanner": str, "split": SPLITS,
}  # fmt: skip
#: Scalar labels written to ``labels.csv`` (in this column order); other labels are not written.
CSV_LABELS: tuple[str, ...] = tuple(key for key in LABEL_COLUMNS if key != "split")


def parse_label_cell(column: str, text: str) -> str | float | int:
    """Parse one non-blank labels-CSV cell of a :data:`LABEL_COLUMNS` column; ``ValueError`` if invalid.

    ``split`` is matched case-insensitively (``TRAIN`` -> ``train``), ``sex`` and ``phase``
    upper-cased; ``ed_frame``/``es_frame`` accept ``12`` or ``12.0``.
    """
    kind = LABEL_COLUMNS[column]
    if isinstance(kind, tuple):
        value = text.lower() if column == "split" else text.upper() if column in ("sex", "phase") else text
        if value not in kind:
            raise ValueError(f"{column} {text!r} is not one of {list(kind)}")
        return value
    try:
        return int(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a valid {kind.__name__}") from None


def dicom_uid_for(*ids: str) -> str:
    """The UID written for the last of ``ids``: itself when it is a valid DICOM UID, else a UID
    derived deterministically (pydicom ``generate_uid`` with ``ids`` as entropy sources)."""
    if not ids:
        raise ValueError("dicom_uid_for needs at least one id")
    last = str(ids[-1])
    if len(last) <= 64 and RE_VALID_UID.match(last):
        return last
    return str(generate_uid(entropy_srcs=["fedecho", *map(str, ids)]))


def sample_to_dataset(
    sample: Sample, *, photometric: Photometric = "MONOCHROME2", instance_number: int = 1
) -> FileDataset:
    """One Sample as an ultrasound DICOM dataset (uncompressed, 8-bit).

    ``sample.frames`` must be uint8 (T, H, W) or (H, W). ``photometric`` ``"RGB"`` stores the gray
    value in all three channels, ``"YBR_FULL"`` stores Y = gray, Cb = Cr = 128 (both decode back
    to the same gray frames). Raises ``ValueError`` naming the sample on bad input.
    """
    name = f"DICOM sample {sample.item_id!r} (patient {sample.patient_id!r})"
    frames = np.asarray(sample.frames)
    if frames.dtype != np.uint8 or frames.ndim not in (2, 3):
        raise ValueError(f"{name}: frames must be uint8 (T, H, W) or (H, W), got {frames.dtype} {frames.shape}")
    if photometric not in ("MONOCHROME2", "RGB", "YBR_FULL"):
        raise ValueError(f"{name}: photometric must be MONOCHROME2, RGB or YBR_FULL, got {photometric!r}")
    patient = str(sample.patient_id)
    if not patient or len(patient) > 64 or "\\" in patient or not patient.isprintable():
        raise ValueError(f"{name}: PatientID must be 1-64 printable characters without '\\'")
    if frames.ndim == 3 and frames.shape[0] == 1:
        frames = frames[0]
    video = frames.ndim == 3
    sop_class = UltrasoundMultiFrameImageStorage if video else UltrasoundImageStorage
    study_uid = dicom_uid_for(patient, sample.study_id)
    sop_uid = dicom_uid_for(patient, sample.study_id, sample.item_id)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = str(generate_uid(entropy_srcs=["fedecho-series", patient, str(sample.study_id)]))
    ds.Modality = "US"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, "", ""
    ds.PatientSex = sample.labels.get("sex", "") if sample.labels.get("sex") in ("M", "F") else ""
    age = sample.labels.get("age")
    if isinstance(age, Real) and age >= 0:
        ds.PatientAge = _age_string(float(age))
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
    ds.StudyDate, ds.StudyTime = "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, instance_number
    ds.Manufacturer = str(sample.labels.get("scanner", "") or "")[:64]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "00"
    if sample.spacing is not None:
        ds.SequenceOfUltrasoundRegions = DicomSequence([_region(frames.shape[-2:], sample.spacing)])
    if video:
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
        ds.FrameTime = f"{1000.0 / sample.fps:.10g}"[:16] if sample.fps else "0"
        if sample.fps:
            ds.CineRate = int(round(sample.fps))
    if photometric == "MONOCHROME2":
        pixels = frames
    elif photometric == "RGB":
        pixels = np.repeat(frames[..., None], 3, axis=-1)
    else:
        pixels = np.stack([frames, np.full_like(frames, 128), np.full_like(frames, 128)], axis=-1)
    ds.set_pixel_data(pixels, photometric, 8, generate_instance_uid=False)
    return ds


def write_dicom(root: str | Path, samples: Iterable[Sample], *, photometric: Photometric = "MONOCHROME2") -> None:
    """Write Samples as ``<root>/<PatientID>/<study>/<n>.dcm`` plus ``<root>/labels.csv``.

    ``labels.csv``: ``SOPInstanceUID``, one column per label of :data:`CSV_LABELS` present in any
    sample, and ``split`` (blank for ``None``). Masks, landmarks and measurements are not written.
    Files of an earlier write to the same folders are overwritten, ``labels.csv`` replaced.
    Raises ``ValueError`` naming the sample on bad frames, ids or a repeated item.
    """
    root = Path(root)
    rows: list[dict[str, str]] = []
    used: set[str] = set()
    counters: Counter[Path] = Counter()
    for sample in samples:
        folder = root / _safe(str(sample.patient_id)) / _safe(str(sample.study_id))
        counters[folder] += 1
        ds = sample_to_dataset(sample, photometric=photometric, instance_number=counters[folder])
        if ds.SOPInstanceUID in used:
            raise ValueError(f"DICOM sample {sample.item_id!r} of study {sample.study_id!r} is written twice")
        used.add(ds.SOPInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{counters[folder]}.dcm", enforce_file_format=True)
        row = {"SOPInstanceUID": str(ds.SOPInstanceUID), "split": sample.split or ""}
        for key in CSV_LABELS:
            value = sample.labels.get(key)
            if value is not None:
                row[key] = str(value.item() if isinstance(value, np.generic) else value)
        rows.append(row)
    present = [key for key in CSV_LABELS if any(key in row for row in rows)]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["SOPInstanceUID", *present, "split"], restval="")
        writer.writeheader()
        writer.writerows(rows)


def _region(shape: tuple[int, int], spacing: tuple[float, float]) -> Dataset:
    """One 2-D tissue region covering the image, physical deltas in cm from (row, col) mm."""
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = int(shape[1]) - 1, int(shape[0]) - 1
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = float(spacing[1]) / 10.0, float(spacing[0]) / 10.0
    return region


def _age_string(years: float) -> str:
    """DICOM AS value: ``065Y``, or months / weeks / days for infants."""
    for unit, per_year in (("Y", 1.0), ("M", 12.0), ("W", 365.25 / 7)):
        if years * per_year >= 1:
            return f"{min(int(years * per_year), 999):03d}{unit}"
    return f"{int(years * 365.25):03d}D"


def _safe(name: str) -> str:
    """A folder name from an id: unusual characters and leading dots (hidden, ``..``) become ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return re.sub(r"^\.+", lambda m: "_" * len(m[0]), safe) or "_"
