"""DICOM folders as a hospital exports them: reader (the writer lives in :mod:`fedecho.data.dicom_write`).

**Files.** Any tree under the root. A file is a candidate when its suffix is ``.dcm``/``.dicom``
(any case), or when it has no suffix or a numeric one (``IM_0001``, ``1.2.840...937``) and carries
the ``DICM`` preamble. Other files and hidden files are ignored, and so are DICOMDIR index files.
Scanning reads headers only (``dcmread(stop_before_pixels=True)``) and checks, per file: not empty,
DICOM, has native or encapsulated pixel data (not truncated), image attributes present, ids present.

**Ids.** ``patient_id`` = PatientID, ``study_id`` = StudyInstanceUID, ``item_id`` = SOPInstanceUID.
A file lacking one is an issue. With ``id_fallback=True`` a missing PatientID becomes the
StudyInstanceUID (each study then counts as its own patient: two studies of one person could land
in different splits), a missing StudyInstanceUID becomes the file's folder relative to the root and
a missing SOPInstanceUID the file's relative path.

**Pixels.** Decoded with pydicom's decoders (pylibjpeg + libjpeg/openjpeg, Pillow for 8-bit JPEG
baseline/extended as it is ~3x faster). Frames become grayscale uint8: (T, H, W) when
NumberOfFrames > 1, else (H, W). YBR_FULL/YBR_FULL_422: the Y (luma) channel; YBR_PARTIAL_*: Y
rescaled from 16..235; RGB (and PALETTE COLOR after its lookup table): luminance
0.299 R + 0.587 G + 0.114 B (OpenCV's rounding); MONOCHROME1 is inverted. Pixels with more than 8
stored bits are scaled linearly from the file's min..max onto 0..255 (palette tables: top 8 bits).

**Spacing and rate.** ``spacing`` (row, column) mm from the first 2-D region of
SequenceOfUltrasoundRegions with cm units (PhysicalDeltaY/X x 10), else PixelSpacing. ``fps``:
1000 / FrameTime (rounded to 1e-3, as FrameTime is a decimal string), else CineRate, else
RecommendedDisplayFrameRate.

**Labels.** From the header: ``age`` (PatientAge), ``sex`` (PatientSex M/F), ``scanner``
(Manufacturer + ManufacturerModelName). From an optional CSV (``labels_csv``, default
``<root>/labels.csv`` if present), which overrides the header: one key column, ``SOPInstanceUID``
or ``file`` (alias ``FileName``: the path relative to the root, or a base name that is unique under
the root), and columns named after canonical label keys (case-insensitive): view, phase, ef, edv,
esv, age, sex, image_quality, as_grade, ed_frame, es_frame, scanner, split. Blank cells mean no
value. Unknown columns are an error. Without a split column every ``split`` is ``None``; files
without a split inherit their patient's split; a patient in two splits is an issue
(``split_conflicts="issue"``) or moved to its majority split (``"majority"``, logged).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
)

from fedecho.data.base import READERS, EchoReader, OnError
from fedecho.data.dicom_write import (
    LABEL_COLUMNS,
    dicom_uid_for,
    parse_label_cell,
    write_dicom,
)
from fedecho.data.dicom_pixels import decode_grayscale, dicom_fps, dicom_spacing
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord, Sample, ScanResult
from fedecho.data.splits import resolve_patient_splits

__all__ = [
    "LABEL_COLUMNS",
    "DicomReader",
    "decode_grayscale",
    "dicom_fps",
    "dicom_spacing",
    "dicom_uid_for",
    "write_dicom",
]

log = logging.getLogger(__name__)

_KEY_COLUMNS = {"sopinstanceuid": "SOPInstanceUID", "file": "file", "filename": "file"}
_DICOMDIR = "1.2.840.10008.1.3.10"
_PIXEL_DATA = 0x7FE00010
_IMAGE_ATTRIBUTES = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")


@READERS.register("dicom")
class DicomReader(EchoReader):
    """Reads a tree of DICOM files (see the module docstring for what is accepted).

    ``labels_csv``: path (absolute or relative to the root), default ``labels.csv`` when present.
    ``id_fallback``: derive missing ids as documented instead of reporting them.
    ``split_conflicts``: ``"issue"`` or ``"majority"`` for patients found in several splits.
    """

    format = "dicom"

    def __init__(
        self,
        root: str | Path,
        *,
        on_error: OnError = "raise",
        labels_csv: str | Path | None = None,
        id_fallback: bool = False,
        split_conflicts: Literal["issue", "majority"] = "issue",
    ) -> None:
        super().__init__(root, on_error=on_error)
        if split_conflicts not in ("issue", "majority"):
            raise ValueError(f"split_conflicts must be 'issue' or 'majority', got {split_conflicts!r}")
        self.id_fallback = id_fallback
        #: with ``id_fallback``: how many files had each id derived at the last scan
        self.derived_ids: dict[str, int] = {}
        self.split_conflicts = split_conflicts
        if labels_csv is None:
            default = self.root / "labels.csv"
            self.labels_csv = default if default.is_file() else None
        else:
            path = Path(labels_csv)
            self.labels_csv = path if path.is_absolute() else self.root / path
            if not self.labels_csv.is_file():
                raise EchoDataError.at(self.labels_csv, "labels CSV does not exist")

    # --- scan ---------------------------------------------------------------------------------
    def _scan(self) -> ScanResult:
        records: list[ItemRecord] = []
        issues: list[DataIssue] = []
        seen: dict[str, str] = {}
        self.derived_ids = {}
        for path in _candidate_files(self.root):
            try:
                record = self._header_record(path)
            except EchoDataError as err:
                issues += err.issues
                continue
            if record is None:
                continue
            if record.item_id in seen:
                first = seen[record.item_id]
                issues.append(DataIssue(str(path), f"duplicate SOPInstanceUID {record.item_id} (also {first})"))
                continue
            seen[record.item_id] = str(path)
            records.append(record)
        if self.derived_ids:
            log.warning("%s: ids derived (id_fallback): %s", self.root,
                        ", ".join(f"{k} for {n} file(s)" for k, n in sorted(self.derived_ids.items())))
        if self.labels_csv is not None:
            records, label_issues = _apply_labels(self.root, self.labels_csv, records)
            issues += label_issues
        records, split_issues = resolve_patient_splits(records, self.split_conflicts, where="the labels CSV", unit="files")
        return ScanResult(records, issues + split_issues)

    def _header_record(self, path: Path) -> ItemRecord | None:
        ds = _read_header(path)
        if ds is None:
            return None
        rel = path.relative_to(self.root)
        ids = {key: str(ds.get(key, "") or "").strip() for key in ("PatientID", "StudyInstanceUID", "SOPInstanceUID")}
        missing = [key for key, value in ids.items() if not value]
        if missing and not self.id_fallback:
            raise EchoDataError.at(
                path, f"missing {', '.join(missing)}; patient-level splits need them "
                "(fix the export, or derive them as documented: data.id_fallback=true, "
                "--id-fallback on fedecho data check / fedecho-client check|start)",
            )  # fmt: skip
        study = ids["StudyInstanceUID"] or (rel.parent.as_posix() or ".")
        patient = ids["PatientID"] or ids["StudyInstanceUID"]
        if not patient:
            raise EchoDataError.at(path, "missing PatientID and StudyInstanceUID; no patient id can be derived")
        for key in missing:
            self.derived_ids[key] = self.derived_ids.get(key, 0) + 1
        return ItemRecord(
            source=self.format, patient_id=patient, study_id=study, item_id=ids["SOPInstanceUID"] or rel.as_posix(),
            path=str(path), labels=_header_labels(ds), files={"dicom": str(path)},
        )  # fmt: skip

    # --- load ---------------------------------------------------------------------------------
    def load(self, record: ItemRecord) -> Sample:
        """Decode one file: frames (T, H, W) or (H, W) uint8, spacing (mm), fps."""
        path = Path(record.files.get("dicom", record.path))
        try:
            ds = pydicom.dcmread(path)
        except (OSError, InvalidDicomError, ValueError, EOFError) as err:
            raise EchoDataError.at(path, f"unreadable DICOM file: {err}") from None
        frames = decode_grayscale(ds, path)
        return Sample.from_record(record, frames, spacing=dicom_spacing(ds), fps=dicom_fps(ds))


# --- pixels -------------------------------------------------------------------------------------
def _candidate_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        suffix = path.suffix.lower()
        if suffix in (".dcm", ".dicom"):
            out.append(path)
        elif suffix == "" or suffix[1:].isdigit():
            with open(path, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    out.append(path)
    return out


def _read_header(path: Path) -> Dataset | None:
    """Header without pixels; check the pixel data element is there and complete. None: DICOMDIR."""
    size = path.stat().st_size
    if size == 0:
        raise EchoDataError.at(path, "zero-byte file")
    with open(path, "rb") as handle:
        try:
            ds = pydicom.dcmread(handle, stop_before_pixels=True)
        except InvalidDicomError:
            raise EchoDataError.at(path, "not a DICOM file (no 'DICM' preamble at byte 128)") from None
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt headers
            raise EchoDataError.at(path, f"unreadable DICOM header: {err}") from None
        position = handle.tell()
        head = handle.read(12)
    if ds.file_meta.get("MediaStorageSOPClassUID") == _DICOMDIR:
        return None
    implicit, little = ds.original_encoding
    order = "little" if little else "big"
    tag = (int.from_bytes(head[0:2], order) << 16) | int.from_bytes(head[2:4], order) if len(head) >= 8 else None
    if tag != _PIXEL_DATA:
        sop = UID(str(ds.get("SOPClassUID", ""))).name or "unknown SOP class"
        floats = tag is not None and tag >> 16 == 0x7FE0
        what = "float pixel data, which is not supported" if floats else "no pixel data"
        raise EchoDataError.at(path, f"{what} ({sop}): not an image")
    missing = [key for key in _IMAGE_ATTRIBUTES if key not in ds]
    if missing:
        raise EchoDataError.at(path, f"image attributes missing: {', '.join(missing)}")
    length = int.from_bytes(head[4:8] if implicit else head[8:12], order)
    header_bytes = 8 if implicit else 12
    if length != 0xFFFFFFFF:  # native (uncompressed) pixel data: check it is all there
        expected = get_expected_length(ds, unit="bytes")
        available = size - position - header_bytes
        if length < expected or available < expected:
            raise EchoDataError.at(
                path, f"truncated pixel data: {min(length, available)} bytes of the {expected} that "
                f"{ds.Rows}x{ds.Columns}x{ds.get('NumberOfFrames', 1)} frames need",
            )  # fmt: skip
    return ds


def _header_labels(ds: Dataset) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    match = re.fullmatch(r"(\d{1,3})([DWMY])", str(ds.get("PatientAge", "") or "").strip().upper())
    if match:
        labels["age"] = float(match[1]) / {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}[match[2]]
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    if sex in ("M", "F"):
        labels["sex"] = sex
    scanner = " ".join(str(ds.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName")).strip()
    if scanner:
        labels["scanner"] = scanner
    return labels


# --- labels CSV ---------------------------------------------------------------------------------
def _apply_labels(
    root: Path, csv_path: Path, records: list[ItemRecord]
) -> tuple[list[ItemRecord], list[DataIssue]]:
    """Merge CSV labels into ``records``; rows with bad values or unknown files are issues."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [name.strip() for name in rows[0]] if rows else []
    columns: list[str | None] = []
    unknown = []
    for name in header:
        canonical = _KEY_COLUMNS.get(name.lower()) or (name.lower() if name.lower() in LABEL_COLUMNS else None)
        columns.append(canonical)
        if canonical is None:
            unknown.append(name)
    keys = [c for c in columns if c in ("SOPInstanceUID", "file")]
    if unknown or not keys:
        problem = f"unknown columns {unknown}" if unknown else "no key column"
        raise EchoDataError.at(
            csv_path, f"{problem}; a labels CSV needs a key column SOPInstanceUID or file (FileName) and "
            f"label columns among {list(LABEL_COLUMNS)}",
        )  # fmt: skip
    by_uid = {r.item_id: i for i, r in enumerate(records)}
    by_rel = {Path(r.path).relative_to(root).as_posix(): i for i, r in enumerate(records)}
    by_name: dict[str, list[int]] = {}
    for rel, i in by_rel.items():
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(i)
    issues: list[DataIssue] = []
    labelled: dict[int, int] = {}
    bad: set[int] = set()
    out = list(records)
    for line, row in enumerate(rows[1:], start=2):
        cells = {c: v.strip() for c, v in zip(columns, row, strict=False) if c is not None and v.strip()}
        where = f"{csv_path} row {line}"
        uid, name = cells.pop("SOPInstanceUID", ""), cells.pop("file", "").replace("\\", "/").removeprefix("./")
        if not uid and not name:
            if cells:
                issues.append(DataIssue(where, "no SOPInstanceUID and no file to say which DICOM it labels"))
            continue
        if uid:
            index, problem = by_uid.get(uid), f"SOPInstanceUID {uid} matches no DICOM file under {root}"
        elif name in by_rel:
            index, problem = by_rel[name], ""
        else:
            matches = by_name.get(name, [])
            index = matches[0] if len(matches) == 1 else None
            problem = (
                f"file {name} does not exist under {root}" if not matches
                else f"file name {name} is ambiguous ({len(matches)} files); give the relative path"
            )  # fmt: skip
        if index is None:
            issues.append(DataIssue(where, problem))
            continue
        if index in labelled:
            issues.append(DataIssue(where, f"labels {records[index].path} again (first at row {labelled[index]})"))
            bad.add(index)
            continue
        labelled[index] = line
        labels, split, problems = dict(records[index].labels), None, []
        for column, text in cells.items():
            try:
                value = parse_label_cell(column, text)
            except ValueError as err:
                problems.append(str(err))
                continue
            if column == "split":
                split = value
            else:
                labels[column] = value
        if problems:
            issues.append(DataIssue(where, f"{records[index].path}: " + "; ".join(problems)))
            bad.add(index)
        out[index] = replace(records[index], labels=labels, split=split)
    return [r for i, r in enumerate(out) if i not in bad], issues
