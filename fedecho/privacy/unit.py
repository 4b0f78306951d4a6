"""The unit of privacy: how many examples one patient contributes to a site's training set."""

from __future__ import annotations

from typing import Any

__all__ = ["examples_per_patient", "patient_groups"]


def _patient_of(item: Any) -> str:
    if isinstance(item, (list, tuple)):  # a group of records (a study), one patient
        return str(item[0].patient_id)
    return str(item.patient_id)


def patient_groups(dataset: Any, *, what: str) -> list[list[int]]:
    """Indices of ``dataset``'s examples grouped by patient (first-seen order).

    Understands a ``patient_ids()`` method, FedEcho's task datasets (``records`` + ``examples``:
    one example per record, or per traced frame) and pretraining datasets (``items``: records or
    groups of a study's records). Anything else raises: ε per patient needs to know the patients.
    """
    if hasattr(dataset, "patient_ids"):
        patients = [str(p) for p in dataset.patient_ids()]
    elif hasattr(dataset, "records") and hasattr(dataset, "examples"):
        patients = [str(dataset.records[i].patient_id) for i, _ in dataset.examples]
    elif hasattr(dataset, "items"):
        patients = [_patient_of(item) for item in dataset.items]
    else:
        raise ValueError(
            f"{what}: privacy.unit=patient needs the patient of every training example, and "
            f"{type(dataset).__name__} does not say; give it patient_ids() or set privacy.unit=example"
        )
    if not patients:
        raise ValueError(f"{what}: no training examples to count patients in")
    groups: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        groups.setdefault(patient, []).append(index)
    return list(groups.values())


def examples_per_patient(dataset: Any, *, what: str) -> int:
    """The largest number of training examples one patient contributes to ``dataset``."""
    return max(len(g) for g in patient_groups(dataset, what=what))
