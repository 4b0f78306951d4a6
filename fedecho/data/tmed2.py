"""TMED-2 (Tufts Medical Echocardiogram Dataset): reader and writer.

On-disk layout (as released)::

    <root>/<SourceFolder>/<query_key>          112x112 grayscale 8-bit PNGs
    <root>/DEV479/TMED2_fold0_labeledpart.csv  one split CSV (the release ships several folds)

The split CSV has the columns ``query_key, view_label, diagnosis_label, SourceFolder,
view_classifier_split, diagnosis_classifier_split`` (extra columns are ignored).

**Which CSV is read.** ``Tmed2Reader(root, csv=...)`` reads the CSV(s) given (a path or a list of
paths, absolute or relative to ``root``; rows of several CSVs are concatenated, e.g. a fold's
labelled and unlabelled parts). Without ``csv`` it reads the *first* ``*.csv`` under ``root``
(recursive, sorted by relative path, so ``DEV479/TMED2_fold0_labeledpart.csv`` is taken before
fold 1..3) whose header has all six columns; the others are ignored.

**Ids.** ``query_key`` is ``{patient}s{study}_{index}.png``: the patient id is everything before
the first ``s`` (non-empty, no ``_``), the study id is ``{patient}s{study}`` and the item id is
the key without ``.png``. ``1234s1_5.png`` -> patient ``1234``, study ``1234s1``, item ``1234s1_5``.

**Labels.** ``view_label`` -> ``view`` (one of :data:`VIEWS`), ``diagnosis_label`` -> ``as_grade``
(one of :data:`AS_GRADES`). A blank cell or TMED-2's ``Not_Provided`` means no label.

**Splits.** ``view_classifier_split`` by default, ``diagnosis_classifier_split`` with
``split_by="diagnosis"``. Values ``train``/``val``/``test``; blank or ``unlabeled`` means none, and
such a row inherits its patient's split when other rows of that patient have one (so unlabelled
images of a test patient never land in training). A patient whose rows name two splits is reported
as an issue (``split_conflicts="issue"``, default) or, with ``split_conflicts="majority"``, moved to
the split holding most of its rows (ties: train, then val, then test), with a logged warning.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from fedecho.data.base import READERS, EchoReader, OnError
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import AS_GRADES, VIEWS, DataIssue, ItemRecord, Sample, ScanResult
from fedecho.data.splits import SPLITS, resolve_patient_splits

__all__ = [
    "TMED2_COLUMNS",
    "TMED2_CSV",
    "Tmed2Reader",
    "parse_query_key",
    "source_folder_for",
    "write_tmed2",
]

log = logging.getLogger(__name__)

#: Columns every TMED-2 split CSV must have.
TMED2_COLUMNS: tuple[str, ...] = (
    "query_key",
    "view_label",
    "diagnosis_label",
    "SourceFolder",
    "view_classifier_split",
    "diagnosis_classifier_split",
)
#: Where the release (and :func:`write_tmed2`) puts the fold-0 split CSV, relative to the root.
TMED2_CSV = "DEV479/TMED2_fold0_labeledpart.csv"

_QUERY_KEY = re.compile(r"^(?P<patient>[^s_/\\]+)s(?P<study>\d+)_(?P<index>\d+)\.png$")
_NO_LABEL = {"", "not_provided", "nan", "none"}
_NO_SPLIT = {"", "unlabeled", "nan", "none"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_query_key(query_key: str) -> tuple[str, str, str]:
    """``"1234s1_5.png"`` -> ``("1234", "1234s1", "1234s1_5")`` (patient, study, item ids).

    Raises ``ValueError`` naming the expected pattern when ``query_key`` does not match it.
    """
    match = _QUERY_KEY.match(query_key)
    if match is None:
        raise ValueError(
            f"query_key {query_key!r} does not match '{{patient}}s{{study}}_{{index}}.png' "
            "(patient: no 's' or '_'; study and index: digits), e.g. '1234s1_5.png'"
        )
    patient, study = match["patient"], f"{match['patient']}s{match['study']}"
    return patient, study, f"{study}_{match['index']}"


def source_folder_for(labels: dict) -> str:
    """The release's SourceFolder for an image with these labels (used by :func:`write_tmed2`)."""
    if "as_grade" in labels:
        return "view_and_diagnosis_labeled_set/" + ("labeled" if "view" in labels else "unlabeled")
    return "view_labeled_set/labeled" if "view" in labels else "unlabeled_set/unlabeled"


@READERS.register("tmed2")
class Tmed2Reader(EchoReader):
    """Reads a TMED-2 release (see the module docstring for what is accepted).

    ``csv``: split CSV path(s), default: auto-discovered. ``split_by``: ``"view"`` or
    ``"diagnosis"`` (which ``*_classifier_split`` column gives ``split``). ``split_conflicts``:
    ``"issue"`` or ``"majority"`` for patients whose rows name several splits.
    Samples are single images: ``frames`` (H, W) uint8, ``spacing`` and ``fps`` ``None``.
    """

    format = "tmed2"

    def __init__(
        self,
        root: str | Path,
        *,
        on_error: OnError = "raise",
        csv: str | Path | Sequence[str | Path] | None = None,
        split_by: Literal["view", "diagnosis"] = "view",
        split_conflicts: Literal["issue", "majority"] = "issue",
    ) -> None:
        super().__init__(root, on_error=on_error)
        if split_by not in ("view", "diagnosis"):
            raise ValueError(f"split_by must be 'view' or 'diagnosis', got {split_by!r}")
        if split_conflicts not in ("issue", "majority"):
            raise ValueError(f"split_conflicts must be 'issue' or 'majority', got {split_conflicts!r}")
        self.split_column = f"{split_by}_classifier_split"
        self.split_conflicts = split_conflicts
        if csv is None:
            self.csv_paths = [self._discover_csv()]
        else:
            given = [csv] if isinstance(csv, (str, Path)) else list(csv)
            self.csv_paths = [p if Path(p).is_absolute() else self.root / p for p in map(Path, given)]
            for path in self.csv_paths:
                if not path.is_file():
                    raise EchoDataError.at(path, "TMED-2 split CSV does not exist")

    def _discover_csv(self) -> Path:
        candidates = sorted(self.root.rglob("*.csv"), key=lambda p: p.relative_to(self.root).as_posix())
        problems = []
        for path in candidates:
            missing = [c for c in TMED2_COLUMNS if c not in _header(path)]
            if not missing:
                return path
            problems.append(DataIssue(str(path), f"not a TMED-2 split CSV: lacks columns {missing}"))
        if not problems:
            problems.append(DataIssue(str(self.root), f"no *.csv found; expected e.g. {TMED2_CSV}"))
        raise EchoDataError(problems, context=f"no TMED-2 split CSV with columns {list(TMED2_COLUMNS)}")

    # --- scan ---------------------------------------------------------------------------------
    def _scan(self) -> ScanResult:
        records: list[ItemRecord] = []
        issues: list[DataIssue] = []
        seen: dict[str, str] = {}
        for csv_path in self.csv_paths:
            missing = [c for c in TMED2_COLUMNS if c not in _header(csv_path)]
            if missing:
                raise EchoDataError.at(
                    csv_path, f"missing columns {missing}; a TMED-2 split CSV needs {list(TMED2_COLUMNS)}"
                )
            with open(csv_path, newline="", encoding="utf-8-sig") as handle:
                for line, row in enumerate(csv.DictReader(handle), start=2):
                    where = f"{csv_path} row {line}"
                    record, row_issues = self._record(row, where)
                    issues += row_issues
                    if record is None:
                        continue
                    if record.item_id in seen:
                        issues.append(DataIssue(where, f"query_key {row['query_key']} repeats {seen[record.item_id]}"))
                        continue
                    seen[record.item_id] = where
                    records.append(record)
        records, split_issues = resolve_patient_splits(records, self.split_conflicts, where=self.split_column, unit="rows")
        return ScanResult(records, issues + split_issues)

    def _record(self, row: dict, where: str) -> tuple[ItemRecord | None, list[DataIssue]]:
        issues: list[DataIssue] = []
        key = (row["query_key"] or "").strip()
        try:
            patient, study, item = parse_query_key(key)
        except ValueError as err:
            return None, [DataIssue(where, str(err))]
        labels = {}
        for column, name, valid in (("view_label", "view", VIEWS), ("diagnosis_label", "as_grade", AS_GRADES)):
            value = (row[column] or "").strip()
            if value.lower() in _NO_LABEL:
                continue
            if value not in valid:
                issues.append(DataIssue(where, f"{column} {value!r} of {key} is not one of {list(valid)}"))
            labels[name] = value
        split_value = (row[self.split_column] or "").strip().lower()
        split = None if split_value in _NO_SPLIT else split_value
        if split is not None and split not in SPLITS:
            issues.append(
                DataIssue(where, f"{self.split_column} {split_value!r} of {key} is not one of {list(SPLITS)} or blank")
            )
        folder = (row["SourceFolder"] or "").strip().replace("\\", "/").strip("/")
        path = self.root / folder / key
        problem = _png_problem(path)
        if problem:
            issues.append(DataIssue(str(path), f"{problem} (named by {where})"))
        if issues:
            return None, issues
        record = ItemRecord(
            source=self.format, patient_id=patient, study_id=study, item_id=item, path=str(path),
            split=split, labels=labels, files={"image": str(path)},
        )  # fmt: skip
        return record, []

    # --- load ---------------------------------------------------------------------------------
    def load(self, record: ItemRecord) -> Sample:
        """Decode the PNG into grayscale uint8 (H, W); colour PNGs are converted to luminance."""
        path = Path(record.files.get("image", record.path))
        if not path.is_file():
            raise EchoDataError.at(path, "TMED-2 PNG does not exist")
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise EchoDataError.at(path, "unreadable PNG (OpenCV could not decode it; corrupt or truncated?)")
        if image.dtype != np.uint8:
            raise EchoDataError.at(path, f"PNG holds {image.dtype} pixels; TMED-2 images are 8-bit")
        if image.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            image = cv2.cvtColor(image, code)
        return Sample.from_record(record, image)


def write_tmed2(root: str | Path, samples: Iterable[Sample]) -> None:
    """Write Samples as a TMED-2 release: PNGs under ``SourceFolder`` plus :data:`TMED2_CSV`.

    Each sample needs ``frames`` uint8 (H, W), ``item_id`` ``{patient}s{study}_{index}`` with the
    matching ``patient_id`` and ``study_id`` (see :func:`parse_query_key`), ``view`` / ``as_grade``
    labels (optional) from the TMED-2 vocabulary; other labels are not part of the format and are
    dropped. ``split`` (or blank) goes to both split columns. Raises ``ValueError`` naming the
    sample otherwise.
    """
    root = Path(root)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for sample in samples:
        query_key = f"{sample.item_id}.png"
        _check_writable(sample, query_key)
        if sample.item_id in seen:
            raise ValueError(f"TMED-2 sample {sample.item_id!r} is written twice; item ids must be unique")
        seen.add(sample.item_id)
        labels = {k: sample.labels[k] for k in ("view", "as_grade") if sample.labels.get(k) is not None}
        folder = source_folder_for(labels)
        (root / folder).mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(root / folder / query_key), np.ascontiguousarray(sample.frames)):
            raise OSError(f"could not write PNG {root / folder / query_key}")
        split = sample.split or ""
        rows.append({
            "query_key": query_key, "view_label": labels.get("view", ""),
            "diagnosis_label": labels.get("as_grade", ""), "SourceFolder": folder,
            "view_classifier_split": split, "diagnosis_classifier_split": split,
        })  # fmt: skip
    csv_path = root / TMED2_CSV
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TMED2_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


# --- helpers ------------------------------------------------------------------------------------
def _check_writable(sample: Sample, query_key: str) -> None:
    name = f"TMED-2 sample {sample.item_id!r}"
    try:
        patient, study, _ = parse_query_key(query_key)
    except ValueError as err:
        raise ValueError(f"{name}: item_id must be '{{patient}}s{{study}}_{{index}}': {err}") from None
    if (patient, study) != (sample.patient_id, sample.study_id):
        raise ValueError(
            f"{name}: ids must follow the query_key: patient_id {patient!r} and study_id {study!r}, "
            f"got {sample.patient_id!r} and {sample.study_id!r}"
        )
    frames = np.asarray(sample.frames)
    if frames.ndim != 2 or frames.dtype != np.uint8:
        raise ValueError(f"{name}: TMED-2 holds single uint8 images (H, W); got {frames.dtype} {frames.shape}")
    for key, valid in (("view", VIEWS), ("as_grade", AS_GRADES)):
        value = sample.labels.get(key)
        if value is not None and value not in valid:
            raise ValueError(f"{name}: label {key}={value!r} is not one of {list(valid)}")
    if sample.split is not None and sample.split not in SPLITS:
        raise ValueError(f"{name}: split {sample.split!r} is not one of {list(SPLITS)} or None")


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        first = next(csv.reader(handle), [])
    return [name.strip() for name in first]


def _png_problem(path: Path) -> str | None:
    """Check a PNG without decoding pixels: present, signature, IHDR chunk, 8-bit depth."""
    if not path.is_file():
        return "PNG does not exist"
    with open(path, "rb") as handle:
        head = handle.read(26)
    if not head:
        return "zero-byte PNG"
    if head[:8] != _PNG_SIGNATURE:
        return "not a PNG (bad signature)"
    if len(head) < 26 or head[12:16] != b"IHDR":
        return "truncated PNG (no IHDR header)"
    if head[24] != 8:
        return f"PNG has bit depth {head[24]}; TMED-2 images are 8-bit"
    return None
