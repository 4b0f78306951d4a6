"""Experiment files: every one in simulations/ loads, names its published figure, and every arm at every
size composes into a valid run config; malformed files fail with one error listing every problem."""

from __future__ import annotations

import textwrap

import pytest

from fedecho.config.compose import compose_run_config
from fedecho.experiments import POOLED, arm_overrides, list_experiments, load_experiment
from fedecho.experiments.runner import data_overrides

EXPERIMENTS = list_experiments()


def test_the_suite_covers_every_seed():
    seeds = {load_experiment(name).seed for name in EXPERIMENTS}
    assert seeds == {"Segformer + LoRA", "SimCLR RHD", "EchoCLR", "EchoApex"}
    assert {"camus_lv_seg", "camus_lv_seg_lora", "echoclr_as", "echoclr_lvh"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_arm_composes(name, tmp_path):
    exp = load_experiment(name)
    assert exp.targets and all(t.published.source for t in exp.targets)
    assert not exp.uses_real_data("smoke"), "smoke sizes run on synthetic data (CI has no datasets)"
    for size in exp.sizes:
        for arm in ["pooled", *exp.federated]:
            overrides = arm_overrides(exp, size, arm, data_root=str(tmp_path))
            for encoder in (exp.encoders or {"": []}).values():
                cfg = compose_run_config([*overrides, *encoder], exp.config)
                assert set(exp.tasks) <= set(cfg.federation.tasks)
                if arm == "pooled":
                    assert cfg.federation.num_sites == 1 and cfg.federation.strategy.name == "fedavg"
                    assert cfg.data.partition.method == "iid"
                else:
                    assert cfg.federation.num_sites >= 2
        if exp.pretext_for(size):
            compose_run_config(exp.pretext_for(size), "train")


def test_pooled_arm_is_one_site_fedavg():
    exp = load_experiment("camus_lv_seg")
    overrides = arm_overrides(exp, "smoke", "pooled")
    assert overrides[-len(POOLED):] == POOLED  # the pooled settings win over the experiment's
    federated = compose_run_config(arm_overrides(exp, "smoke", "fedprox-intensity"), exp.config)
    assert federated.federation.strategy.name == "fedprox" and federated.data.partition.key == "image_intensity"


def test_real_data_size_without_the_dataset_names_the_fix(tmp_path):
    exp = load_experiment("segformer_echonet_lv_seg")
    with pytest.raises(FileNotFoundError, match="--data-root"):
        data_overrides(exp, "full", None)
    with pytest.raises(FileNotFoundError, match="echonet-dynamic dataset, not found"):
        data_overrides(exp, "full", str(tmp_path / "absent"))
    assert data_overrides(exp, "full", str(tmp_path)) == [f"data.root={tmp_path}"]
    assert data_overrides(exp, "smoke", None) == []


def test_unknown_arm_and_size_are_named():
    exp = load_experiment("camus_lv_seg")
    with pytest.raises(ValueError, match="no arm 'fedyogi'.*pooled, fedavg-intensity"):
        arm_overrides(exp, "smoke", "fedyogi")
    with pytest.raises(ValueError, match="no size 'huge'; sizes: smoke, full"):
        exp.size_overrides("huge")


def test_malformed_file_lists_every_problem(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(textwrap.dedent("""
        name: other
        title: t
        seed: s
        dataset: camus
        method: m
        backbone: resnet18
        config: federated
        colour: blue
        targets:
          - task: view
            published: {value: 0.9, metric: acc, source: a, b}
        federated: {}
        sizes: {full: []}
        fractions: {smoke: [0, 0.5]}
    """))
    with pytest.raises(ValueError) as err:
        load_experiment(path)
    text = str(err.value)
    for problem in ("unknown key 'colour'", "name 'other' differs", "target 1 misses metric",
                    "unknown published key(s) ['b']", "federated must map", "sizes must include 'smoke'",
                    "fractions need encoders: 'random' and at least one pretraining arm", "fraction 0 is not in (0, 1]"):
        assert problem in text, problem


def test_missing_experiment_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known: .*camus_lv_seg"):
        load_experiment("no_such_experiment")


def test_composed_configs_are_remembered_until_a_conf_file_changes(tmp_path, monkeypatch):
    import shutil

    from fedecho.config import compose

    conf = tmp_path / "conf"
    shutil.copytree(compose.conf_dir(), conf)
    monkeypatch.setenv("FEDECHO_CONF", str(conf))
    calls = []
    real = compose._compose
    monkeypatch.setattr(compose, "_compose", lambda *a: calls.append(a) or real(*a))
    first = compose_run_config(["train.lr=0.01"], "federated")
    second = compose_run_config(["train.lr=0.01"], "federated")
    assert len(calls) == 1 and first == second and first is not second and first.train is not second.train
    second.train.lr = 1.0  # a caller's changes stay its own
    assert compose_run_config(["train.lr=0.01"], "federated").train.lr == 0.01 and len(calls) == 1
    assert compose_run_config(["train.lr=0.02"], "federated").train.lr == 0.02 and len(calls) == 2
    yaml = conf / "federated.yaml"
    yaml.write_text(yaml.read_text() + "\n# edited\n")
    compose_run_config(["train.lr=0.01"], "federated")
    assert len(calls) == 3  # an edited conf file is composed again
    for _ in range(2):  # errors are raised on every call
        with pytest.raises(ValueError, match="no_such_key"):
            compose_run_config(["train.no_such_key=1"], "federated")
        with pytest.raises(ValueError, match="configuration"):
            compose_run_config(["model=no_such_model"], "federated")
