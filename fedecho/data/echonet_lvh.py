"""EchoNet-LVH (Duffy et al., JAMA Cardiology 7(4):386-395, 2022): reader and writer.

Layout::

    MeasurementsList.csv   index, HashedFileName, Calc, CalcValue, Frame, X1, X2, Y1, Y2,
                           Frames, FPS, Width, Height, split
    Batch{1..4}/<HashedFileName>.avi

One CSV row per measurement: ``Calc`` in IVSd/LVIDd/LVPWd/IVSs/LVIDs/LVPWs, ``CalcValue`` in cm,
the caliper endpoints (X1, Y1)-(X2, Y2) in pixels on frame ``Frame``. The first (index) column
may be named ``index`` or be unnamed, as pandas writes it. A video may sit in any Batch folder.

One record per video; patient = study = item = HashedFileName. Labels: ``measurements``
{Calc: cm}, ``landmarks`` {Calc: float array (4,) ``(x1, y1, x2, y2)``}, ``landmark_frames``
{Calc: frame}.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedecho.data.base import READERS, EchoReader
from fedecho.data.echonet_dynamic import read_csv_rows, write_csv_rows
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord, Sample, ScanResult
from fedecho.data.video import read_avi, write_avi

__all__ = ["LVH_CALCS", "MEASUREMENT_COLUMNS", "EchoNetLVHReader", "write_echonet_lvh"]

#: Measurement names of EchoNet-LVH (diastolic and systolic IVS, LVID, LVPW).
LVH_CALCS: tuple[str, ...] = ("IVSd", "LVIDd", "LVPWd", "IVSs", "LVIDs", "LVPWs")
MEASUREMENT_COLUMNS = ("HashedFileName", "Calc", "CalcValue", "Frame", "X1", "X2", "Y1", "Y2",
                       "Frames", "FPS", "Width", "Height", "split")
_VIDEO_COLUMNS = ("Frames", "FPS", "Width", "Height", "split")
_SPLITS = ("train", "val", "test")
_BATCHES = ("Batch1", "Batch2", "Batch3", "Batch4")


@READERS.register("echonet-lvh")
class EchoNetLVHReader(EchoReader):
    """Reads the EchoNet-LVH release layout (see the module docstring)."""

    format = "echonet-lvh"

    def _scan(self) -> ScanResult:
        manifest = self.root / "MeasurementsList.csv"
        rows = read_csv_rows(manifest, MEASUREMENT_COLUMNS, "EchoNet-LVH MeasurementsList")
        issues: list[DataIssue] = []
        videos = self._find_videos(issues)
        by_video: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
        for line, row in enumerate(rows, start=2):
            name = row["HashedFileName"].strip()
            by_video[name[:-4] if name.lower().endswith(".avi") else name].append((line, row))
        records = []
        for name, video_rows in by_video.items():
            try:
                records.append(self._record(name, video_rows, videos.get(name), manifest))
            except EchoDataError as err:
                issues.extend(err.issues)
        return ScanResult(records, issues)

    def _find_videos(self, issues: list[DataIssue]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for batch in sorted(p for p in self.root.glob("Batch*") if p.is_dir()):
            for video in sorted(batch.glob("*.avi")):
                if video.stem in found:
                    issues.append(DataIssue(str(video), f"{video.stem}: also in {found[video.stem]}"))
                    continue
                found[video.stem] = video
        return found

    def _record(self, name: str, rows: list[tuple[int, dict[str, str]]], video: Path | None,
                manifest: Path) -> ItemRecord:
        problems = []
        first = rows[0][1]
        for line, row in rows[1:]:
            changed = [c for c in _VIDEO_COLUMNS if row[c].strip() != first[c].strip()]
            if changed:
                problems.append(DataIssue(f"{manifest}:{line}", f"{name}: {', '.join(changed)} differ "
                                          f"from line {rows[0][0]} of the same video"))
        try:
            n_frames, width, height = (int(float(first[k])) for k in ("Frames", "Width", "Height"))
            fps = float(first["FPS"])
        except ValueError as err:
            raise EchoDataError.at(f"{manifest}:{rows[0][0]}", f"{name}: non-numeric value ({err})") from None
        split = first["split"].strip().lower()
        if split not in _SPLITS:
            problems.append(DataIssue(f"{manifest}:{rows[0][0]}", f"{name}: split {first['split']!r} "
                                      f"is not one of {', '.join(_SPLITS)}"))
        measurements: dict[str, float] = {}
        landmarks: dict[str, np.ndarray] = {}
        landmark_frames: dict[str, int] = {}
        for line, row in rows:
            where = f"{manifest}:{line}"
            calc = row["Calc"].strip()
            if calc not in LVH_CALCS:
                problems.append(DataIssue(where, f"{name}: unknown Calc {calc!r}; expected one of "
                                          f"{', '.join(LVH_CALCS)}"))
                continue
            if calc in measurements:
                problems.append(DataIssue(where, f"{name}: {calc} measured more than once"))
                continue
            try:
                value = float(row["CalcValue"])
                frame = int(float(row["Frame"]))
                points = np.array([float(row[k]) for k in ("X1", "Y1", "X2", "Y2")])
            except ValueError as err:
                problems.append(DataIssue(where, f"{name} {calc}: non-numeric value ({err})"))
                continue
            if not 0 <= frame < n_frames:
                problems.append(DataIssue(where, f"{name} {calc}: Frame {frame} is beyond the video's "
                                          f"{n_frames} frames"))
                continue
            measurements[calc], landmarks[calc], landmark_frames[calc] = value, points, frame
        if video is None:
            problems.append(DataIssue(str(self.root / "Batch*" / f"{name}.avi"),
                                      f"{name}: video listed in MeasurementsList.csv is in no Batch folder"))
        elif video.stat().st_size == 0:
            problems.append(DataIssue(str(video), f"{name}: video file is empty (0 bytes)"))
        if problems:
            raise EchoDataError(problems)
        labels = {"measurements": measurements, "landmarks": landmarks,
                  "landmark_frames": landmark_frames, "fps": fps}
        return ItemRecord(source=self.format, patient_id=name, study_id=name, item_id=name,
                          path=str(video), split=split, labels=labels,
                          files={"video": str(video)})

    def load(self, record: ItemRecord) -> Sample:
        """Decode the whole video (T, H, W); landmark frames must lie inside it."""
        frames, _ = read_avi(record.files["video"])
        beyond = {c: f for c, f in record.labels["landmark_frames"].items() if f >= len(frames)}
        if beyond:
            raise EchoDataError.at(record.files["video"], f"{record.item_id}: landmark frame(s) "
                                   f"{beyond} beyond the {len(frames)} decodable frames")
        return self._sample(record, frames, range(len(frames)))

    def load_frames(self, record: ItemRecord, indices: Sequence[int]) -> Sample:
        """Decode only the video frames ``indices``: (len(indices), H, W).

        ``landmark_frames`` become clip positions; landmarks on frames outside the clip are
        dropped (``measurements`` stay: they describe the whole video).
        """
        indices = [int(i) for i in indices]
        frames, _ = read_avi(record.files["video"], frames=indices)
        order = sorted(set(indices))
        if order != indices:
            frames = frames[[order.index(i) for i in indices]]
        return self._sample(record, frames, indices)

    @staticmethod
    def _sample(record: ItemRecord, frames: np.ndarray, indices: Sequence[int]) -> Sample:
        position = {frame: pos for pos, frame in reversed(list(enumerate(indices)))}
        kept = {c: position[f] for c, f in record.labels["landmark_frames"].items() if f in position}
        labels = {
            "measurements": dict(record.labels["measurements"]),
            "landmarks": {c: np.array(p) for c, p in record.labels["landmarks"].items() if c in kept},
            "landmark_frames": kept,
            "fps": record.labels["fps"],
        }
        sample = Sample.from_record(record, frames, fps=record.labels["fps"])
        sample.labels = labels
        return sample


def write_echonet_lvh(root: str | Path, samples: Iterable[Sample]) -> None:
    """Write Samples in the EchoNet-LVH layout under ``root``.

    Each sample is a video (T, H, W) uint8 with labels ``measurements`` {Calc: cm},
    ``landmarks`` {Calc: (x1, y1, x2, y2)} and ``landmark_frames`` {Calc: frame} for the same
    Calc names, and a train/val/test ``split``. The HashedFileName is the sample's ``item_id``;
    videos go to Batch1..Batch4 round-robin, as MJPG (lossy).
    """
    root = Path(root)
    table: list[list[Any]] = []
    for number, sample in enumerate(samples):
        name = sample.item_id
        frames = np.asarray(sample.frames)
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise ValueError(f"EchoNet-LVH {name}: needs uint8 video frames (T, H, W), "
                             f"got {frames.dtype} {frames.shape}")
        if sample.split not in _SPLITS:
            raise ValueError(f"EchoNet-LVH {name}: split must be one of {_SPLITS}, got {sample.split!r}")
        measurements = sample.labels.get("measurements", {})
        landmarks = sample.labels.get("landmarks", {})
        landmark_frames = sample.labels.get("landmark_frames", {})
        if not measurements or set(measurements) != set(landmarks) or set(landmarks) != set(landmark_frames):
            raise ValueError(f"EchoNet-LVH {name}: measurements, landmarks and landmark_frames must "
                             f"name the same Calcs (got {sorted(measurements)}, {sorted(landmarks)}, "
                             f"{sorted(landmark_frames)})")
        unknown = sorted(set(measurements) - set(LVH_CALCS))
        if unknown:
            raise ValueError(f"EchoNet-LVH {name}: unknown Calc {unknown}; expected {LVH_CALCS}")
        t, h, w = frames.shape
        fps = float(sample.fps or sample.labels.get("fps") or 50.0)
        write_avi(root / _BATCHES[number % len(_BATCHES)] / f"{name}.avi", frames, fps=fps)
        for calc in sorted(measurements, key=LVH_CALCS.index):
            x1, y1, x2, y2 = (float(v) for v in np.asarray(landmarks[calc], np.float64).reshape(4))
            frame = int(landmark_frames[calc])
            if not 0 <= frame < t:
                raise ValueError(f"EchoNet-LVH {name} {calc}: frame {frame} outside 0..{t - 1}")
            table.append([len(table), name, calc, repr(float(measurements[calc])), frame,
                          repr(x1), repr(x2), repr(y1), repr(y2), t, repr(fps), w, h, sample.split])
    root.mkdir(parents=True, exist_ok=True)
    write_csv_rows(root / "MeasurementsList.csv", ("index", *MEASUREMENT_COLUMNS), table)
