"""EchoNet-Dynamic (Ouyang et al., Nature 580:252-256, 2020): reader and writer.

Layout::

    FileList.csv         FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split
    VolumeTracings.csv   FileName (with .avi), X1, Y1, X2, Y2, Frame
    Videos/<FileName>.avi

``FileName`` in FileList may or may not end in ``.avi``. Per traced frame, the first tracing row
is the long axis and the others are disk chords; the LV polygon is (X1, Y1) of rows 2.. then
(X2, Y2) of rows 2.. reversed (:func:`fedecho.data.geometry.mask_from_tracings`).

One record per video; patient = study = item = the FileName stem (one video per patient). Labels:
``ef``, ``edv``, ``esv``, ``fps``, ``mask_frames`` (the traced frames, ascending) and
``ed_frame``/``es_frame`` (the traced frame with the larger / smaller LV area); the loaded sample
adds ``mask`` (K, H, W), label 1 = LV cavity, one per entry of ``mask_frames``.

**EF-only exports.** Without ``VolumeTracings.csv`` (an export of FileList.csv and Videos/ only)
every listed video is still read, with ``ef``, ``edv``, ``esv`` and ``fps``: the tasks that need no
tracings (EF and volume regression, clips for self-supervised pretraining) work; the tasks that
need them (``lv_seg``, and anything keyed on ``ed_frame``/``es_frame``/``mask_frames``) find no
examples. The reader says so once in the log. With the file present, a video without two traced
frames is an issue, as before.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedecho.data.base import READERS, EchoReader, OnError
from fedecho.data.errors import EchoDataError
from fedecho.data.geometry import mask_from_tracings, polygon_from_tracings, tracings_from_mask
from fedecho.data.schema import DataIssue, ItemRecord, Sample, ScanResult
from fedecho.data.video import read_avi, write_avi

log = logging.getLogger(__name__)

__all__ = [
    "FILELIST_COLUMNS",
    "TRACING_COLUMNS",
    "EchoNetDynamicReader",
    "clip_labels",
    "read_csv_rows",
    "write_csv_rows",
    "write_echonet_dynamic",
]

FILELIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                    "NumberOfFrames", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
_SPLIT_OF = {"TRAIN": "train", "VAL": "val", "TEST": "test"}
_SPLIT_NAME = {split: name for name, split in _SPLIT_OF.items()}

Tracings = dict[str, dict[int, np.ndarray]]  # stem -> frame -> rows (N, 4)


def read_csv_rows(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV as dicts; one :class:`EchoDataError` listing every missing column."""
    if not path.is_file():
        raise EchoDataError.at(path, f"{what} manifest does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise EchoDataError.at(path, f"{what} manifest is missing column(s) {', '.join(missing)} "
                                   f"(found {', '.join(reader.fieldnames or []) or 'no header'})")
        return list(reader)


def _stem(file_name: str) -> str:
    name = file_name.strip()
    return name[:-4] if name.lower().endswith(".avi") else name


@READERS.register("echonet-dynamic")
class EchoNetDynamicReader(EchoReader):
    """Reads the EchoNet-Dynamic release layout (see the module docstring)."""

    format = "echonet-dynamic"

    def __init__(self, root: str | Path, *, on_error: OnError = "raise") -> None:
        super().__init__(root, on_error=on_error)
        self._tracing_cache: dict[str, Tracings] = {}  # VolumeTracings path -> parsed rows

    def _scan(self) -> ScanResult:
        filelist = self.root / "FileList.csv"
        rows = read_csv_rows(filelist, FILELIST_COLUMNS, "EchoNet-Dynamic FileList")
        tracing_path = self.root / "VolumeTracings.csv"
        issues: list[DataIssue] = []
        traced = tracing_path.is_file()
        if traced:
            tracings = self._read_tracings(tracing_path, issues)
            self._tracing_cache[str(tracing_path)] = tracings
        else:
            tracings = {}
            log.info("%s has no VolumeTracings.csv: reading an EF-only export (ef, edv, esv, clips); "
                     "lv_seg and ED/ES-frame tasks need the tracings", self.root)
        records: list[ItemRecord] = []
        seen: set[str] = set()
        for line, row in enumerate(rows, start=2):
            where = f"{filelist}:{line}"
            stem = _stem(row["FileName"])
            if stem in seen:
                issues.append(DataIssue(where, f"{stem}: listed more than once"))
                continue
            seen.add(stem)
            try:
                record = self._record(row, stem, tracings.get(stem, {}), where,
                                      tracing_path if traced else None)
            except EchoDataError as err:
                issues.extend(err.issues)
                continue
            records.append(record)
        for stem in sorted(set(tracings) - seen):
            issues.append(DataIssue(str(tracing_path), f"{stem}.avi has tracings but no FileList row"))
        return ScanResult(records, issues)

    def _record(self, row: dict[str, str], stem: str, traces: dict[int, np.ndarray],
                where: str, tracing_path: Path | None) -> ItemRecord:
        """One FileList row; ``tracing_path`` is None for an EF-only export (no tracings)."""
        try:
            ef, esv, edv, fps = (float(row[k]) for k in ("EF", "ESV", "EDV", "FPS"))
            _height, _width, n_frames = (int(float(row[k])) for k in
                                       ("FrameHeight", "FrameWidth", "NumberOfFrames"))
        except ValueError as err:
            raise EchoDataError.at(where, f"{stem}: non-numeric value ({err})") from None
        split = _SPLIT_OF.get(row["Split"].strip().upper())
        if split is None:
            raise EchoDataError.at(where, f"{stem}: Split {row['Split']!r} is not one of TRAIN, VAL, TEST")
        video = self.root / "Videos" / f"{stem}.avi"
        if not video.is_file():
            raise EchoDataError.at(video, f"{stem}: video listed in FileList.csv does not exist")
        if video.stat().st_size == 0:
            raise EchoDataError.at(video, f"{stem}: video file is empty (0 bytes)")
        if tracing_path is None:
            return ItemRecord(source=self.format, patient_id=stem, study_id=stem, item_id=stem,
                              path=str(video), split=split,
                              labels={"ef": ef, "edv": edv, "esv": esv, "fps": fps},
                              files={"video": str(video)})
        if len(traces) < 2:
            raise EchoDataError.at(tracing_path, f"{stem}.avi has {len(traces)} traced frame(s); "
                                   f"2 (ED and ES) are needed")
        beyond = sorted(f for f in traces if not 0 <= f < n_frames)
        if beyond:
            raise EchoDataError.at(tracing_path, f"{stem}.avi: traced frame(s) {beyond} beyond the "
                                   f"video's {n_frames} frames (NumberOfFrames)")
        areas = {}
        for frame, rows in traces.items():
            try:
                areas[frame] = _polygon_area(polygon_from_tracings(rows))
            except ValueError as err:
                raise EchoDataError.at(tracing_path, f"{stem}.avi frame {frame}: {err}") from None
        frames = sorted(traces)
        labels = {"ef": ef, "edv": edv, "esv": esv, "fps": fps, "mask_frames": frames,
                  "ed_frame": max(frames, key=lambda f: areas[f]),
                  "es_frame": min(frames, key=lambda f: areas[f])}
        return ItemRecord(source=self.format, patient_id=stem, study_id=stem, item_id=stem,
                          path=str(video), split=split, labels=labels,
                          files={"video": str(video), "tracings": str(tracing_path)})

    @staticmethod
    def _read_tracings(path: Path, issues: list[DataIssue]) -> Tracings:
        rows = read_csv_rows(path, TRACING_COLUMNS, "EchoNet-Dynamic VolumeTracings")
        grouped: dict[str, dict[int, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
        for line, row in enumerate(rows, start=2):
            try:
                frame = int(float(row["Frame"]))
                coords = [float(row[k]) for k in ("X1", "Y1", "X2", "Y2")]
            except ValueError as err:
                issues.append(DataIssue(f"{path}:{line}", f"{row['FileName']}: non-numeric value ({err})"))
                continue
            grouped[_stem(row["FileName"])][frame].append(coords)
        return {stem: {f: np.asarray(r, np.float64) for f, r in frames.items()}
                for stem, frames in grouped.items()}

    def _traces_of(self, record: ItemRecord) -> dict[int, np.ndarray]:
        path = record.files.get("tracings")
        if path is None:  # EF-only export
            return {}
        if path not in self._tracing_cache:
            self._tracing_cache[path] = self._read_tracings(Path(path), [])
        return self._tracing_cache[path].get(record.item_id, {})

    def load(self, record: ItemRecord) -> Sample:
        """Decode the whole video (T, H, W) and draw its traced masks (K, H, W)."""
        frames, _ = read_avi(record.files["video"])
        beyond = [f for f in record.labels.get("mask_frames", ()) if f >= len(frames)]
        if beyond:
            raise EchoDataError.at(record.files["video"], f"{record.item_id}: traced frame(s) "
                                   f"{beyond} beyond the {len(frames)} decodable frames")
        return self._sample(record, frames, range(len(frames)))

    def load_frames(self, record: ItemRecord, indices: Sequence[int]) -> Sample:
        """Decode only the video frames ``indices`` (e.g. a 16-frame clip): (len(indices), H, W).

        ``ed_frame``/``es_frame``/``mask_frames`` become positions in the clip; traced frames
        outside the clip are dropped (see :func:`clip_labels`).
        """
        indices = [int(i) for i in indices]
        frames, _ = read_avi(record.files["video"], frames=indices)
        order = sorted(set(indices))
        if order != indices:
            frames = frames[[order.index(i) for i in indices]]
        return self._sample(record, frames, indices)

    def _sample(self, record: ItemRecord, frames: np.ndarray, indices: Sequence[int]) -> Sample:
        labels = clip_labels(record.labels, indices)
        traces = self._traces_of(record)
        shape = frames.shape[1:]
        if "mask_frames" not in labels:  # EF-only export: no tracings, no masks
            sample = Sample.from_record(record, frames, fps=record.labels["fps"])
            sample.labels = labels
            return sample
        try:
            masks = [mask_from_tracings(traces[indices[pos]], shape) for pos in labels["mask_frames"]]
        except (KeyError, ValueError) as err:
            raise EchoDataError.at(record.files["tracings"],
                                   f"{record.item_id}.avi: unusable tracing ({err!r})") from None
        labels["mask"] = np.stack(masks) if masks else np.zeros((0, *shape), np.uint8)
        sample = Sample.from_record(record, frames, fps=record.labels["fps"])
        sample.labels = labels
        return sample


def clip_labels(labels: dict[str, Any], indices: Sequence[int]) -> dict[str, Any]:
    """Map frame-index labels of a video onto a clip made of the video frames ``indices``.

    ``ed_frame``/``es_frame`` become the clip position of that frame (dropped when outside the
    clip); ``mask_frames`` keeps the traced frames inside the clip, as clip positions.
    """
    position = {frame: pos for pos, frame in reversed(list(enumerate(indices)))}
    out = {k: v for k, v in labels.items() if k not in ("ed_frame", "es_frame", "mask_frames")}
    for key in ("ed_frame", "es_frame"):
        if key in labels and labels[key] in position:
            out[key] = position[labels[key]]
    if "mask_frames" in labels:
        out["mask_frames"] = [position[f] for f in labels["mask_frames"] if f in position]
    return out


def _polygon_area(points: np.ndarray) -> float:
    """Shoelace area (pixels²) of a polygon (P, 2)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def write_echonet_dynamic(root: str | Path, samples: Iterable[Sample]) -> None:
    """Write Samples in the EchoNet-Dynamic layout under ``root``.

    Each sample is a video (T, H, W) uint8 with labels ``ef``, ``edv``, ``esv``, a ``mask``
    (K >= 2, H, W) with LV cavity = 1 and its ``mask_frames``, ``split`` set, and ``fps`` (the
    sample's, else label ``fps``, else 50). The FileName is the sample's ``item_id``. Each mask is
    stored as 21 VolumeTracings rows (long axis + 20 chords, :func:`tracings_from_mask`), so a
    reload draws the polygon of those chords, not the original pixels. Videos are MJPG (lossy).
    """
    root = Path(root)
    files: list[list[Any]] = []
    traces: list[list[Any]] = []
    for sample in samples:
        stem = _stem(sample.item_id)
        frames = np.asarray(sample.frames)
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise ValueError(f"EchoNet-Dynamic {stem}: needs uint8 video frames (T, H, W), "
                             f"got {frames.dtype} {frames.shape}")
        missing = [k for k in ("ef", "edv", "esv", "mask", "mask_frames") if k not in sample.labels]
        if missing or sample.split not in _SPLIT_NAME:
            raise ValueError(f"EchoNet-Dynamic {stem}: needs labels ef, edv, esv, mask, mask_frames "
                             f"and a train/val/test split (missing {missing}, split {sample.split!r})")
        mask = np.asarray(sample.labels["mask"])
        mask_frames = [int(f) for f in sample.labels["mask_frames"]]
        if mask.shape != (len(mask_frames), *frames.shape[1:]) or len(mask_frames) < 2:
            raise ValueError(f"EchoNet-Dynamic {stem}: mask {mask.shape} must be (K >= 2, H, W) "
                             f"with one entry of mask_frames {mask_frames} per mask")
        fps = float(sample.fps or sample.labels.get("fps") or 50.0)
        write_avi(root / "Videos" / f"{stem}.avi", frames, fps=fps)
        t, h, w = frames.shape
        files.append([stem, *(repr(float(sample.labels[k])) for k in ("ef", "esv", "edv")),
                      h, w, repr(fps), t, _SPLIT_NAME[sample.split]])
        for frame, frame_mask in sorted(zip(mask_frames, mask, strict=True), key=lambda p: p[0]):
            if not 0 <= frame < t:
                raise ValueError(f"EchoNet-Dynamic {stem}: mask frame {frame} outside 0..{t - 1}")
            for x1, y1, x2, y2 in tracings_from_mask(frame_mask, label=1):
                traces.append([f"{stem}.avi", f"{x1:.4f}", f"{y1:.4f}", f"{x2:.4f}", f"{y2:.4f}", frame])
    root.mkdir(parents=True, exist_ok=True)
    write_csv_rows(root / "FileList.csv", FILELIST_COLUMNS, files)
    write_csv_rows(root / "VolumeTracings.csv", TRACING_COLUMNS, traces)


def write_csv_rows(path: Path, header: Sequence[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
