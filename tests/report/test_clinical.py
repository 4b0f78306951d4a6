"""Clinical read-outs against closed forms: an ellipse mask's area (pi a b) and single-plane Simpson
volume (the prolate spheroid 4/3 pi a^2 b), EF from two ellipses, agreement statistics by hand, and
the end-to-end read-out of a run's model on synthetic CAMUS data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedecho.report.clinical import QUANTITIES, agreement, clinical_table, lv_indices, plot_clinical, write_clinical


def ellipse(a: float, b: float, shape=(160, 120), centre=(80.0, 60.0)) -> np.ndarray:
    """Mask of the ellipse with horizontal semi-axis a and vertical (long) semi-axis b, in pixels."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (((cols - centre[1]) / a) ** 2 + ((rows - centre[0]) / b) ** 2 <= 1).astype(np.uint8)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.3)])
def test_ellipse_area_and_simpson_volume_match_closed_forms(spacing):
    a, b = 25.0, 60.0  # pixels
    mask = ellipse(a, b)
    out = lv_indices(mask, mask, spacing)
    a_mm, b_mm = a * spacing[1], b * spacing[0]
    assert out["ed_area_cm2"] == pytest.approx(math.pi * a_mm * b_mm / 100, rel=0.01)
    # a disk stack about the long axis of an ellipse is a prolate spheroid: 4/3 pi a^2 b
    assert out["edv_ml"] == pytest.approx(4 / 3 * math.pi * a_mm**2 * b_mm / 1000, rel=0.02)
    assert out["ef_pct"] == pytest.approx(0.0, abs=1e-9)


def test_ef_of_two_ellipses():
    ed, es = ellipse(25, 60), ellipse(18, 50)
    out = lv_indices(ed, es, (0.4, 0.4))
    expected = 100 * (1 - (18**2 * 50) / (25**2 * 60))
    assert out["ef_pct"] == pytest.approx(expected, abs=1.5)  # EF points, from ~1 % volume errors
    assert out["es_area_cm2"] < out["ed_area_cm2"]


def test_empty_prediction_gives_nan_volume_not_an_error():
    out = lv_indices(np.zeros((32, 32), np.uint8), ellipse(5, 10, (32, 32), (16, 16)), (1.0, 1.0))
    assert out["ed_area_cm2"] == 0 and math.isnan(out["edv_ml"]) and math.isnan(out["ef_pct"])


def test_agreement_by_hand():
    out = agreement([1.0, 2.0, 3.0, 7.0], [0.0, 2.0, 5.0, float("nan")])
    sd = math.sqrt(7 / 3)  # differences 1, 0, -2: mean -1/3, squared deviations 16/9 + 1/9 + 25/9, / 2
    assert out["n"] == 3 and out["missing"] == 1
    assert out["mae"] == pytest.approx(1.0)
    assert out["bias"] == pytest.approx(-1 / 3)
    assert out["sd"] == pytest.approx(sd)
    assert out["loa_low"] == pytest.approx(-1 / 3 - 1.96 * sd, rel=1e-3)
    assert out["loa_high"] == pytest.approx(-1 / 3 + 1.96 * sd, rel=1e-3)


def test_table_and_bland_altman_plot(tmp_path):
    from fedecho.report.figure import save_figure

    rng = np.random.default_rng(0)
    files = {}
    for arm, noise in (("pooled", 1.0), ("fedavg", 3.0)):
        ref = {q: rng.uniform(20, 120, 30) for q in QUANTITIES}
        pred = {q: v + rng.normal(0.5, noise, 30) for q, v in ref.items()}
        files[arm] = write_clinical(tmp_path / arm / "clinical.npz", [f"p{i}" for i in range(30)], ["A4C"] * 30, pred, ref)
    table = clinical_table(files)
    assert len(table) == 2 + 2 * len(QUANTITIES) and table[2].startswith("| pooled | LV area ED (cm²) | 30 |")
    path = save_figure(plot_clinical(files, "ef_pct"), tmp_path / "ba.png")
    assert path.stat().st_size > 5000


def test_predict_clinical_on_a_run(tmp_path):
    """A run's final model (here: its initial weights saved as the final adapt phase) read out on
    the pooled test split: one row per test patient with ED and ES, expert values from the same grid."""
    from fedecho.config.compose import compose_run_config
    from fedecho.data.geometry import area_mm2
    from fedecho.engine.build import build_task_learner
    from fedecho.engine.data import load_site
    from fedecho.federation.state import RunCheckpoint
    from fedecho.report.clinical import predict_clinical, read_clinical

    cfg = compose_run_config(["data=synthetic", "data.synthetic_format=camus", "data.synthetic_patients=8",
                              "data.synthetic_image_size=48", "model=unet", "model.overrides.width=4",
                              "model.overrides.depth=1", "task=lv_seg", "task.image_size=[32,32]", "task.decoder_dim=8",
                              "federation.tasks=[lv_seg]", "federation.num_sites=1", "federation.strategy.min_sites=1"],
                             "federated")
    learner = build_task_learner(cfg, "lv_seg")
    RunCheckpoint(run_dir=tmp_path).finish_phase(
        "adapt:lv_seg", {k: v.numpy() for k, v in learner.shared_state_dict().items()})
    path = predict_clinical(cfg, tmp_path)
    data = read_clinical(path)
    test = load_site(cfg.data).test
    with_both = {r.patient_id for r in test if r.labels.get("phase") == "ED"} & \
                {r.patient_id for r in test if r.labels.get("phase") == "ES"}
    assert sorted(set(data["patients"].tolist())) == sorted(with_both) and len(with_both) > 0
    assert np.all(data["ref_ed_area_cm2"] > 0) and np.all(np.isfinite(data["ref_ef_pct"]))
    # the expert area on the model's grid (scaled spacing) matches the area at the original resolution
    site = load_site(cfg.data)
    for patient, area in zip(data["patients"], data["ref_ed_area_cm2"], strict=True):
        record = next(r for r in site.test if r.patient_id == patient and r.labels.get("phase") == "ED")
        sample = site.reader.load(record)
        assert area == pytest.approx(area_mm2(sample.labels["mask"], sample.spacing, 1) / 100, rel=0.1)
