"""`fedecho train` end to end on tiny synthetic data, and configuration errors that name the fix."""

from __future__ import annotations

import json

import pytest
import torch

from fedecho.cli.main import main
from fedecho.config.compose import compose_run_config
from fedecho.report.tensorboard import read_scalars

TINY = ["data.synthetic_patients=8", "data.synthetic_image_size=64", "model.image_size=32",
        "task.image_size=[32,32]", "ssl.augment.image_size=32", "ssl.projection_dim=16", "train.batch_size=8"]


def test_finetune_lora_lv_seg_writes_checkpoints_results_and_tensorboard(tmp_path, capsys):
    out = tmp_path / "seg"
    code = main(["train", *TINY, "task=lv_seg", "encoder=lora", "train.epochs=2", "train.lr=3e-3",
                 f"train.out_dir={out}", f"data.root={tmp_path / 'data'}"])
    assert code == 0
    assert "test (dice selected" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_run"] == 2 and results["selection"] == ["dice", "max"]
    assert 0.0 <= results["test"]["dice/lv_cavity"] <= 1.0
    assert results["trainable_parameters"] < 0.2 * results["total_parameters"]
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    scalars = read_scalars(out / "tb")
    assert len(scalars["val/dice"]) == 2 and "test/dice/lv_cavity" in scalars


def test_pretrain_then_finetune_from_its_encoder(tmp_path):
    pre = tmp_path / "pre"
    assert main(["train", *TINY, "mode=pretrain", "ssl=simclr", "train.epochs=1", f"train.out_dir={pre}",
                 f"data.root={tmp_path / 'data'}"]) == 0
    checkpoint = pre / "checkpoints" / "last.pt"
    assert checkpoint.is_file()
    from fedecho.engine.build import build_task_learner, encoder_state_from_checkpoint

    encoder = encoder_state_from_checkpoint(str(checkpoint))
    cfg = compose_run_config([*TINY, "encoder=frozen"])
    learner = build_task_learner(cfg, encoder_state=encoder)
    # the probe's encoder is exactly the pretrained one
    own = learner.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in encoder.items())
    fine = tmp_path / "probe"
    assert main(["train", *TINY, "encoder=frozen", "train.epochs=1", f"init={checkpoint}",
                 f"train.out_dir={fine}", f"data.root={tmp_path / 'data'}"]) == 0
    results = json.loads((fine / "results.json").read_text())
    assert results["trainable_parameters"] < 10_000  # a linear probe: the head only


def test_threads_setting_reaches_torch(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["train", *TINY, "train.threads=1", "train.epochs=1", f"train.out_dir={tmp_path / 'out'}",
                 f"data.root={tmp_path / 'data'}"]) == 0
    assert calls == [1]


def test_label_fraction_trains_on_a_patient_subset(tmp_path):
    from fedecho.engine.data import load_site

    cfg = compose_run_config([*TINY, "data.synthetic_patients=20", "data.label_fraction=0.25",
                              f"data.root={tmp_path / 'data'}"])
    full = load_site(cfg.data)
    part = load_site(cfg.data, fraction_of_train=True)
    full_patients = {r.patient_id for r in full.train}
    part_patients = {r.patient_id for r in part.train}
    assert part_patients < full_patients and len(part_patients) == -(-len(full_patients) // 4)
    assert part.test == full.test  # evaluation keeps every test patient


@pytest.mark.parametrize("overrides,message", [
    (["task=nope"], "Could not find 'task/nope'"),
    (["task.name=nope"], "valid tasks: age, as_present, as_severity, ef, lv_seg, lvh, lvh_present, view, volumes"),
    (["model=r3d18", "task=lv_seg"], "r3d18"),
    (["mode=pretrain", "ssl=echoclr"], "needs a backbone with input_kind='clip' (e.g. r3d18"),
    (["federation.privacy.mode=sample", "federation.pretrain.rounds=1", "ssl=simclr"], "Use federation.privacy.mode=site"),
    (["federation.privacy.mode=sample"], "set model.norm=group"),
    (["trian.lr=1"], "unknown RunConfig setting(s) ['trian']"),
    (["train.threads=0"], "train.threads must be >= 1"),
])
def test_bad_configurations_fail_before_training_and_name_the_fix(tmp_path, overrides, message, capsys):
    code = main(["train", *TINY, *overrides, f"train.out_dir={tmp_path / 'out'}", f"data.root={tmp_path / 'data'}"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()
