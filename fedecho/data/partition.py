"""Partitioners: split a dataset into virtual sites for simulation, always patient by patient.

Every partitioner takes records, groups them by patient and returns a :class:`Partition` (patient
ids per site). All are deterministic for a seed. Methods (registry :data:`PARTITIONERS`):

- ``iid``: patients shuffled and dealt evenly.
- ``dirichlet``: per class of a label, site shares ~ Dir(α) (Hsu et al. 2019, "Measuring the effects
  of non-identical data distribution"); numeric labels (EF, age) are binned into quantiles first.
- ``attribute``: one or more values of an attribute per site (scanner style, image quality, age band).
- ``quantity``: site sizes ~ Dir(α), labels IID (quantity skew).
- ``natural``: one source dataset per site (FedCVD's Fed-ECHO: CAMUS / EchoNet-Dynamic / ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from fedecho.data.schema import ItemRecord
from fedecho.data.splits import records_by_patient
from fedecho.registry import Registry

__all__ = ["PARTITIONERS", "Partition", "partition_patients", "patient_attribute"]

PARTITIONERS: Registry[Callable[..., "Partition"]] = Registry("partitioner")

_MAX_TRIES = 1000


@dataclass(frozen=True)
class Partition:
    """Patient ids per site. ``sites[k]`` is the sorted tuple of site k's patients."""

    method: str
    sites: tuple[tuple[str, ...], ...]

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    def site_of(self) -> dict[str, int]:
        return {patient: k for k, patients in enumerate(self.sites) for patient in patients}

    def site_records(self, site: int, records: Sequence[ItemRecord]) -> list[ItemRecord]:
        if not 0 <= site < self.num_sites:
            raise ValueError(f"site index {site} out of range; this partition has {self.num_sites} sites")
        members = set(self.sites[site])
        return [r for r in records if r.patient_id in members]

    def sizes(self) -> list[int]:
        return [len(s) for s in self.sites]


def patient_attribute(
    records: Sequence[ItemRecord], key: str, *, bins: int | None = None, missing: Hashable = "unlabelled"
) -> dict[str, Hashable]:
    """One value of ``key`` per patient: ``record.source`` for ``key="source"``, else the most common
    label value over the patient's records. Numeric values are cut into ``bins`` quantile bins
    ("q0" ... ) when ``bins`` is given."""
    raw: dict[str, Hashable] = {}
    for patient, group in records_by_patient(records).items():
        if key == "source":
            values = [r.source for r in group]
        else:
            values = [r.labels[key] for r in group if r.labels.get(key) is not None]
        raw[patient] = Counter(values).most_common(1)[0][0] if values else missing
    if bins is None:
        return raw
    numeric = {p: float(v) for p, v in raw.items() if v is not missing}
    if not numeric:
        raise ValueError(f"no patient has a numeric {key!r} label to bin")
    edges = np.quantile(np.fromiter(numeric.values(), float), np.linspace(0, 1, bins + 1)[1:-1])
    return {p: (f"q{int(np.searchsorted(edges, numeric[p], side='right'))}" if p in numeric else missing) for p in raw}


def partition_patients(records: Sequence[ItemRecord], method: str, num_sites: int, **options) -> Partition:
    """Partition ``records`` into ``num_sites`` sites with a registered method (see module doc)."""
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    patients = sorted(records_by_patient(records))
    if len(patients) < num_sites:
        raise ValueError(
            f"cannot split {len(patients)} patients into {num_sites} sites; use fewer sites or more data"
        )
    return PARTITIONERS.get(method)(records, patients, num_sites, **options)


def _finish(method: str, assignment: dict[str, int], num_sites: int) -> Partition:
    sites = [[] for _ in range(num_sites)]
    for patient, site in assignment.items():
        sites[site].append(patient)
    return Partition(method, tuple(tuple(sorted(s)) for s in sites))


@PARTITIONERS.register("iid")
def _iid(records, patients, num_sites, *, seed: int = 0) -> Partition:
    order = np.random.default_rng(seed).permutation(len(patients))
    return _finish("iid", {patients[i]: rank % num_sites for rank, i in enumerate(order)}, num_sites)


@PARTITIONERS.register("dirichlet")
def _dirichlet(
    records, patients, num_sites, *, label: str, alpha: float = 0.5, seed: int = 0, min_patients: int = 2,
    bins: int | None = None,
) -> Partition:
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if num_sites * min_patients > len(patients):
        raise ValueError(f"{len(patients)} patients cannot give {num_sites} sites {min_patients} each; "
                         f"lower min_patients or use fewer sites")
    values = patient_attribute(records, label, bins=bins)
    classes = sorted({values[p] for p in patients}, key=str)
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_TRIES):
        assignment: dict[str, int] = {}
        for cls in classes:
            members = [p for p in patients if values[p] == cls]
            members = [members[i] for i in rng.permutation(len(members))]
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(np.arange(len(members)), cuts)):
                assignment.update({members[i]: site for i in chunk})
        sizes = np.bincount(list(assignment.values()), minlength=num_sites)
        if sizes.min() >= min_patients:
            return _finish("dirichlet", assignment, num_sites)
    raise ValueError(
        f"dirichlet(alpha={alpha}) could not give every one of {num_sites} sites >= {min_patients} "
        f"patients in {_MAX_TRIES} draws from {len(patients)} patients; raise alpha, lower min_patients "
        f"or use fewer sites"
    )


@PARTITIONERS.register("quantity")
def _quantity(records, patients, num_sites, *, alpha: float = 1.0, seed: int = 0, min_patients: int = 2) -> Partition:
    if num_sites * min_patients > len(patients):
        raise ValueError(f"{len(patients)} patients cannot give {num_sites} sites {min_patients} each; "
                         f"lower min_patients or use fewer sites")
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(num_sites, alpha))
    extra = len(patients) - num_sites * min_patients
    sizes = min_patients + np.floor(shares * extra).astype(int)
    sizes[np.argmax(shares)] += len(patients) - sizes.sum()
    order = rng.permutation(len(patients))
    site_ids = np.repeat(np.arange(num_sites), sizes)
    return _finish("quantity", {patients[i]: int(site_ids[rank]) for rank, i in enumerate(order)}, num_sites)


@PARTITIONERS.register("attribute")
def _attribute(records, patients, num_sites, *, key: str, bins: int | None = None, seed: int = 0) -> Partition:
    del seed  # the assignment is a deterministic function of the values
    values = patient_attribute(records, key, bins=bins)
    groups: dict[Hashable, list[str]] = {}
    for p in patients:
        groups.setdefault(values[p], []).append(p)
    if len(groups) < num_sites:
        raise ValueError(
            f"attribute {key!r} has {len(groups)} distinct values ({sorted(map(str, groups))}) for "
            f"{num_sites} sites; use at most {len(groups)} sites, set bins for a numeric attribute, or "
            f"use another partitioner"
        )
    # Largest groups first, each to the currently smallest site (deterministic ties by value).
    load = [0] * num_sites
    assignment: dict[str, int] = {}
    for value, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        site = min(range(num_sites), key=lambda k: (load[k], k))
        load[site] += len(members)
        assignment.update({p: site for p in members})
    return _finish("attribute", assignment, num_sites)


@PARTITIONERS.register("natural")
def _natural(records, patients, num_sites, *, seed: int = 0) -> Partition:
    del seed
    sources = patient_attribute(records, "source")
    names = sorted(set(sources.values()), key=str)
    if len(names) != num_sites:
        raise ValueError(
            f"natural partition makes one site per source dataset; found {len(names)} sources "
            f"({', '.join(map(str, names))}) but {num_sites} sites were asked for"
        )
    return _finish("natural", {p: names.index(sources[p]) for p in patients}, num_sites)
