"""Local-only arms: one per site of each distinct partition, composing into one-site runs whose data
is exactly that site's train/val patients of the federated arm's partition, tested on the pooled
test split."""

from __future__ import annotations

import pytest

from fedecho.config.compose import compose_run_config
from fedecho.experiments import load_experiment
from fedecho.experiments.runner import arm_overrides, local_arms


def test_one_local_arm_per_site_of_each_partition():
    exp = load_experiment("camus_lv_seg")
    arms = local_arms(exp, "smoke", list(exp.federated))
    # fedavg-intensity and fedprox-intensity share a partition: its local arms are counted once
    assert sorted(arms) == [f"local-{a}-{k}" for a in ("fedavg-dirichlet", "fedavg-intensity") for k in range(3)]
    for name, arm in arms.items():
        cfg = compose_run_config(arm["overrides"], exp.config)
        assert cfg.federation.num_sites == 1 and cfg.federation.strategy.name == "fedavg"
        assert cfg.data.partition.only_site == arm["site"] and cfg.data.partition.num_sites == 3
        federated = compose_run_config(arm_overrides(exp, "smoke", arm["of"]), exp.config)
        assert cfg.data.partition.method == federated.data.partition.method  # the same sites
        assert cfg.federation.adapt == federated.federation.adapt  # same rounds x local epochs


def test_only_site_keeps_the_site_patients_and_the_pooled_test_split():
    from fedecho.engine.data import load_site

    base = ["data=synthetic", "data.synthetic_format=camus", "data.synthetic_patients=12", "data.synthetic_image_size=32",
            "data.partition.method=iid"]
    federated = compose_run_config([*base, "federation.num_sites=3"], "federated").data
    pooled = load_site(federated)
    sites = [load_site(federated, site=k, num_sites=3) for k in range(3)]
    for k in range(3):
        local = load_site(compose_run_config([*base, "federation.num_sites=1", "federation.strategy.min_sites=1", "data.partition.num_sites=3",
                                              f"data.partition.only_site={k}"], "federated").data)
        ids = lambda records: sorted(r.item_id for r in records)  # noqa: E731
        assert ids(local.train) == ids(sites[k].train) and ids(local.val) == ids(sites[k].val)
        assert ids(local.test) == ids(pooled.test)
        assert len(local.train) < len(pooled.train)


def test_only_site_needs_a_partition():
    with pytest.raises(ValueError, match="partition.num_sites >= 2"):
        compose_run_config(["data.partition.num_sites=1", "data.partition.only_site=0"], "federated")
    with pytest.raises(ValueError, match="only_site=3 must be a site index"):
        compose_run_config(["data.partition.num_sites=3", "data.partition.only_site=3"], "federated")
