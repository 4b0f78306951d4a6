"""Prediction files from an evaluation pass: for each task kind the arrays agree with the task's own
metrics on the same pass (and with a second, independent computation), embeddings are the pooled
encoder output, sites follow the simulation's partition, and ``fedecho train`` writes the file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedecho.config.compose import compose_run_config
from fedecho.data.errors import EchoDataError
from fedecho.engine.build import build_task_learner
from fedecho.engine.data import load_site
from fedecho.engine.loaders import task_loaders
from fedecho.engine.predictions import (
    collect_predictions,
    partition_site_names,
    prediction_arrays,
    run_predictions,
)
from fedecho.engine.trainer import Trainer
from fedecho.report.bootstrap import prediction_cis
from fedecho.report.predictions import load_predictions, save_predictions
from fedecho.tasks.metrics import classification_metrics

TINY = ["data.synthetic_patients=8", "data.synthetic_image_size=64", "model.image_size=32",
        "task.image_size=[32,32]", "ssl.augment.image_size=32", "ssl.projection_dim=16", "train.batch_size=4"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _setup(data_root, task: str, fmt: str = "camus", extra=()):
    cfg = compose_run_config([*TINY, f"task={task}", f"data.synthetic_format={fmt}",
                              f"data.root={data_root / fmt}", *extra])
    torch.manual_seed(0)
    learner = build_task_learner(cfg)
    loader = task_loaders(cfg, load_site(cfg.data), learner.task, splits=("test",))["test"]
    return cfg, learner, loader, Trainer(learner, cfg.train, total_steps=1)


def _same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert (math.isnan(value) and math.isnan(b[key])) or value == b[key], key


def test_classification_arrays_agree_with_the_task_and_embed_the_pooled_encoder(data_root, tmp_path):
    _, learner, loader, trainer = _setup(data_root, "view")
    run = run_predictions(trainer, loader)
    # the metrics of the prediction pass are exactly the evaluation's
    _same_metrics(learner.metrics(run.outputs, run.batch), trainer.evaluate(loader))
    patients = sorted(set(run.batch["patient_id"]))
    sites = {p: f"site_{i % 2}" for i, p in enumerate(patients)}
    arrays = prediction_arrays(learner.task, run, site_names=sites)
    np.testing.assert_allclose(arrays["probs"], torch.softmax(run.outputs, 1).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(arrays["targets"], run.batch["label"].numpy())
    assert arrays["class_names"].tolist() == list(learner.task.classes)
    assert arrays["patients"].tolist() == list(run.batch["patient_id"])
    assert arrays["sites"].tolist() == [sites[p] for p in run.batch["patient_id"]]
    scores = classification_metrics(arrays["targets"], arrays["probs"], learner.task.classes)
    metrics = learner.metrics(run.outputs, run.batch)
    for key in ("accuracy", "balanced_accuracy"):
        assert scores[key] == pytest.approx(metrics[key])
    # embeddings = backbone.forward_embed of each evaluated image, computed here independently
    learner.eval()
    with torch.no_grad():
        expected = torch.cat([learner.backbone.forward_embed(learner.task.backbone_input(learner.backbone, b))
                              for b in loader])
    np.testing.assert_allclose(arrays["embeddings"], expected.numpy(), rtol=1e-5, atol=1e-6)
    loaded = load_predictions(save_predictions(tmp_path / "view.npz", **arrays))
    assert loaded.kind == "classification" and loaded.size == len(run.outputs)

    # above max_embeddings a seeded subset is kept, named by embedding_index
    small = collect_predictions(trainer, loader, learner.task, max_embeddings=3, seed=4)
    assert len(small["embeddings"]) == 3 and len(set(small["embedding_index"].tolist())) == 3
    np.testing.assert_allclose(small["embeddings"], expected.numpy()[small["embedding_index"]], rtol=1e-5, atol=1e-6)
    again = collect_predictions(trainer, loader, learner.task, max_embeddings=3, seed=4)
    np.testing.assert_array_equal(small["embedding_index"], again["embedding_index"])
    save_predictions(tmp_path / "subset.npz", **small)
    assert "embeddings" not in collect_predictions(trainer, loader, learner.task, embed=False)
    with pytest.raises(ValueError, match=f"no site for patients \\['{patients[0]}'\\]"):
        prediction_arrays(learner.task, run, site_names={p: "site_0" for p in patients[1:]})


def test_regression_arrays_are_in_physical_units(data_root):
    _, learner, loader, trainer = _setup(data_root, "volumes")
    run = run_predictions(trainer, loader)
    arrays = prediction_arrays(learner.task, run)
    assert str(arrays["unit"]) == "mL"
    np.testing.assert_array_equal(arrays["preds"], run.outputs.reshape(-1).numpy())
    np.testing.assert_array_equal(arrays["targets"], run.batch["target"].reshape(-1).numpy())
    metrics = learner.metrics(run.outputs, run.batch)
    assert np.abs(arrays["preds"] - arrays["targets"]).mean() == pytest.approx(metrics["mae"], rel=1e-6)
    assert arrays["embeddings"].shape == (len(arrays["preds"]), learner.backbone.embed_dim)


def test_segmentation_per_item_dice_averages_to_the_task_metrics(data_root, tmp_path):
    _, learner, loader, trainer = _setup(data_root, "lv_seg")
    run = run_predictions(trainer, loader)
    arrays = prediction_arrays(learner.task, run, max_examples=4)
    metrics = learner.metrics(run.outputs, run.batch)
    n = len(run.outputs)
    assert arrays["sample_dice"].shape == (n, 3)
    assert arrays["structure_names"].tolist() == ["lv_cavity", "myocardium", "left_atrium"]
    for s, name in enumerate(arrays["structure_names"]):
        assert arrays["sample_dice"][:, s].mean() == pytest.approx(metrics[f"dice/{name}"], abs=1e-12)
    assert arrays["sample_dice"].mean(axis=0).mean() == pytest.approx(metrics["dice"], abs=1e-12)
    # 4 evenly spaced examples, with their own masks and argmax predictions
    chosen = np.linspace(0, n - 1, 4).round().astype(int)
    assert n > 4 and arrays["masks"].shape == (4, 32, 32)
    np.testing.assert_array_equal(arrays["masks"], run.batch["mask"].numpy()[chosen])
    np.testing.assert_array_equal(arrays["pred_masks"], run.outputs.argmax(1).numpy()[chosen])
    images = arrays["images"]
    assert images.min() == 0.0 and images.max() == 1.0
    assert arrays["patients"].tolist() == list(run.batch["patient_id"])
    # each image's cardiac phase, read by the CAMUS reader from its file name (patientXXXX_4CH_ED.nii.gz);
    # a traced frame of a half sequence has none
    expected = [item.rsplit("_", 1)[1] if item.endswith(("_ED", "_ES")) else "" for item in run.batch["item_id"]]
    assert arrays["phases"].tolist() == expected
    assert {"ED", "ES"} <= set(arrays["phases"].tolist())
    loaded = load_predictions(save_predictions(tmp_path / "lv_seg.npz", **arrays))
    assert (loaded.kind, loaded.size, loaded.num_items) == ("segmentation", 4, n)
    ed = loaded["phases"] == "ED"
    assert prediction_cis(loaded, n_boot=50)["dice/lv_cavity@ED"][0] == pytest.approx(arrays["sample_dice"][ed, 0].mean())


def test_lvh_rows_are_caliper_lengths_whose_mean_error_is_the_task_mae_mm(data_root):
    _, learner, loader, trainer = _setup(data_root, "lvh", "echonet-lvh", ["data.synthetic_patients=10"])
    run = run_predictions(trainer, loader)
    arrays = prediction_arrays(learner.task, run)
    metrics = learner.metrics(run.outputs, run.batch)
    assert str(arrays["unit"]) == "mm"
    names = sorted(set(arrays["quantities"].tolist()))
    assert names and set(names) <= set(learner.task.measurements)
    for name in names:
        rows = arrays["quantities"] == name
        error = np.abs(arrays["preds"][rows] - arrays["targets"][rows]).mean()
        assert error == pytest.approx(metrics[f"mae_mm/{name}"], rel=1e-9)
    assert "embeddings" not in arrays and len(arrays["patients"]) == len(arrays["preds"])


def test_partition_site_names_are_the_virtual_sites_of_a_simulation(data_root):
    cfg = compose_run_config([*TINY, f"data.root={data_root / 'camus'}", "federation.num_sites=2",
                              "data.partition.method=iid"], "federated")
    names = partition_site_names(cfg.data, 2)
    for k in range(2):
        site = load_site(cfg.data, site=k, num_sites=2)
        patients = {r.patient_id for split in ("train", "val", "test") for r in site.split(split)}
        assert patients and all(names[p] == f"site_{k}" for p in patients)
    assert len(set(names.values())) == 2
    assert partition_site_names(cfg.data, 1) is None


def test_bad_prediction_arrays_are_refused_naming_the_problem(tmp_path):
    seg = {"images": np.zeros((1, 4, 4)), "masks": np.zeros((1, 4, 4), int), "pred_masks": np.zeros((1, 4, 4), int)}
    path = tmp_path / "seg.npz"
    with pytest.raises(EchoDataError, match="needs 'structure_names'"):
        save_predictions(path, **seg, sample_dice=np.ones((3, 2)))
    with pytest.raises(EchoDataError, match="'patients' describes 'sample_dice' rows"):
        save_predictions(path, **seg, patients=["p1"])
    with pytest.raises(EchoDataError) as err:
        save_predictions(path, **seg, sample_dice=np.full((3, 2), 1.5), structure_names=["lv"], sites=["a", "b"])
    text = str(err.value)
    assert "2 columns but 'structure_names' has 1" in text and "must lie in [0, 1]" in text
    assert "'sites' has 2 rows but there are 3 samples" in text
    regression = {"preds": np.zeros(3), "targets": np.ones(3)}
    with pytest.raises(EchoDataError, match="distinct sample indices in 0..2"):
        save_predictions(path.with_name("r.npz"), **regression, embeddings=np.zeros((2, 4)), embedding_index=[0, 3])
    with pytest.raises(EchoDataError, match="give 'embedding_index' for a subset"):
        save_predictions(path.with_name("r.npz"), **regression, embeddings=np.zeros((2, 4)))
    with pytest.raises(EchoDataError, match="'quantities' has 2 rows"):
        save_predictions(path.with_name("r.npz"), **regression, quantities=["IVSd", "LVIDd"])


@pytest.mark.slow
def test_fedecho_train_writes_the_test_predictions(data_root, tmp_path):
    from fedecho.cli.main import main

    out = tmp_path / "run"
    assert main(["train", *TINY, "task.classes=[A4C,A2C]", "train.epochs=1", f"train.out_dir={out}",
                 f"data.root={data_root / 'camus'}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["predictions"] == str(out / "predictions" / "view.npz")
    predictions = load_predictions(results["predictions"])
    assert predictions["class_names"].tolist() == ["A4C", "A2C"] and "sites" not in predictions
    scores = classification_metrics(predictions["targets"], predictions["probs"], ["A4C", "A2C"])
    for key in ("accuracy", "balanced_accuracy", "auroc"):
        assert scores[key] == pytest.approx(results["test"][key], nan_ok=True)
