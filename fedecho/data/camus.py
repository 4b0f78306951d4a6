"""CAMUS (Leclerc et al., IEEE TMI 38(9):2198-2210, 2019): NIfTI reader, writer and volumes.

Layout (the release's own)::

    database_nifti/patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].nii[.gz]
    database_nifti/patientXXXX/patientXXXX_{2CH,4CH}_half_sequence[_gt].nii[.gz]   (optional)
    database_nifti/patientXXXX/Info_{2CH,4CH}.cfg                                   (optional)
    database_split/subgroup_{training,validation,testing}.txt                       (optional)

nibabel returns images as (x, y[, T]); samples are (rows, cols) = (y, x), apex at the top, and
sequences (T, rows, cols). Spacing (row_mm, col_mm) = (zooms[1], zooms[0]). ``Info_*.cfg`` frame
numbers ``ED``/``ES`` are 1-based; ``ed_frame``/``es_frame`` labels are 0-based.

Records: one per (patient, view, phase) image, item id ``patient0001_4CH_ED`` (labels ``view``,
``phase`` and the cfg labels ``age``, ``sex``, ``image_quality``, ``ef``, ``edv``, ``esv``; the
loaded sample adds ``mask`` (H, W) when the ``_gt`` file exists), and one per half sequence,
item id ``patient0001_4CH_half_sequence`` (plus ``ed_frame``, ``es_frame``, ``fps`` from the cfg;
``mask`` (T, H, W) and ``mask_frames`` when ``_half_sequence_gt`` exists).
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from fedecho.data.base import READERS, EchoReader
from fedecho.data.errors import EchoDataError
from fedecho.data.geometry import area_mm2, simpson_volume_ml
from fedecho.data.schema import DataIssue, ItemRecord, Sample, ScanResult

__all__ = ["CAMUS_SPLIT_FILES", "CamusReader", "camus_volumes", "write_camus"]

#: FedEcho split -> CAMUS split file name.
CAMUS_SPLIT_FILES: dict[str, str] = {
    "train": "subgroup_training.txt",
    "val": "subgroup_validation.txt",
    "test": "subgroup_testing.txt",
}
_VIEW_OF_CODE = {"4CH": "A4C", "2CH": "A2C"}
_CODE_OF_VIEW = {view: code for code, view in _VIEW_OF_CODE.items()}
_FILE_RE = re.compile(
    r"^(?P<patient>.+)_(?P<code>2CH|4CH)_(?P<kind>ED|ES|half_sequence)(?P<gt>_gt)?\.nii(?:\.gz)?$"
)
_NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)
_MASK_LABELS = frozenset({0, 1, 2, 3})
# cfg key -> (label key, parser); frame keys are kept apart (1-based in the file).
_CFG_LABELS = {
    "Sex": ("sex", str),
    "Age": ("age", float),
    "ImageQuality": ("image_quality", str),
    "EF": ("ef", float),
    "LVef": ("ef", float),
    "LVedv": ("edv", float),
    "LVesv": ("esv", float),
    "FrameRate": ("fps", float),
}
_CFG_FRAMES = ("ED", "ES", "NbFrame")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))


@READERS.register("camus")
class CamusReader(EchoReader):
    """Reads the CAMUS release layout (see the module docstring)."""

    format = "camus"

    # --- scan ---------------------------------------------------------------------------------
    def _scan(self) -> ScanResult:
        nifti_root = self.root / "database_nifti"
        if not nifti_root.is_dir():
            raise EchoDataError.at(
                nifti_root, "CAMUS folder missing (expected database_nifti/patientXXXX/...)"
            )
        issues: list[DataIssue] = []
        splits = self._read_splits(issues)
        records: list[ItemRecord] = []
        found = set()
        for folder in sorted(p for p in nifti_root.iterdir() if p.is_dir()):
            found.add(folder.name)
            records.extend(self._scan_patient(folder, splits.get(folder.name), issues))
        for patient, (split, split_file) in sorted(splits.items()):
            if patient not in found:
                issues.append(DataIssue(str(split_file), f"CAMUS {patient} is listed in the "
                                        f"{split} split but {nifti_root / patient} does not exist"))
        return ScanResult(records, issues)

    def _read_splits(self, issues: list[DataIssue]) -> dict[str, tuple[str, Path]]:
        splits: dict[str, tuple[str, Path]] = {}
        for split, name in CAMUS_SPLIT_FILES.items():
            path = self.root / "database_split" / name
            if not path.is_file():
                continue
            for patient in path.read_text().split():
                if patient in splits and splits[patient][0] != split:
                    issues.append(DataIssue(str(path), f"CAMUS {patient} is listed in both the "
                                            f"{splits[patient][0]} and the {split} split"))
                splits.setdefault(patient, (split, path))
        return splits

    def patient_records(self, patient_id: str) -> list[ItemRecord]:
        """Scan one patient folder (no split lookup); raise :class:`EchoDataError` on any issue."""
        folder = self.root / "database_nifti" / patient_id
        if not folder.is_dir():
            raise EchoDataError.at(folder, f"CAMUS {patient_id}: patient folder does not exist")
        issues: list[DataIssue] = []
        records = self._scan_patient(folder, None, issues)
        if issues:
            raise EchoDataError(issues, context=f"CAMUS {patient_id}")
        return records

    def _scan_patient(
        self, folder: Path, split_entry: tuple[str, Path] | None, issues: list[DataIssue]
    ) -> list[ItemRecord]:
        patient = folder.name
        files: dict[tuple[str, str], dict[str, Path]] = defaultdict(dict)
        for path in _nifti_files(folder):
            match = _FILE_RE.match(path.name)
            if match is None or match["patient"] != patient:
                issues.append(DataIssue(str(path), f"CAMUS {patient}: unexpected file name; expected "
                                        f"{patient}_{{2CH,4CH}}_{{ED,ES,half_sequence}}[_gt].nii[.gz]"))
                continue
            role = "mask" if match["gt"] else "image"
            key = (match["code"], match["kind"])
            if role in files[key]:
                issues.append(DataIssue(str(path), f"CAMUS {patient}: duplicate of {files[key][role].name}"))
                continue
            files[key][role] = path
        cfgs = {code: _read_cfg(folder / f"Info_{code}.cfg", patient, issues)
                for code in _VIEW_OF_CODE if (folder / f"Info_{code}.cfg").is_file()}
        if not files:
            issues.append(DataIssue(str(folder), f"CAMUS {patient}: no NIfTI image in the patient folder"))
        records = []
        for (code, kind), roles in sorted(files.items()):
            record = self._record(folder, code, kind, roles, cfgs, split_entry, issues)
            if record is not None:
                records.append(record)
        return records

    def _record(
        self,
        folder: Path,
        code: str,
        kind: str,
        roles: dict[str, Path],
        cfgs: dict[str, tuple[dict[str, Any], dict[str, int]]],
        split_entry: tuple[str, Path] | None,
        issues: list[DataIssue],
    ) -> ItemRecord | None:
        patient = folder.name
        item_id = f"{patient}_{code}_{kind}"
        if "image" not in roles:
            issues.append(DataIssue(str(roles["mask"]), f"CAMUS {patient}: mask without its image {item_id}"))
            return None
        ndim = 2 if kind in ("ED", "ES") else 3
        shapes = {}
        for role, path in roles.items():
            try:
                shapes[role] = _load_header(path, ndim)[1]
            except EchoDataError as err:
                issues.extend(err.issues)
                return None
        if "mask" in shapes and shapes["mask"] != shapes["image"]:
            issues.append(DataIssue(str(roles["mask"]), f"CAMUS {patient}: mask shape {shapes['mask']} "
                                    f"differs from image {roles['image'].name} shape {shapes['image']}"))
            return None
        cfg, frames = cfgs.get(code) or _patient_level(cfgs)
        labels: dict[str, Any] = {"view": _VIEW_OF_CODE[code], **cfg}
        if kind in ("ED", "ES"):
            labels["phase"] = kind
            labels.pop("fps", None)
        else:
            n_frames = shapes["image"][2]
            for key, label in (("ED", "ed_frame"), ("ES", "es_frame")):
                if key in frames:
                    if not 1 <= frames[key] <= n_frames:
                        issues.append(DataIssue(str(folder / f"Info_{code}.cfg"), f"CAMUS {patient}: "
                                                f"{key} {frames[key]} is outside the {n_frames} frames "
                                                f"of {roles['image'].name}"))
                        return None
                    labels[label] = frames[key] - 1
        return ItemRecord(
            source=self.format, patient_id=patient, study_id=patient, item_id=item_id,
            path=str(roles["image"]), split=split_entry[0] if split_entry else None, labels=labels,
            files={role: str(path) for role, path in roles.items()},
        )

    # --- load ---------------------------------------------------------------------------------
    def load(self, record: ItemRecord) -> Sample:
        image_path = Path(record.files["image"])
        is_sequence = "phase" not in record.labels
        data, zooms = _read_nifti(image_path, 3 if is_sequence else 2)
        frames = _to_display(data)
        if np.issubdtype(frames.dtype, np.integer) and 0 <= frames.min() and frames.max() <= 255:
            frames = frames.astype(np.uint8)  # CAMUS intensities are 0..255 whatever the dtype
        labels: dict[str, Any] = {}
        for key in ("ed_frame", "es_frame"):
            if key in record.labels and record.labels[key] >= frames.shape[0]:
                raise EchoDataError.at(image_path, f"CAMUS {record.patient_id}: {key} "
                                       f"{record.labels[key]} is beyond the {frames.shape[0]} frames")
        if "mask" in record.files:
            mask_path = Path(record.files["mask"])
            mask = _to_display(_read_nifti(mask_path, frames.ndim)[0])
            if mask.shape != frames.shape:
                raise EchoDataError.at(mask_path, f"CAMUS {record.patient_id}: mask shape {mask.shape} "
                                       f"differs from image shape {frames.shape}")
            labels["mask"] = _checked_labels(mask, mask_path, record.patient_id)
            if is_sequence:
                labels["mask_frames"] = list(range(mask.shape[0]))
        return Sample.from_record(record, frames, spacing=(float(zooms[1]), float(zooms[0])),
                                  fps=record.labels.get("fps"), labels=labels)


def _checked_labels(mask: np.ndarray, path: Path, patient: str) -> np.ndarray:
    """The mask as uint8 if every value is a CAMUS label, else an error naming the values."""
    integral = np.array_equal(mask, np.round(mask))
    values = {int(v) for v in np.unique(mask)} if integral else set()
    if not integral or not values <= _MASK_LABELS:
        shown = "{" + ",".join(map(str, sorted(values))) + "}" if integral else "non-integer values"
        raise EchoDataError.at(path, f"CAMUS {patient}: mask {path.name} has labels {shown}; "
                               f"expected a subset of {{0,1,2,3}}")
    return mask.astype(np.uint8)


def _load_header(path: Path, ndim: int) -> tuple[nib.Nifti1Image, tuple[int, ...]]:
    """The NIfTI image (header parsed, pixels not read) and its (x, y[, T]) shape, with trailing
    singleton axes dropped."""
    try:
        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
    except _NIFTI_ERRORS as err:
        raise EchoDataError.at(path, f"unreadable NIfTI header ({type(err).__name__}: {err})") from None
    while len(shape) > ndim and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != ndim:
        what = "image (x, y)" if ndim == 2 else "sequence (x, y, T)"
        raise EchoDataError.at(path, f"NIfTI has shape {shape}; expected a {ndim}-D {what}")
    return image, shape


def _read_nifti(path: Path, ndim: int) -> tuple[np.ndarray, tuple[float, ...]]:
    image, shape = _load_header(path, ndim)
    try:
        data = np.asanyarray(image.dataobj).reshape(shape)
        zooms = tuple(float(z) for z in image.header.get_zooms())
    except _NIFTI_ERRORS as err:
        raise EchoDataError.at(path, f"unreadable NIfTI data ({type(err).__name__}: {err})") from None
    if len(zooms) < 2 or zooms[0] <= 0 or zooms[1] <= 0:
        raise EchoDataError.at(path, f"NIfTI pixel spacing {zooms[:2]} is not positive")
    return data, zooms


def _to_display(data: np.ndarray) -> np.ndarray:
    """(x, y) -> (rows, cols); (x, y, T) -> (T, rows, cols)."""
    return np.ascontiguousarray(data.T)


def _read_cfg(path: Path, patient: str, issues: list[DataIssue]) -> tuple[dict[str, Any], dict[str, int]]:
    labels: dict[str, Any] = {}
    frames: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = (part.strip() for part in line.partition(":"))
        try:
            if not sep or not value:
                raise ValueError("expected 'Key: value'")
            if key in _CFG_FRAMES:
                frames[key] = int(value)
            elif key in _CFG_LABELS:
                label, parse = _CFG_LABELS[key]
                parsed = parse(value)
                if label in labels and labels[label] != parsed:
                    raise ValueError(f"{label} given twice with different values")
                labels[label] = parsed
        except ValueError as err:
            issues.append(DataIssue(str(path), f"CAMUS {patient}: line {number} {line.strip()!r}: {err}"))
    return labels, frames


def _patient_level(cfgs: Mapping[str, tuple[dict[str, Any], dict[str, int]]]) -> tuple[dict, dict]:
    """Labels of the patient (not of one view) from any cfg, for a view without its own cfg."""
    for labels, _ in cfgs.values():
        return {k: v for k, v in labels.items() if k in ("age", "sex", "ef", "edv", "esv")}, {}
    return {}, {}


# --- volumes -------------------------------------------------------------------------------------
def camus_volumes(reader_or_root: CamusReader | str | Path, patient_id: str, n_disks: int = 20) -> dict:
    """EDV/ESV (mL) and EF (%) of one patient from its ED/ES LV-cavity masks (label 1).

    Biplane Simpson when both 4CH and 2CH ED/ES masks exist, else single plane on the view that
    has both. Returns ``{"edv", "esv", "ef", "method", "areas_mm2"}`` where ``method`` is
    ``"biplane"`` or ``"single-plane A4C"``/``"single-plane A2C"`` and ``areas_mm2`` maps
    ``"A4C_ED"``... to the LV cavity area of each mask.
    """
    reader = reader_or_root if isinstance(reader_or_root, CamusReader) else CamusReader(reader_or_root)
    masks: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]] = {}
    for record in reader.patient_records(patient_id):
        if "phase" in record.labels and "mask" in record.files:
            sample = reader.load(record)
            masks[(sample.labels["view"], sample.labels["phase"])] = (sample.labels["mask"], sample.spacing)
    views = [v for v in ("A4C", "A2C") if (v, "ED") in masks and (v, "ES") in masks]
    if not views:
        raise EchoDataError.at(reader.root / "database_nifti" / patient_id,
                               f"CAMUS {patient_id}: no view has both ED and ES masks")
    volumes = {}
    for phase in ("ED", "ES"):
        first = masks[(views[0], phase)]
        second = masks[(views[1], phase)] if len(views) == 2 else (None, None)
        volumes[phase] = simpson_volume_ml(first[0], first[1], second[0], second[1], n_disks=n_disks)
    edv, esv = volumes["ED"], volumes["ES"]
    return {
        "edv": edv,
        "esv": esv,
        "ef": 100.0 * (edv - esv) / edv if edv > 0 else float("nan"),
        "method": "biplane" if len(views) == 2 else f"single-plane {views[0]}",
        "areas_mm2": {f"{v}_{p}": area_mm2(m, s) for (v, p), (m, s) in sorted(masks.items())},
    }


# --- writer --------------------------------------------------------------------------------------
_CFG_OF_LABEL = {"sex": "Sex", "age": "Age", "image_quality": "ImageQuality", "ef": "EF",
                 "edv": "LVedv", "esv": "LVesv"}


def write_camus(root: str | Path, samples: Iterable[Sample]) -> None:
    """Write Samples in the CAMUS layout under ``root`` (see the module docstring).

    Images (H, W) need labels ``view`` (A4C/A2C) and ``phase`` (ED/ES); videos (T, H, W) become
    half sequences and need ``view``. ``spacing`` is required. A video ``mask`` must cover every
    frame (``mask_frames`` = 0..T-1), as CAMUS sequence masks do. Labels ``age``, ``sex``,
    ``image_quality``, ``ef``, ``edv``, ``esv``, ``ed_frame``, ``es_frame`` and the video fps go to
    ``Info_{2CH,4CH}.cfg``; other labels have no place in CAMUS and are not written. Ids follow
    CAMUS: the folder is ``patient_id``, study = patient, item ids are derived from view/phase.
    """
    root = Path(root)
    cfgs: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    splits: dict[str, str] = {}
    for sample in samples:
        patient, code, kind = _names(sample)
        folder = root / "database_nifti" / patient
        folder.mkdir(parents=True, exist_ok=True)
        frames = np.asarray(sample.frames)
        _save_nifti(folder / f"{patient}_{code}_{kind}.nii.gz", frames, sample.spacing)
        if "mask" in sample.labels:
            mask = np.asarray(sample.labels["mask"])
            if mask.shape != frames.shape or (frames.ndim == 3 and list(sample.labels.get(
                    "mask_frames", range(len(mask)))) != list(range(len(frames)))):
                raise ValueError(f"CAMUS {sample.item_id}: mask {mask.shape} must match frames "
                                 f"{frames.shape} (a sequence mask covers every frame)")
            _save_nifti(folder / f"{patient}_{code}_{kind}_gt.nii.gz", mask.astype(np.uint8), sample.spacing)
        cfg = {_CFG_OF_LABEL[k]: _fmt(v) for k, v in sample.labels.items() if k in _CFG_OF_LABEL}
        if frames.ndim == 3:
            cfg["NbFrame"] = str(len(frames))
            cfg.update({key: str(int(sample.labels[label]) + 1) for key, label in
                        (("ED", "ed_frame"), ("ES", "es_frame")) if label in sample.labels})
            if sample.fps:
                cfg["FrameRate"] = _fmt(sample.fps)
        for key, value in cfg.items():
            if cfgs[(patient, code)].setdefault(key, value) != value:
                raise ValueError(f"CAMUS {patient} {code}: conflicting {key} values "
                                 f"{cfgs[(patient, code)][key]} and {value} across samples")
        if sample.split is not None:
            if splits.setdefault(patient, sample.split) != sample.split:
                raise ValueError(f"CAMUS {patient}: samples disagree on the split "
                                 f"({splits[patient]} vs {sample.split}); splits are patient-level")
    for (patient, code), cfg in cfgs.items():
        if cfg:
            text = "".join(f"{key}: {value}\n" for key, value in cfg.items())
            (root / "database_nifti" / patient / f"Info_{code}.cfg").write_text(text)
    if splits:
        (root / "database_split").mkdir(parents=True, exist_ok=True)
        for split, name in CAMUS_SPLIT_FILES.items():
            listed = sorted(p for p, s in splits.items() if s == split)
            (root / "database_split" / name).write_text("".join(f"{p}\n" for p in listed))


def _names(sample: Sample) -> tuple[str, str, str]:
    patient = sample.patient_id
    if not patient or "/" in patient or "\\" in patient or patient.startswith("."):
        raise ValueError(f"CAMUS patient id {patient!r} is not usable as a folder name")
    view = sample.labels.get("view")
    if view not in _CODE_OF_VIEW:
        raise ValueError(f"CAMUS {sample.item_id}: view must be A4C or A2C, got {view!r}")
    if sample.frames.ndim == 3:
        return patient, _CODE_OF_VIEW[view], "half_sequence"
    phase = sample.labels.get("phase")
    if sample.frames.ndim != 2 or phase not in ("ED", "ES"):
        raise ValueError(f"CAMUS {sample.item_id}: an image (H, W) needs phase ED or ES "
                         f"(got frames {sample.frames.shape}, phase {phase!r})")
    return patient, _CODE_OF_VIEW[view], phase


def _save_nifti(path: Path, data: np.ndarray, spacing: tuple[float, float] | None) -> None:
    if spacing is None:
        raise ValueError(f"{path.name}: CAMUS images need a pixel spacing (row_mm, col_mm)")
    row_mm, col_mm = (float(s) for s in spacing)
    if data.dtype != np.uint8:
        data = data.astype(np.float32)
    volume = np.ascontiguousarray(data.T)  # (rows, cols[, T]) order back to nibabel's (x, y[, T])
    affine = np.diag([-col_mm, -row_mm, 1.0, 1.0])
    image = nib.Nifti1Image(volume, affine)
    image.header.set_zooms((col_mm, row_mm, 1.0)[: volume.ndim])
    nib.save(image, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        value = float(value)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
