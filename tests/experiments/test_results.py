"""Result rows from run directories: the federated / pooled ratio, CPU time summed over sites and
rounds, timings kept when a finished run is read back, the label-fraction row at the published
fraction, and a clear error for a run that never finished."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest

from fedecho.experiments import collect_arm, load_experiment, write_results
from fedecho.federation.history import RoundRecord


def fake_run(run_dir, task, central, cpu_per_round=(10.0, 20.0), rounds=2):
    records = []
    for r in range(1, rounds + 1):
        sites = {f"site-{i}": {"num-examples": 5.0, "cpu-seconds": cpu} for i, cpu in enumerate(cpu_per_round)}
        records.append(RoundRecord(phase=f"adapt:{task}", round=r, train={"train-loss": 1.0 / r},
                                   sites_train=sites, bytes_sent=1000, bytes_received=500))
    records.append(RoundRecord(phase=f"evaluate:{task}", round=1, evaluate={k: v - 0.01 for k, v in central.items()},
                               central=dict(central)))
    run_dir.mkdir(parents=True)
    (run_dir / "history.json").write_text(json.dumps([asdict(r) for r in records]))
    return run_dir


def test_row_ratio_cpu_and_markdown(tmp_path):
    exp = load_experiment("camus_lv_seg")
    pooled = collect_arm(exp, "pooled", fake_run(tmp_path / "pooled", "lv_seg", {"dice/lv_cavity": 0.90, "dice": 0.85},
                                                 cpu_per_round=(30.0,)), wall_seconds=60.0, coordinator_cpu=5.0)
    fed = collect_arm(exp, "fedavg-intensity", fake_run(tmp_path / "fed", "lv_seg", {"dice/lv_cavity": 0.88, "dice": 0.8}),
                      wall_seconds=90.0, coordinator_cpu=3.0)
    assert pooled.cpu_seconds == pytest.approx(2 * 30.0 + 5.0)
    assert fed.cpu_seconds == pytest.approx(2 * (10.0 + 20.0) + 3.0)
    assert fed.bytes_sent == 2000 and fed.rounds == 2
    assert fed.round_bytes_sent == 1000 and fed.round_bytes_received == 500
    assert fed.value("lv_seg", "dice/lv_cavity") == pytest.approx(0.88)  # central first
    assert math.isnan(fed.value("lv_seg", "dice/septum"))
    # a metric only the prediction file's intervals give (Dice at ED) is their estimate
    with_phase = replace(fed, ci={"lv_seg": {"dice/lv_cavity@ED": [0.93, 0.9, 0.95], "dice/lv_cavity": [0.5, 0.4, 0.6]}})
    assert with_phase.value("lv_seg", "dice/lv_cavity@ED") == 0.93
    assert with_phase.value("lv_seg", "dice/lv_cavity") == pytest.approx(0.88)  # the run's own value first
    payload = write_results(exp, "full", tmp_path, {"pooled": pooled, "fedavg-intensity": fed})
    (row,) = payload["rows"]
    assert row["ratio"] == pytest.approx(0.88 / 0.90)
    assert row["published"] == pytest.approx(0.926)
    text = (tmp_path / "results.md").read_text()
    assert ("| camus_lv_seg | fedavg-intensity | lv_seg | dice/lv_cavity | 0.926 | n/a | n/a | 0.880 | 0.900 | 0.978 |"
            in text)
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["arm"] == "fedavg-intensity"


def test_read_back_keeps_the_timing_of_the_run(tmp_path):
    exp = load_experiment("camus_lv_seg")
    run = fake_run(tmp_path / "pooled", "lv_seg", {"dice/lv_cavity": 0.9})
    collect_arm(exp, "pooled", run, wall_seconds=123.0, coordinator_cpu=4.0)
    again = collect_arm(exp, "pooled", run)  # the runner reads a finished run back with no timing
    assert again.wall_seconds == 123.0 and again.cpu_seconds == pytest.approx(2 * 30.0 + 4.0)


def test_unfinished_run_is_named(tmp_path):
    exp = load_experiment("camus_lv_seg")
    run = tmp_path / "half"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([asdict(RoundRecord(phase="adapt:lv_seg", round=1))]))
    with pytest.raises(ValueError, match="no final evaluation of lv_seg"):
        collect_arm(exp, "pooled", run)


def test_fraction_row_uses_the_published_fraction(tmp_path):
    exp = load_experiment("echoclr_as")
    exp = replace(exp, fractions={**exp.fractions, "full": [0.01, 0.1, 1.0]})
    results = {}
    for encoder in exp.encoders:
        for setting in ("pooled", "federated"):
            for fraction in (0.01, 0.1, 1.0):
                auroc = 0.6 + 0.3 * fraction + (0.05 if encoder == "echoclr" else 0) + (0 if setting == "pooled" else -0.02)
                name = f"{encoder}-{setting}-{fraction:g}"
                run = fake_run(tmp_path / name, "as_present", {"auroc": auroc})
                results[name] = collect_arm(exp, name, run, wall_seconds=1.0, encoder=encoder, setting=setting,
                                            fraction=fraction)
    payload = write_results(exp, "full", tmp_path, results)
    row, random_row = payload["rows"]  # one row per encoder arm, the pretraining one first
    assert row["arm"] == "echoclr, 1 % labels"  # published at 1 % labels
    assert row["pooled"] == pytest.approx(0.6 + 0.003 + 0.05)
    assert row["federated"] == pytest.approx(0.6 + 0.003 + 0.05 - 0.02)
    assert random_row["arm"] == "random, 1 % labels"
    assert random_row["pooled"] == pytest.approx(0.6 + 0.003)
    assert (tmp_path / "label_fractions_as_present.png").stat().st_size > 5000
    assert "## Label fractions: as_present" in (tmp_path / "results.md").read_text()


def seg_predictions(path, sample_dice, patients):
    from fedecho.report.predictions import save_predictions

    k = len(sample_dice)
    save_predictions(path, images=np.zeros((1, 4, 4)), masks=np.zeros((1, 4, 4), int), pred_masks=np.zeros((1, 4, 4), int),
                     sample_dice=np.asarray(sample_dice, float), structure_names=np.array(["lv_cavity"]),
                     patients=np.asarray(patients), sites=np.array(["s"] * k))


def test_local_only_mean_worst_and_joint_interval(tmp_path):
    """Rows gain local-only mean (interval: the same patient resamples for every site's model) and
    the worst site; local arms of another partition are not mixed in."""
    from fedecho.report.bootstrap import bootstrap_ci

    exp = load_experiment("camus_lv_seg")
    patients = [f"p{i}" for i in range(6)]
    dice = {0: [0.9, 0.8, 0.7, 0.9, 0.6, 0.8], 1: [0.5, 0.6, 0.7, 0.4, 0.6, 0.5], 2: [0.8, 0.8, 0.9, 0.7, 0.8, 0.9]}
    results = {"pooled": collect_arm(exp, "pooled", fake_run(tmp_path / "pooled", "lv_seg", {"dice/lv_cavity": 0.9}))}
    results["fedavg-intensity"] = collect_arm(exp, "fedavg-intensity", fake_run(tmp_path / "fed", "lv_seg",
                                              {"dice/lv_cavity": 0.85}), partition="P")
    for k, values in dice.items():
        name = f"local-fedavg-intensity-{k}"
        run = fake_run(tmp_path / name, "lv_seg", {"dice/lv_cavity": float(np.mean(values))})
        seg_predictions(run / "predictions" / "lv_seg.npz", [[v] for v in values], patients)
        results[name] = collect_arm(exp, name, run, partition="P", site=k, local_of="fedavg-intensity")
    other = fake_run(tmp_path / "other", "lv_seg", {"dice/lv_cavity": 0.1})
    results["local-fedavg-dirichlet-0"] = collect_arm(exp, "x", other, partition="Q", site=0, local_of="fedavg-dirichlet")
    payload = write_results(exp, "full", tmp_path, results)
    (row,) = [r for r in payload["rows"] if r["arm"] == "fedavg-intensity"]
    assert row["local_sites"] == 3
    assert row["local_mean"] == pytest.approx(np.mean([np.mean(v) for v in dice.values()]))
    assert row["local_worst"] == pytest.approx(np.mean(dice[1])) and "[site 1]" in row["local_worst_text"]
    per_item = np.mean([dice[k] for k in dice], axis=0)
    _, low, high = bootstrap_ci(per_item, groups=np.array(patients))
    assert row["local_mean_text"] == f"{row['local_mean']:.3f} ({low:.3f}–{high:.3f})"
    assert low < row["local_mean"] < high
    assert "| local-only mean | local-only worst | federated | pooled |" in (tmp_path / "results.md").read_text()


def test_clinical_section_when_arms_have_read_outs(tmp_path):
    from fedecho.report.clinical import QUANTITIES, write_clinical

    exp = load_experiment("camus_lv_seg")
    rng = np.random.default_rng(1)
    results = {}
    for name in ("pooled", "fedavg-intensity"):
        run = fake_run(tmp_path / name, "lv_seg", {"dice/lv_cavity": 0.9})
        ref = {q: rng.uniform(30, 90, 12) for q in QUANTITIES}
        write_clinical(run / "clinical.npz", [f"p{i}" for i in range(12)], ["A4C"] * 12, {q: v + 2.0 for q, v in ref.items()}, ref)
        results[name] = collect_arm(exp, name, run)
    write_results(exp, "full", tmp_path, results)
    text = (tmp_path / "results.md").read_text()
    assert "## Clinical read-outs" in text and "| fedavg-intensity | EF (%) | 12 | 2.00 | +2.00 |" in text
    assert (tmp_path / "bland_altman_ef.png").stat().st_size > 5000


def test_fraction_section_has_the_local_only_mean_per_encoder_and_fraction(tmp_path):
    """Label-fraction experiments: the curves and table gain one local-only point per encoder and
    fraction, the mean over the sites alone with the joint patient-resampling interval."""
    from fedecho.report.bootstrap import bootstrap_ci

    exp = load_experiment("camus_ssl_lora")
    patients = [f"p{i}" for i in range(6)]
    results = {}
    for fraction, shift in ((0.1, 0.0), (1.0, 0.2)):
        for setting in ("pooled", "federated"):
            name = f"random-{setting}-{fraction:g}"
            results[name] = collect_arm(exp, name, fake_run(tmp_path / name, "lv_seg", {"dice/lv_cavity": 0.7 + shift}),
                                        encoder="random", setting=setting, fraction=fraction)
        dice = {0: [0.5, 0.6, 0.4, 0.5, 0.6, 0.5], 1: [0.3, 0.4, 0.5, 0.3, 0.2, 0.4]}
        for k, values in dice.items():
            name = f"random-local{k}-{fraction:g}"
            values = [v + shift for v in values]
            run = fake_run(tmp_path / name, "lv_seg", {"dice/lv_cavity": float(np.mean(values))})
            seg_predictions(run / "predictions" / "lv_seg.npz", [[v] for v in values], patients)
            results[name] = collect_arm(exp, name, run, encoder="random", setting="local", fraction=fraction, site=k)
    write_results(exp, "full", tmp_path, results)
    text = (tmp_path / "results.md").read_text()
    assert "| metric | labelled | random init, pooled | random init, federated | random init, local-only (site mean) |" in text
    per_item = np.mean([dice[0], dice[1]], axis=0)
    _, low, high = bootstrap_ci(per_item, groups=np.array(patients))
    mean = float(np.mean(per_item))
    assert f"| dice/lv_cavity | 10 % | 0.7 | 0.7 | {mean:.4g} [{low:.4g}, {high:.4g}] |" in text
