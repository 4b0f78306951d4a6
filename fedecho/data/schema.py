"""The one sample schema every reader produces.

A reader first *scans* its root into :class:`ItemRecord` s (no pixels decoded: manifests, file
names, headers) and then *loads* one record into a :class:`Sample` (pixels decoded).

Canonical label keys (present only when the source has them):

========================  =====================================================================
key                       meaning
========================  =====================================================================
``view``                  str, one of :data:`VIEWS`
``phase``                 ``"ED"`` or ``"ES"`` for a single cardiac-phase frame
``ef``                    ejection fraction, percent
``edv``, ``esv``          end-diastolic / end-systolic LV volume, mL
``age``                   years (float)
``sex``                   ``"M"`` or ``"F"``
``image_quality``         str as the source writes it (CAMUS: Good / Medium / Poor)
``as_grade``              str, one of :data:`AS_GRADES`
``ed_frame``, ``es_frame`` int frame indices into ``frames``
``mask``                  uint8 label map, (H, W) for an image or (K, H, W) for K traced video
                          frames, labels from :data:`MASK_LABELS`
``mask_frames``           list[int], the frame index of each of the K masks of a video
``landmarks``             dict measurement name -> float array (4,) ``(x1, y1, x2, y2)`` pixels
``landmark_frames``       dict measurement name -> int frame index
``measurements``          dict measurement name -> value in cm (EchoNet-LVH: IVSd, LVIDd, ...)
``scanner``               str, scanner / vendor / acquisition style (partitioning by attribute)
========================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AS_GRADES",
    "MASK_LABELS",
    "VIEWS",
    "DataIssue",
    "ItemRecord",
    "Sample",
    "ScanResult",
]

#: Echo views FedEcho knows. TMED-2's coarse label ``A4CorA2CorOther`` is kept as its own class.
VIEWS: tuple[str, ...] = ("A4C", "A2C", "PLAX", "PSAX", "A4CorA2CorOther")

#: Aortic-stenosis grades in TMED-2's official vocabulary, ordered by severity.
AS_GRADES: tuple[str, ...] = ("no_AS", "mild_AS", "mildtomod_AS", "moderate_AS", "severe_AS")

#: Segmentation labels (CAMUS convention, used by every source that has masks).
MASK_LABELS: Mapping[int, str] = {0: "background", 1: "lv_cavity", 2: "myocardium", 3: "left_atrium"}


@dataclass(frozen=True)
class DataIssue:
    """One unreadable or inconsistent input: the file and, in words, what is wrong with it."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ItemRecord:
    """One image or video found by a scan, before its pixels are decoded.

    ``labels`` holds the labels known without decoding pixels (manifest columns, config files);
    ``files`` maps a role (``"image"``, ``"mask"``, ``"video"``, ...) to a path the loader reads.
    """

    source: str
    patient_id: str
    study_id: str
    item_id: str
    path: str
    split: str | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Sample:
    """One decoded image or video in FedEcho's schema.

    ``frames`` is grayscale: (T, H, W) for a video, (H, W) for a single image; uint8 unless the
    source is float. ``spacing`` is millimetres per pixel as (row, column), ``None`` if unknown.
    ``label_values`` may give, for an integer label map in ``labels``, the values it holds (sorted
    ints; per frame, a list of those, for a (K, H, W) stack), so that consumers need not scan the
    pixels again; the decoded cache fills it (computed once when the entry is written). A key
    that is absent means "not known".
    """

    source: str
    patient_id: str
    study_id: str
    item_id: str
    frames: np.ndarray
    spacing: tuple[float, float] | None = None
    fps: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    split: str | None = None
    label_values: dict[str, Any] = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.frames.ndim == 3

    @classmethod
    def from_record(cls, record: ItemRecord, frames: np.ndarray, **kwargs: Any) -> Sample:
        labels = dict(record.labels)
        labels.update(kwargs.pop("labels", {}))
        return cls(
            source=record.source,
            patient_id=record.patient_id,
            study_id=record.study_id,
            item_id=record.item_id,
            frames=frames,
            labels=labels,
            path=record.path,
            split=record.split,
            **kwargs,
        )


@dataclass
class ScanResult:
    """What a scan found: the readable records and every problem met on the way."""

    records: list[ItemRecord]
    issues: list[DataIssue] = field(default_factory=list)

    @property
    def patients(self) -> set[str]:
        return {r.patient_id for r in self.records}

    @property
    def studies(self) -> set[tuple[str, str]]:
        return {(r.patient_id, r.study_id) for r in self.records}
