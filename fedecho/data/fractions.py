"""Label fractions for fine-tuning (EchoCLR: 1, 5, 10, 25, 50, 100 % of labelled training patients).

Sampling is by patient (or study), never by image, and nested: for one seed the 1 % patients are
inside the 5 % patients, and so on, so that curves over fractions compare like with like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedecho.data.schema import ItemRecord

__all__ = ["ECHOCLR_FRACTIONS", "label_fraction"]

ECHOCLR_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 1.0)


def label_fraction(
    records: Sequence[ItemRecord], fraction: float, *, seed: int = 0, unit: str = "patient"
) -> list[ItemRecord]:
    """Keep the records of ``ceil(fraction · N)`` units (at least one), N = distinct patients/studies."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if unit not in ("patient", "study"):
        raise ValueError(f"label-fraction unit must be 'patient' or 'study', got {unit!r}")
    key = (lambda r: r.patient_id) if unit == "patient" else (lambda r: (r.patient_id, r.study_id))
    units = sorted({key(r) for r in records})
    if not units:
        return []
    order = np.random.default_rng(seed).permutation(len(units))
    keep = {units[i] for i in order[: max(1, math.ceil(fraction * len(units) - 1e-9))]}
    return [r for r in records if key(r) in keep]
