"""Patient-level splits, partitioners and label fractions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedecho.config.data import DataConfig, PartitionConfig
from fedecho.data.errors import EchoDataError
from fedecho.data.fractions import ECHOCLR_FRACTIONS, label_fraction
from fedecho.data.partition import PARTITIONERS, partition_patients, patient_attribute
from fedecho.data.schema import ItemRecord
from fedecho.data.splits import assign_splits, check_patient_level, split_records


def make_records(n_patients=60, items_per_patient=3, seed=0, split=None):
    rng = np.random.default_rng(seed)
    views = ["A4C", "A2C", "PLAX", "PSAX"]
    records = []
    for p in range(n_patients):
        scanner = ["site_a", "site_b", "site_c"][p % 3]
        age = float(rng.uniform(20, 90))
        for i in range(items_per_patient):
            records.append(
                ItemRecord(
                    source="synthetic" if p % 2 else "other",
                    patient_id=f"p{p:03d}",
                    study_id=f"p{p:03d}s1",
                    item_id=f"p{p:03d}_{i}",
                    path=f"/data/p{p:03d}_{i}.png",
                    split=split,
                    labels={"view": views[p % 4], "age": age, "scanner": scanner},
                )
            )
    return records


def test_assign_splits_is_patient_level_deterministic_and_proportional():
    records = make_records(100)
    a = assign_splits(records, seed=3)
    b = assign_splits(records, seed=3)
    assert [r.split for r in a] == [r.split for r in b]
    check_patient_level(a)
    per_split = {k: {r.patient_id for r in v} for k, v in split_records(a).items()}
    assert sum(len(v) for v in per_split.values()) == 100
    assert not (per_split["train"] & per_split["test"]) and not (per_split["train"] & per_split["val"])
    assert [len(per_split[k]) for k in ("train", "val", "test")] == [70, 15, 15]
    c = assign_splits(records, seed=4)
    assert [r.split for r in a] != [r.split for r in c]


def test_existing_source_split_is_kept_and_a_leaking_split_is_refused():
    records = make_records(10, split="test")
    assert {r.split for r in assign_splits(records)} == {"test"}
    leaky = list(records)
    leaky[0] = ItemRecord(**{**leaky[0].__dict__, "split": "train"})
    with pytest.raises(EchoDataError, match="patient p000 appears in splits \\['test', 'train'\\]"):
        assign_splits(leaky)


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(make_records(5), fractions=(0.5, 0.5, 0.5))


def _check_disjoint_cover(partition, records):
    all_patients = {r.patient_id for r in records}
    seen = [p for site in partition.sites for p in site]
    assert len(seen) == len(set(seen)) == len(all_patients)
    assert set(seen) == all_patients


@pytest.mark.parametrize(
    "method,options",
    [
        ("iid", {}),
        ("dirichlet", {"label": "view", "alpha": 0.3}),
        ("dirichlet", {"label": "age", "alpha": 1.0, "bins": 4}),
        ("quantity", {"alpha": 0.5}),
        ("attribute", {"key": "scanner"}),
    ],
)
def test_partitioners_cover_every_patient_once_and_are_deterministic(method, options):
    records = make_records(60)
    p1 = partition_patients(records, method, 3, **options)
    p2 = partition_patients(records, method, 3, **options)
    assert p1 == p2
    _check_disjoint_cover(p1, records)
    # Items of one patient always land on the same site.
    site_of = p1.site_of()
    for site in range(3):
        for record in p1.site_records(site, records):
            assert site_of[record.patient_id] == site


def test_iid_sizes_are_balanced_and_dirichlet_is_skewed():
    records = make_records(120)
    iid = partition_patients(records, "iid", 4, seed=1)
    assert max(iid.sizes()) - min(iid.sizes()) <= 1
    skewed = partition_patients(records, "dirichlet", 4, label="view", alpha=0.1, seed=1)
    view = patient_attribute(records, "view")
    # With alpha=0.1 at least one site is dominated by one view; IID sites are close to uniform.
    def max_share(partition):
        return max(Counter(view[p] for p in site).most_common(1)[0][1] / len(site) for site in partition.sites)
    assert max_share(skewed) > 0.6
    assert max_share(iid) < 0.45


def test_attribute_partition_puts_each_scanner_on_one_site():
    records = make_records(30)
    partition = partition_patients(records, "attribute", 3, key="scanner")
    scanner = patient_attribute(records, "scanner")
    assert sorted(len({scanner[p] for p in site}) for site in partition.sites) == [1, 1, 1]
    with pytest.raises(ValueError, match="has 3 distinct values .* for 4 sites"):
        partition_patients(records, "attribute", 4, key="scanner")


def test_natural_partition_is_one_source_per_site():
    records = make_records(20)
    partition = partition_patients(records, "natural", 2)
    source = patient_attribute(records, "source")
    assert all(len({source[p] for p in site}) == 1 for site in partition.sites)
    with pytest.raises(ValueError, match="found 2 sources"):
        partition_patients(records, "natural", 3)


def test_quantity_skew_keeps_minimum_and_total():
    records = make_records(50)
    partition = partition_patients(records, "quantity", 5, alpha=0.2, min_patients=3, seed=2)
    assert sum(partition.sizes()) == 50 and min(partition.sizes()) >= 3
    assert max(partition.sizes()) > 10


def test_unknown_partitioner_lists_valid_ones_and_too_many_sites_fails():
    with pytest.raises(ValueError, match="valid partitioners: attribute, dirichlet, iid, natural, quantity"):
        partition_patients(make_records(5), "random", 2)
    assert "iid" in PARTITIONERS
    with pytest.raises(ValueError, match="cannot split 5 patients into 6 sites"):
        partition_patients(make_records(5), "iid", 6)


def test_impossible_dirichlet_names_the_fix():
    with pytest.raises(ValueError, match="raise alpha"):
        partition_patients(make_records(15), "dirichlet", 5, label="view", alpha=1e-4, min_patients=3)
    with pytest.raises(ValueError, match="cannot give 4 sites 3 each; lower min_patients"):
        partition_patients(make_records(8), "dirichlet", 4, label="view", min_patients=3)


def test_label_fractions_are_nested_patient_level_and_sized():
    records = make_records(200, items_per_patient=2)
    previous: set[str] = set()
    for fraction in ECHOCLR_FRACTIONS:
        subset = label_fraction(records, fraction, seed=7)
        patients = {r.patient_id for r in subset}
        assert len(patients) == max(1, int(np.ceil(fraction * 200 - 1e-9)))
        # every item of a chosen patient is kept
        assert len(subset) == 2 * len(patients)
        assert previous <= patients
        previous = patients
    assert len({r.patient_id for r in label_fraction(records, 0.1, seed=7)}) == 20
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        label_fraction(records, 0.0)


def test_data_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="needs data.root"):
        DataConfig(format="camus")
    with pytest.raises(ValueError, match="needs partition.label"):
        PartitionConfig(method="dirichlet")
    cfg = DataConfig(format="camus", root="/x", partition={"method": "attribute", "key": "scanner"})
    assert cfg.partition.options() == {"key": "scanner", "bins": None}
