"""Patient-level train/val/test splits.

A patient's images never straddle splits: the Segformer seed split CAMUS at frame level, leaking
patients between train and test. Every function here groups records by patient first.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord

__all__ = [
    "SPLITS",
    "assign_splits",
    "check_patient_level",
    "records_by_patient",
    "resolve_patient_splits",
    "split_records",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def records_by_patient(records: Iterable[ItemRecord]) -> dict[str, list[ItemRecord]]:
    """Group records by patient id, keeping first-seen order (deterministic)."""
    groups: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records:
        groups[record.patient_id].append(record)
    return dict(groups)


def check_patient_level(records: Iterable[ItemRecord]) -> None:
    """Raise :class:`EchoDataError` listing every patient whose records carry more than one split."""
    issues = []
    for patient, group in records_by_patient(records).items():
        splits = sorted({r.split for r in group if r.split is not None})
        if len(splits) > 1:
            paths = ", ".join(sorted({r.path for r in group})[:3])
            issues.append(
                DataIssue(paths, f"patient {patient} appears in splits {splits}; splits must be patient-level")
            )
    if issues:
        raise EchoDataError(issues, context="split leaks patients")


def assign_splits(
    records: Sequence[ItemRecord],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    keep_existing: bool = True,
) -> list[ItemRecord]:
    """Return the records with ``split`` set, patient by patient.

    With ``keep_existing`` a source's own split (CAMUS, EchoNet) is kept after checking it is
    patient-level; patients without one are drawn with ``fractions`` (train, val, test) from a
    permutation seeded by ``seed``. Without it every patient is drawn anew.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if keep_existing:
        check_patient_level(records)
    groups = records_by_patient(records)
    fixed: dict[str, str] = {}
    if keep_existing:
        for patient, group in groups.items():
            split = next((r.split for r in group if r.split is not None), None)
            if split is not None:
                if split not in SPLITS:
                    raise EchoDataError.at(group[0].path, f"unknown split {split!r}; expected one of {SPLITS}")
                fixed[patient] = split
    free = sorted(p for p in groups if p not in fixed)
    order = np.random.default_rng(seed).permutation(len(free))
    n_train = round(fractions[0] * len(free))
    n_val = round(fractions[1] * len(free))
    drawn: dict[str, str] = {}
    for rank, index in enumerate(order):
        drawn[free[index]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    chosen = {**fixed, **drawn}
    return [replace(r, split=chosen[r.patient_id]) for r in records]


def split_records(records: Iterable[ItemRecord]) -> dict[str, list[ItemRecord]]:
    """Records grouped by split name (after :func:`assign_splits`); a record without split is an error."""
    out: dict[str, list[ItemRecord]] = {name: [] for name in SPLITS}
    for record in records:
        if record.split not in out:
            raise ValueError(f"{record.path}: record has split {record.split!r}; run assign_splits first")
        out[record.split].append(record)
    return out


def resolve_patient_splits(
    records: list[ItemRecord], policy: str, *, where: str = "the split column", unit: str = "files"
) -> tuple[list[ItemRecord], list[DataIssue]]:
    """Make a source's own splits patient-level.

    Records without a split inherit their patient's split. A patient found in several splits is
    reported as an issue and left out (``policy="issue"``), or moved whole to the split holding most
    of its records (``policy="majority"``, ties to the earlier of train/val/test; logged). Record
    order is kept.
    """
    if policy not in ("issue", "majority"):
        raise ValueError(f"split_conflicts must be 'issue' or 'majority', got {policy!r}")
    issues: list[DataIssue] = []
    chosen: dict[str, str | None] = {}
    for patient, group in records_by_patient(records).items():
        counts = Counter(r.split for r in group if r.split is not None)
        if len(counts) <= 1:
            chosen[patient] = next(iter(counts), None)
            continue
        found = ", ".join(f"{s} ({counts[s]} {unit})" for s in SPLITS if s in counts)
        if policy == "issue":
            issues.append(DataIssue(
                group[0].path,
                f"patient {patient} is in several splits of {where}: {found}; splits must be "
                "patient-level (fix the labels or pass split_conflicts='majority')",
            ))
            continue
        chosen[patient] = max(SPLITS, key=lambda s: (counts.get(s, 0), -SPLITS.index(s)))
        log.warning("patient %s was in %s; moved all its %s to %s", patient, found, unit, chosen[patient])
    out = [r if r.split == chosen[r.patient_id] else replace(r, split=chosen[r.patient_id])
           for r in records if r.patient_id in chosen]
    return out, issues
