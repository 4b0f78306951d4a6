"""Data preflight: what a site has, what is unreadable, and label counts — before any training.

``check_data`` scans with the skip policy (so every problem is collected, not just the first),
optionally decodes every item, and summarises patients, studies, items, splits and labels.
Nothing here reads more than headers unless ``deep`` is set.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedecho.data.base import open_reader
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord

__all__ = ["CheckReport", "check_data", "summarise_labels"]

# Labels summarised as categories; every other scalar label that is numeric gets min/median/max.
_CATEGORICAL = ("view", "phase", "sex", "image_quality", "as_grade", "scanner")


@dataclass
class CheckReport:
    """The preflight result. ``errors`` lists every unreadable or inconsistent item."""

    format: str
    root: str
    patients: int = 0
    studies: int = 0
    items: int = 0
    readable_items: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    derived_ids: dict[str, int] = field(default_factory=dict)
    """With id fallback (DICOM): how many files had each id derived instead of read."""
    deep: bool = True
    seconds: float = 0.0

    @property
    def usable(self) -> bool:
        return self.readable_items > 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def format_text(self) -> str:
        lines = [
            f"{self.format} data at {self.root}",
            f"  patients {self.patients}, studies {self.studies}, items {self.items} "
            f"({self.readable_items} readable{'' if self.deep else ', headers only'})",
            f"  splits: {', '.join(f'{k} {v}' for k, v in sorted(self.splits.items())) or 'none'}",
        ]
        for key, summary in sorted(self.labels.items()):
            if "counts" in summary:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
                lines.append(f"  {key}: {counts}")
            else:
                lines.append(
                    f"  {key}: n {summary['n']}, min {summary['min']:.3g}, median {summary['median']:.3g}, "
                    f"max {summary['max']:.3g}"
                )
        if self.derived_ids:
            derived = ", ".join(f"{k} for {n} file(s)" for k, n in sorted(self.derived_ids.items()))
            lines.append(f"  ids derived (id fallback): {derived}")
        lines.append(f"  problems: {len(self.errors)}")
        lines += [f"    {e['path']}: {e['reason']}" for e in self.errors[:50]]
        if len(self.errors) > 50:
            lines.append(f"    ... and {len(self.errors) - 50} more (use --json for all)")
        lines.append(f"  checked in {self.seconds:.1f} s")
        return "\n".join(lines)


def summarise_labels(records: list[ItemRecord]) -> dict[str, Any]:
    """Counts for categorical labels, n/min/median/max for numeric scalar labels."""
    categorical: dict[str, Counter] = {}
    numeric: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.labels.items():
            if value is None:
                continue
            if key in _CATEGORICAL or isinstance(value, str):
                categorical.setdefault(key, Counter())[str(value)] += 1
            elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                numeric.setdefault(key, []).append(float(value))
    out: dict[str, Any] = {k: {"counts": dict(c)} for k, c in categorical.items()}
    for key, values in numeric.items():
        arr = np.asarray(values)
        out[key] = {"n": int(arr.size), "min": float(arr.min()), "median": float(np.median(arr)), "max": float(arr.max())}
    return out


def check_data(fmt: str, root: str | Path, *, deep: bool = True, id_fallback: bool = False) -> CheckReport:
    """Scan ``root`` as format ``fmt``, collect every problem, and summarise what is usable.
    ``id_fallback``: derive missing DICOM ids (see :mod:`fedecho.data.dicom`); the report counts them."""
    start = time.perf_counter()
    report = CheckReport(format=fmt, root=str(root), deep=deep)
    try:
        reader = open_reader(fmt, root, on_error="skip", id_fallback=id_fallback)
        scan = reader.scan()
    except EchoDataError as err:  # the root as a whole is unusable (no manifest, missing columns)
        report.errors = [asdict(issue) for issue in err.issues]
        report.seconds = time.perf_counter() - start
        return report
    issues: list[DataIssue] = list(scan.issues)
    good = scan.records
    if deep:
        good = []
        for record in scan.records:
            try:
                reader.load(record)
            except EchoDataError as err:
                issues.extend(err.issues)
            else:
                good.append(record)
    report.derived_ids = dict(getattr(reader, "derived_ids", {}))
    report.items = len(scan.records)
    report.readable_items = len(good)
    report.patients = len({r.patient_id for r in good})
    report.studies = len({(r.patient_id, r.study_id) for r in good})
    report.splits = dict(Counter(r.split or "unassigned" for r in good))
    report.labels = summarise_labels(good)
    report.errors = [asdict(issue) for issue in issues]
    report.seconds = time.perf_counter() - start
    return report
