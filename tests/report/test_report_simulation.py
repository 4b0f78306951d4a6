"""The report of a real run: one tiny federated simulation (2 virtual sites, DP-SGD on, tasks view,
lv_seg and volumes) renders every plot of the report from what the run wrote, and the prediction
files written by the central evaluation reproduce its metrics."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

TINY = [
    "data.synthetic_patients=12", "data.synthetic_image_size=64", "model.image_size=32",
    "task.image_size=[32,32]", "ssl.augment.image_size=32", "ssl.projection_dim=16",
    "train.batch_size=8", "train.lr=0.003", "federation.num_sites=2", "federation.strategy.min_sites=1",
]
DP = ["model.norm=group", "federation.privacy.mode=sample", "federation.privacy.noise_multiplier=1.0",
      "federation.privacy.max_grad_norm=1.0"]
EXPECTED_PNGS = (
    "curves_adapt_view.png", "curves_adapt_lv_seg.png", "curves_adapt_volumes.png", "epsilon.png", "bytes.png",
    "view_confusion.png", "view_roc.png", "view_tsne.png", "volumes_bland_altman.png", "volumes_tsne.png",
    "lv_seg_overlays.png",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from fedecho.federation.simulation import simulate

    run_dir = tmp_path_factory.mktemp("sim") / "run"
    simulate("federated", [*TINY, *DP, f"federation.run_dir={run_dir}", "federation.adapt.rounds=2",
                           "federation.tasks=[view,lv_seg,volumes]"], cpus_per_site=1, total_cpus=2)
    return run_dir


def test_every_report_plot_renders_from_the_run(run_dir):
    report = run_dir / "report" / "report.md"
    text = report.read_text()
    for name in EXPECTED_PNGS:
        path = report.parent / name
        assert path.is_file(), f"{name} missing; report has {sorted(p.name for p in report.parent.glob('*.png'))}"
        assert path.stat().st_size > 8_000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert min(pixels.shape) > 200, name
        assert pixels.std() > 15, f"{name} looks blank (std {pixels.std():.1f})"
        assert f"]({name})" in text, f"{name} not embedded in report.md"
    assert "t-SNE of the `view` embeddings, coloured by site and by class." in text
    assert "Privacy budget ε per patient spent per site" in text
    for task in ("view", "lv_seg", "volumes"):
        assert re.search(rf"### `{task}`: .+\n\n\| subset \| n \|.*\n.*\n\| all \|.*\n\| site_0 \|.*\n\| site_1 \|", text)
    assert text.count("Bootstrap 95 % confidence intervals") == 3


def test_learning_curves_have_a_line_per_site_and_the_global_one(run_dir):
    from fedecho.report import load_history, plot_learning_curves
    from fedecho.report.rundir import group_phases, primary_metric

    phases = group_phases(load_history(run_dir))
    for task in ("view", "lv_seg", "volumes"):
        records = phases[f"adapt:{task}"]
        fig = plot_learning_curves(f"adapt:{task}", records, primary_metric(f"adapt:{task}", records))
        for ax in fig.axes:
            assert {line.get_label() for line in ax.get_lines()} >= {"global", "site_0", "site_1"}
    eps = [r.sites_train["site_0"]["epsilon"] for phase in phases.values() for r in phase if r.sites_train.get("site_0")]
    assert len(eps) == 6 and all(a < b for a, b in itertools.pairwise(eps))


def test_prediction_files_reproduce_the_central_evaluation(run_dir):
    from fedecho.report import load_predictions
    from fedecho.tasks.metrics import classification_metrics

    history = json.loads((run_dir / "history.json").read_text())
    central = {r["phase"].split(":")[1]: r["central"] for r in history if r["phase"].startswith("evaluate:")}
    folder = run_dir / "predictions"
    assert sorted(p.name for p in folder.glob("*.npz")) == ["lv_seg.npz", "view.npz", "volumes.npz"]
    for name in ("view", "lv_seg", "volumes"):
        predictions = load_predictions(folder / f"{name}.npz")
        assert set(predictions["sites"].tolist()) == {"site_0", "site_1"}
        assert len(predictions["patients"]) == predictions.num_items
    view = load_predictions(folder / "view.npz")
    scores = classification_metrics(view["targets"], view["probs"], [str(c) for c in view["class_names"]])
    assert scores["accuracy"] == pytest.approx(central["view"]["accuracy"])
    assert scores["balanced_accuracy"] == pytest.approx(central["view"]["balanced_accuracy"])
    seg = load_predictions(folder / "lv_seg.npz")
    for s, structure in enumerate(seg["structure_names"]):
        assert seg["sample_dice"][:, s].mean() == pytest.approx(central["lv_seg"][f"dice/{structure}"], abs=1e-9)
    volumes = load_predictions(folder / "volumes.npz")
    assert str(volumes["unit"]) == "mL"
    mae = np.abs(volumes["preds"].astype(np.float64) - volumes["targets"]).mean()
    assert mae == pytest.approx(central["volumes"]["mae"], rel=1e-5)
