"""Bootstrap intervals against closed forms, grouped (patient) resampling, the rank AUROC against
scikit-learn, and the intervals of prediction files (and how the report shows them)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from fedecho.federation.history import RoundRecord, RunHistory
from fedecho.report import bootstrap_ci, prediction_cis, save_predictions, write_report
from fedecho.report.bootstrap import rank_auroc
from fedecho.report.predictions import load_predictions

Z95 = 1.959963984540054


def test_mean_interval_matches_the_normal_closed_form():
    rng = np.random.default_rng(0)
    values = rng.exponential(2.0, 4000)  # skewed, but the mean is near-normal at this n
    estimate, low, high = bootstrap_ci(values, n_boot=2000, seed=1)
    half = Z95 * values.std(ddof=1) / np.sqrt(len(values))
    assert estimate == values.mean()
    assert low == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.1 * half)
    # a 90 % interval is narrower, by about 1.645 / 1.96
    _, low90, high90 = bootstrap_ci(values, alpha=0.10, seed=1)
    assert (high90 - low90) / (high - low) == pytest.approx(1.6449 / Z95, rel=0.08)


def test_fixed_seed_is_deterministic_and_constant_values_give_a_point():
    values = np.random.default_rng(2).normal(size=50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    assert bootstrap_ci(np.full(10, 0.25)) == (0.25, 0.25, 0.25)


def test_grouped_resampling_draws_whole_patients():
    rng = np.random.default_rng(3)
    per_patient = rng.normal(size=40)
    patients = np.repeat([f"p{i:02d}" for i in range(40)], 3)
    values = np.repeat(per_patient, 3)  # three identical images per patient
    # drawing whole patients of 3 identical items = drawing the 40 patient values: the same interval
    grouped = bootstrap_ci(values, groups=patients, seed=5)
    assert grouped == pytest.approx(bootstrap_ci(per_patient, seed=5), abs=1e-12)
    # items drawn one by one pretend to have 120 independent values: about √3 too narrow
    _, low, high = bootstrap_ci(values, seed=5)
    assert (grouped[2] - grouped[1]) / (high - low) == pytest.approx(np.sqrt(3), rel=0.2)

    # every resample is made of complete patients (sizes 1..4), as many patients as there are
    sizes = np.arange(12) % 4 + 1
    ids = np.repeat(np.arange(12), sizes)

    def complete(index_values: np.ndarray) -> float:
        drawn, counts = np.unique(index_values, return_counts=True)
        assert all(count % sizes[d] == 0 for d, count in zip(drawn, counts, strict=True))
        assert sum(count // sizes[d] for d, count in zip(drawn, counts, strict=True)) == 12
        return float(len(index_values))

    bootstrap_ci(ids, groups=ids, statistic=complete, n_boot=200)
    with pytest.raises(ValueError, match=r"groups must have shape \(30,\)"):
        bootstrap_ci(ids, groups=ids[:-1])


def test_undefined_resamples_are_dropped_and_bad_arguments_named():
    values = np.array([0.0, 1.0])

    def nan_when_mixed(x: np.ndarray) -> float:
        return float("nan") if len(set(x.tolist())) > 1 else float(x[0])

    # half the resamples of 2 items are mixed (NaN): the rest are all-0 or all-1
    estimate, low, high = bootstrap_ci(values, statistic=nan_when_mixed, n_boot=400)
    assert np.isnan(estimate) and (low, high) == (0.0, 1.0)
    assert np.isnan(bootstrap_ci(values, statistic=lambda x: float("nan"))[1])
    for kwargs, message in (({"n_boot": 0}, "n_boot"), ({"alpha": 1.5}, "alpha")):
        with pytest.raises(ValueError, match=message):
            bootstrap_ci(values, **kwargs)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_rank_auroc_equals_scikit_learn():
    rng = np.random.default_rng(4)
    for classes in (2, 3, 5):
        targets = rng.integers(0, classes, 150)
        probs = rng.dirichlet(np.ones(classes), 150).round(2)  # rounding makes ties
        probs[np.arange(150), targets] += 0.1
        # one-vs-rest macro = the mean of each class's binary AUROC (scikit-learn's multi_class="ovr"
        # would refuse these scores: they no longer sum to 1)
        expected = roc_auc_score(targets, probs[:, 1]) if classes == 2 else \
            np.mean([roc_auc_score(targets == c, probs[:, c]) for c in range(classes)])
        assert rank_auroc(targets, probs) == pytest.approx(expected, abs=1e-12)
    # a class absent from the targets is left out of the macro mean, as in fedecho.tasks.metrics.auroc
    targets = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.4, 0.4, 0.2], [0.3, 0.6, 0.1],
                      [0.1, 0.8, 0.1]])
    expected = np.mean([roc_auc_score(targets == c, probs[:, c]) for c in (0, 1)])
    assert rank_auroc(targets, probs) == pytest.approx(expected)
    assert np.isnan(rank_auroc(np.zeros(4, int), probs[:4, :2]))


def _files(tmp_path):
    rng = np.random.default_rng(6)
    n = 60
    patients = np.repeat([f"p{i}" for i in range(20)], 3)
    sites = np.where(np.arange(n) < 30, "site_0", "site_1")
    targets = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    probs[np.arange(n), targets] += 0.5
    probs /= probs.sum(1, keepdims=True)
    save_predictions(tmp_path / "predictions" / "view.npz", probs=probs, targets=targets,
                     class_names=["A2C", "A4C", "PLAX"], patients=patients, sites=sites)
    preds = rng.normal(50, 10, n)
    save_predictions(tmp_path / "predictions" / "lvh.npz", preds=preds, targets=preds + rng.normal(0, 2, n),
                     unit="mm", quantities=np.tile(["IVSd", "LVIDd", "LVPWd"], 20), patients=patients)
    dice = rng.uniform(0.6, 1.0, (n, 2))
    masks = np.zeros((2, 8, 8), int)
    masks[:, 2:6, 2:6] = 1
    save_predictions(tmp_path / "predictions" / "lv_seg.npz", images=np.full((2, 8, 8), 0.5), masks=masks,
                     pred_masks=masks, class_names=["background", "lv_cavity", "myocardium"], sample_dice=dice,
                     structure_names=["lv_cavity", "myocardium"], patients=patients, sites=sites)
    return probs, targets, preds, dice


def test_prediction_cis_estimates_equal_scikit_learn_and_the_report_shows_them(tmp_path):
    probs, targets, _, dice = _files(tmp_path)
    folder = tmp_path / "predictions"
    view = prediction_cis(load_predictions(folder / "view.npz"), n_boot=300)
    predicted = probs.argmax(1)
    assert view["accuracy"][0] == pytest.approx(accuracy_score(targets, predicted))
    assert view["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(targets, predicted))
    assert view["auroc"][0] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    seg = prediction_cis(load_predictions(folder / "lv_seg.npz"), n_boot=300)
    assert seg["dice/lv_cavity"][0] == pytest.approx(dice[:, 0].mean())
    assert seg["dice"][0] == pytest.approx(dice.mean())
    lvh = prediction_cis(load_predictions(folder / "lvh.npz"), n_boot=300)
    assert set(lvh) == {"mae", "mae/IVSd", "mae/LVIDd", "mae/LVPWd"}
    for intervals in (view, seg, lvh):
        for estimate, low, high in intervals.values():
            assert low <= estimate <= high and low < high
    # accuracy resamples are per-item hit means: the interval is scikit-learn's on the same draws
    patients = load_predictions(folder / "view.npz")["patients"]
    assert view["accuracy"] == bootstrap_ci(np.arange(len(targets)), groups=patients, n_boot=300,
                                            statistic=lambda i: accuracy_score(targets[i], predicted[i]))

    RunHistory(tmp_path / "history.json", records=[RoundRecord(phase="adapt:view", round=1)]).save()
    text = write_report(tmp_path).read_text()
    est, low, high = prediction_cis(load_predictions(folder / "lv_seg.npz"))["dice/lv_cavity"]
    from fedecho.report.document import format_value as f

    assert f"| dice/lv_cavity | {f(est)} | [{f(low)}, {f(high)}] |" in text
    assert "### `lv_seg`: segmentation (60 items, 2 examples shown)" in text
    site_1 = dice[30:]
    assert f"| site_1 | 30 | {f(site_1.mean())} | {f(site_1[:, 0].mean())} | {f(site_1[:, 1].mean())} |" in text
    assert text.count("resamples of patients") == 3
    assert "| IVSd | 20 |" in text  # the LVH table has a row per caliper


def test_prediction_cis_are_computed_once_per_file_content(tmp_path, monkeypatch):
    """The report and the experiment's result row ask for the same file's intervals: the second
    ask is served from the in-process cache, equal to a fresh computation; other content or other
    settings compute again."""
    import dataclasses

    from fedecho.report import bootstrap

    _files(tmp_path)
    view = load_predictions(tmp_path / "predictions" / "view.npz")
    fresh = bootstrap._prediction_cis(view, n_boot=200, alpha=0.05, seed=0)
    calls = []
    real = bootstrap._prediction_cis
    monkeypatch.setattr(bootstrap, "_prediction_cis", lambda *a, **k: calls.append(k) or real(*a, **k))
    first = prediction_cis(view, n_boot=200)
    again = prediction_cis(load_predictions(tmp_path / "predictions" / "view.npz"), n_boot=200)
    assert first == again == fresh and len(calls) == 1
    again["accuracy"] = (0.0, 0.0, 0.0)  # callers get their own dict
    assert prediction_cis(view, n_boot=200) == fresh and len(calls) == 1
    prediction_cis(view, n_boot=200, seed=1)
    probs = view["probs"].copy()
    probs[0] = probs[0][::-1]
    changed = prediction_cis(dataclasses.replace(view, arrays={**view.arrays, "probs": probs}), n_boot=200)
    assert len(calls) == 3 and set(changed) == set(fresh)


def test_average_ranks_are_scipys_rankdata_exactly():
    from scipy.stats import rankdata

    from fedecho.report.bootstrap import average_ranks

    rng = np.random.default_rng(3)
    for x in (rng.random(50), rng.integers(0, 4, 40).astype(np.float64), np.round(rng.random(30), 1),
              np.array([0.5]), np.array([2.0, 2.0, 2.0]), rng.integers(0, 3, 25), np.array([1.0, np.nan, 0.0])):
        np.testing.assert_array_equal(average_ranks(x), rankdata(x))
        assert average_ranks(x).dtype == np.float64
    for columns in (rng.random((40, 5)), np.round(rng.random((30, 3)), 1), rng.integers(0, 2, (20, 2))):
        np.testing.assert_array_equal(average_ranks(columns), rankdata(columns, axis=0))  # each column


def test_segmentation_dice_per_cardiac_phase(tmp_path):
    """CAMUS reports LV Dice at ED and at ES: with ``phases`` a segmentation file's intervals add
    ``dice@ED``/``dice/<structure>@ED`` (and ES) over that phase's items only, patients resampled;
    one named phase (or none) adds nothing; a ``phases`` column of the wrong length is refused."""
    from fedecho.data.errors import EchoDataError

    rng = np.random.default_rng(3)
    n = 40
    dice = rng.uniform(0.6, 1.0, size=(n, 2))
    phases = np.array(["ED", "ES"] * (n // 2))
    patients = np.repeat([f"p{i:02d}" for i in range(n // 2)], 2)
    masks = np.zeros((1, 4, 4), np.int64)
    common = dict(images=np.zeros((1, 4, 4), np.float32), masks=masks, pred_masks=masks,
                  sample_dice=dice, structure_names=np.array(["lv_cavity", "myocardium"]), patients=patients)
    save_predictions(tmp_path / "seg.npz", **common, phases=phases)
    cis = prediction_cis(load_predictions(tmp_path / "seg.npz"), n_boot=300)
    for phase in ("ED", "ES"):
        chosen = dice[phases == phase]
        assert cis[f"dice/lv_cavity@{phase}"][0] == pytest.approx(chosen[:, 0].mean())
        assert cis[f"dice/myocardium@{phase}"][0] == pytest.approx(chosen[:, 1].mean())
        assert cis[f"dice@{phase}"][0] == pytest.approx(chosen.mean())
        assert cis[f"dice/lv_cavity@{phase}"] == bootstrap_ci(chosen[:, 0], groups=patients[phases == phase], n_boot=300)
    assert cis["dice/lv_cavity"][0] == pytest.approx(dice[:, 0].mean())  # all items, as before

    save_predictions(tmp_path / "one.npz", **common, phases=np.array(["ED"] * n))
    assert not any("@" in key for key in prediction_cis(load_predictions(tmp_path / "one.npz"), n_boot=50))
    with pytest.raises(EchoDataError, match="phases"):
        save_predictions(tmp_path / "bad.npz", **common, phases=phases[:-1])
