"""Run report: prediction files, plots (numbers drawn against closed forms and scikit-learn), the
Markdown report of a small run directory, and ``fedecho report``."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_auc_score, roc_curve

from fedecho.data.errors import EchoDataError
from fedecho.federation.history import RoundRecord, RunHistory
from fedecho.report import (
    load_history,
    load_predictions,
    plot_bland_altman,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_roc,
    plot_segmentation_overlays,
    plot_tsne,
    save_predictions,
    write_report,
)
from fedecho.report.curves import epsilon_series
from fedecho.report.document import format_value
from fedecho.report.rundir import primary_metric

SITES = ("site_1", "site_2", "site_3")
PHASES = ("pretrain", "adapt:view")
ROUNDS = 3
EXPECTED_PNGS = (
    "curves_pretrain.png", "curves_adapt_view.png", "epsilon.png", "bytes.png",
    "view_confusion.png", "view_roc.png", "view_tsne.png", "ef_bland_altman.png", "ef_tsne.png",
    "lv_seg_overlays.png",
)
Z95 = 1.959963984540054


# --- fixtures: a small run directory built from real RoundRecords ------------------------------------
def _records(dp: bool = True) -> list[RoundRecord]:
    """2 phases × 3 rounds × 3 sites; epsilon grows over the whole run; site_3 rejected in adapt round 2."""
    records = []
    step = 0
    for p, phase in enumerate(PHASES):
        for r in range(1, ROUNDS + 1):
            step += 1
            record = RoundRecord(phase=phase, round=r, bytes_sent=300_000 * (p + 1), bytes_received=290_000 * (p + 1),
                                 seconds=1.5)
            for s, site in enumerate(SITES):
                if phase == "adapt:view" and r == 2 and site == "site_3":
                    record.rejected[site] = "update norm 12.5 exceeds bound 10"
                    continue
                train = {"train-loss": round(2.0 - 0.25 * step - 0.0625 * s, 4), "num-examples": 40.0 + 10 * s}
                if dp:
                    train |= {"epsilon": round(0.5 * step + 0.125 * s, 4), "delta": 1e-5,
                              "epsilon-example": round(0.25 * step + 0.125 * s, 4)}
                record.sites_train[site] = train
                evaluate = {"eval-loss": round(1.5 - 0.125 * r - 0.0625 * s, 4), "num-examples": 20.0}
                if phase == "adapt:view":
                    evaluate |= {"balanced_accuracy": 0.5 + 0.0625 * r + 0.03125 * s, "accuracy": 0.6 + 0.05 * r}
                record.sites_evaluate[site] = evaluate
            record.train = {"train-loss": round(2.0 - 0.25 * step, 4), "num-examples": 150.0}
            record.evaluate = {k: v for k, v in record.sites_evaluate[SITES[0]].items()} | {"num-examples": 60.0}
            if phase == "adapt:view":
                record.evaluate["balanced_accuracy"] = 0.8125 if r == ROUNDS else 0.7
                record.central = {"balanced_accuracy": 0.78125}
            records.append(record)
    return records


def _classification(rng: np.random.Generator, n: int = 90) -> dict[str, np.ndarray]:
    targets = rng.integers(0, 3, n)
    logits = rng.normal(0, 1.0, (n, 3)) + 1.5 * np.eye(3)[targets]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sites = np.array(SITES)[rng.integers(0, 3, n)]
    embeddings = rng.normal(0, 1, (n, 8)) + 3 * np.eye(3, 8)[targets]
    return {"probs": probs, "targets": targets, "class_names": ["A2C", "A4C", "PLAX"], "embeddings": embeddings,
            "sites": sites}


def _segmentation(rng: np.random.Generator, k: int = 4, size: int = 48) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((k, size, size), dtype=np.int64)
    preds = np.zeros_like(masks)
    for i in range(k):
        cy, cx = rng.integers(18, 30, 2)
        outer = ((yy - cy) / 16) ** 2 + ((xx - cx) / 11) ** 2 <= 1
        inner = ((yy - cy) / 12) ** 2 + ((xx - cx) / 7) ** 2 <= 1
        masks[i][outer] = 2
        masks[i][inner] = 1
        shift = np.roll(masks[i], int(rng.integers(1, 4)), axis=1)
        preds[i] = shift
    images = np.clip(0.2 + 0.5 * (masks == 2) + rng.normal(0, 0.08, masks.shape), 0, 1)
    return {"images": images, "masks": masks, "pred_masks": preds,
            "class_names": ["background", "lv_cavity", "myocardium"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from fedecho.report.tensorboard import ScalarWriter

    root = tmp_path_factory.mktemp("run")
    writer = ScalarWriter(root / "tb")
    history = RunHistory(root / "history.json", writer=writer)
    for record in _records():
        history.add(record)
    writer.scalars("site_1/local", {"step-loss": 0.42}, 7)  # a tag the history does not cover
    writer.close()
    rng = np.random.default_rng(0)
    save_predictions(root / "predictions" / "view.npz", **_classification(rng))
    targets = rng.uniform(25, 75, 60)
    save_predictions(root / "predictions" / "ef.npz", preds=targets + rng.normal(1.0, 4.0, 60), targets=targets,
                     unit="%", embeddings=rng.normal(0, 1, (60, 6)) + targets[:, None] / 20,
                     sites=np.array(SITES)[rng.integers(0, 3, 60)])
    save_predictions(root / "predictions" / "lv_seg.npz", **_segmentation(rng))
    (root / "summary.json").write_text(json.dumps({"rows": [
        {"experiment": "segformer_lora", "metric": "view acc", "published": 0.988, "pooled": 0.91,
         "federated": 0.88, "ratio": 0.967}]}))
    return root


@pytest.fixture(scope="module")
def report(run_dir) -> tuple[Path, str]:
    path = write_report(run_dir)
    return path, path.read_text()


# --- the report --------------------------------------------------------------------------------------
def test_report_writes_every_plot_as_a_real_png(report):
    path, text = report
    assert path == path.parent.parent / "report" / "report.md"
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == sorted(EXPECTED_PNGS)
    for name in EXPECTED_PNGS:
        file = path.parent / name
        assert file.stat().st_size > 8_000, name
        with Image.open(file) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200, name
        assert pixels.std() > 15, f"{name} looks blank (std {pixels.std():.1f})"
        assert f"]({name})" in text, f"{name} not embedded"
    captions = re.findall(r"^\*Figure (\d+)\. .+\*$", text, flags=re.MULTILINE)
    assert [int(c) for c in captions] == list(range(1, len(EXPECTED_PNGS) + 1))


def test_report_tables_hold_the_final_metrics_of_the_history(report, run_dir):
    _, text = report
    records = load_history(run_dir)
    for phase in PHASES:
        last = [r for r in records if r.phase == phase][-1]
        metric = "balanced_accuracy" if phase == "adapt:view" else "eval-loss"
        columns = [last.evaluate, last.central, *last.sites_evaluate.values()] if last.central else \
            [last.evaluate, *last.sites_evaluate.values()]
        row = "| " + " | ".join([metric, *(format_value(c[metric]) for c in columns)]) + " |"
        assert row in text, row
        train_row = "| train-loss | " + " | ".join(
            format_value(m["train-loss"]) for m in [last.train, *last.sites_train.values()]) + " |"
        assert train_row in text
    # hand-written: the final global and central balanced accuracy of adapt:view, site_3 at round 3
    assert "| balanced_accuracy | 0.8125 | 0.7812 | 0.6875 | 0.7188 | 0.75 |" in text
    assert "| 2 | site_3 | update norm 12.5 exceeds bound 10 |" in text
    # last epsilon of each site (round 3 of adapt:view = run-wide step 6)
    for s, site in enumerate(SITES):
        assert f"| {site} | `adapt:view` " not in text  # phase cells in the privacy table are plain
        assert (f"| {site} | adapt:view | 3 | {format_value(3.0 + 0.125 * s)} | {format_value(1.5 + 0.125 * s)} "
                f"| 1e-05 | no |") in text
    # the unit of epsilon, from the run's config.json (no config: said so)
    assert "ε is per **unknown (no readable config.json)**" in text
    assert "| segformer_lora | view acc | 0.988 | 0.91 | 0.88 | 0.967 |" in text
    assert "| `adapt:view` | 3 | 1.8 MB | 1.74 MB | 4.5 |" in text
    assert "| site_1/local/step-loss | 1 | 7 | 0.42 |" in text


def test_report_has_no_empty_headings_and_sections_only_for_what_exists(report, tmp_path):
    _, text = report
    _assert_no_empty_headings(text)
    for heading in ("## Reproduction results", "## Phase `pretrain`", "## Phase `adapt:view`", "## Privacy (DP-SGD)",
                    "## Communication", "## Predictions", "### `view`: classification (90 samples, 3 classes)",
                    "### `ef`: regression (60 samples, %)", "### `lv_seg`: segmentation (4 examples)",
                    "## Other TensorBoard scalars"):
        assert heading in text
    # a run without DP, predictions, summary or TensorBoard gets none of those sections
    RunHistory(tmp_path / "history.json", records=_records(dp=False)).save()
    bare = write_report(tmp_path).read_text()
    _assert_no_empty_headings(bare)
    for absent in ("Privacy", "Predictions", "Reproduction", "TensorBoard", "epsilon.png"):
        assert absent not in bare
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "bytes.png", "curves_adapt_view.png", "curves_pretrain.png"]


def _assert_no_empty_headings(text: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            assert i + 1 < len(lines), f"heading {line!r} ends the report"
            following = lines[i + 1]
            if following.startswith("#"):
                assert len(following) - len(following.lstrip("#")) > level, f"empty heading {line!r}"


def test_cli_prints_the_report_path_and_names_a_corrupt_history(tmp_path, capsys, monkeypatch):
    from fedecho.cli import main as cli

    monkeypatch.setitem(cli.COMMAND_MODULES, "report", "fedecho.cli.report")
    RunHistory(tmp_path / "history.json", records=_records(dp=False)[:2]).save()
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "report" / "report.md") and Path(out).is_file()

    corrupt = tmp_path / "history.json"
    corrupt.write_text('[{"phase": "pretrain", "round": 1, ')
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and "not valid JSON" in err
    with pytest.raises(EchoDataError, match=re.escape(str(corrupt))):
        write_report(tmp_path)
    corrupt.write_text(json.dumps([{"phase": "pretrain", "round": "one", "colour": 3}]))
    with pytest.raises(EchoDataError) as err:
        write_report(tmp_path)
    assert "record 0 has unknown key 'colour'" in str(err.value) and "'round' must be an integer" in str(err.value)
    corrupt.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(corrupt))):
        write_report(tmp_path)


# --- numbers drawn --------------------------------------------------------------------------------
def _lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()}


def test_bland_altman_lines_equal_the_closed_form():
    preds = np.array([1.0, 2.0, 3.0, 4.0])
    targets = np.ones(4)
    # differences 0, 1, 2, 3: bias 1.5, sample SD sqrt(5/3)
    sd = np.sqrt(5 / 3)
    fig = plot_bland_altman(preds, targets, unit="mL")
    ax = fig.axes[0]
    drawn = {label.split(" ")[0] + (" " + label.split(" ")[1] if "SD" in label else ""): y[0]
             for label, y in _lines(ax).items() if label.startswith("bias")}
    assert drawn["bias"] == pytest.approx(1.5)
    assert drawn["bias +"] == pytest.approx(1.5 + Z95 * sd)
    assert drawn["bias −"] == pytest.approx(1.5 - Z95 * sd)
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points, np.stack([(preds + targets) / 2, preds - targets], axis=1))
    # a single pair has no SD: only the bias line is drawn
    assert [label for label in _lines(plot_bland_altman([3.0], [1.0]).axes[0]) if label.startswith("bias")] == \
        ["bias 2"]


def _legend_aucs(ax) -> dict[str, float]:
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    return {m.group(1): float(m.group(2)) for t in texts if (m := re.match(r"(.+) \(AUC = ([0-9.]+)\)", t))}


def test_roc_legend_auc_equals_sklearn():
    rng = np.random.default_rng(3)
    data = _classification(rng, n=120)
    probs, targets = data["probs"], data["targets"]
    ax = plot_roc(probs, targets, data["class_names"]).axes[0]
    aucs = _legend_aucs(ax)
    for c, name in enumerate(data["class_names"]):
        assert aucs[name] == round(roc_auc_score(targets == c, probs[:, c]), 3)
        fpr, tpr, _ = roc_curve(targets == c, probs[:, c])
        line = next(line for line in ax.get_lines() if line.get_label().startswith(name + " "))
        np.testing.assert_allclose(line.get_xdata(), fpr)
        np.testing.assert_allclose(line.get_ydata(), tpr)
    macro = roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    assert f"macro AUC = {macro:.3f}" in ax.get_title()

    binary = np.stack([1 - probs[:, 1], probs[:, 1]], axis=1)
    labels = (targets == 1).astype(int)
    aucs = _legend_aucs(plot_roc(binary, labels, ["other", "A4C"]).axes[0])
    assert aucs == {"A4C vs other": round(roc_auc_score(labels, binary[:, 1]), 3)}
    with pytest.raises(ValueError, match="at least two classes"):
        plot_roc(binary, np.zeros(len(labels), dtype=int), ["other", "A4C"])


def test_confusion_matrix_panels_equal_sklearn():
    rng = np.random.default_rng(4)
    data = _classification(rng, n=50)
    fig = plot_confusion_matrix(data["probs"], data["targets"], data["class_names"])
    expected = sk_confusion_matrix(data["targets"], data["probs"].argmax(1), labels=[0, 1, 2])
    panels = {ax.get_title(): ax for ax in fig.axes}
    counts = np.asarray(panels["Counts (n = 50)"].images[0].get_array())
    normalised = np.asarray(panels["Normalised by true class"].images[0].get_array())
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(normalised, expected / expected.sum(axis=1, keepdims=True))


def test_learning_curves_and_epsilon_draw_the_history_values():
    records = _records()
    adapt = [r for r in records if r.phase == "adapt:view"]
    fig = plot_learning_curves("adapt:view", adapt, "balanced_accuracy")
    train, evaluate = (_lines(ax) for ax in fig.axes)
    np.testing.assert_allclose(train["global"], [r.train["train-loss"] for r in adapt])
    np.testing.assert_allclose(train["site_2"], [r.sites_train["site_2"]["train-loss"] for r in adapt])
    # site_3 was rejected in round 2: its line skips that round
    site_3 = next(line for line in fig.axes[0].get_lines() if line.get_label() == "site_3")
    np.testing.assert_array_equal(site_3.get_xdata(), [1, 3])
    np.testing.assert_allclose(evaluate["global"], [0.7, 0.7, 0.8125])
    np.testing.assert_allclose(evaluate["central"], [0.78125] * 3)
    assert set(evaluate) == {"global", "central", *SITES}

    eps = epsilon_series(records)
    steps, values = eps["site_2"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(values, [0.5 * s + 0.125 for s in range(1, 7)])
    assert primary_metric("adapt:view", adapt) == "balanced_accuracy"  # the view task's primary metric
    assert primary_metric("pretrain", records[:3]) == "eval-loss"


def test_segmentation_overlay_titles_give_the_hand_computed_dice():
    mask = np.zeros((1, 12, 12), dtype=np.int64)
    mask[0, 4:8, 4:8] = 1  # 16 pixels
    pred = np.roll(mask, 1, axis=2)  # 12 overlap: Dice = 2·12 / 32 = 0.75
    image = np.full((1, 12, 12), 0.5)
    ax = plot_segmentation_overlays(image, mask, pred, ["background", "lv_cavity"]).axes[0]
    assert ax.get_title() == "#0  Dice 0.750"
    assert len(ax.collections) == 2  # ground-truth and predicted contours


def test_tsne_panels_colour_every_point_by_site_and_label():
    rng = np.random.default_rng(5)
    labels = np.array(["A2C", "A4C"] * 8)
    sites = np.array(["site_1"] * 10 + ["site_2"] * 6)
    embeddings = rng.normal(0, 1, (16, 4)) + 4 * (labels == "A4C")[:, None]
    by_site, by_label = plot_tsne(embeddings, labels, sites, label_name="view", seed=1).axes
    assert {c.get_label(): len(c.get_offsets()) for c in by_site.collections} == {"site_1": 10, "site_2": 6}
    assert {c.get_label(): len(c.get_offsets()) for c in by_label.collections} == {"A2C": 8, "A4C": 8}


# --- prediction files -----------------------------------------------------------------------------
def test_predictions_round_trip_and_name_the_file_on_bad_input(tmp_path):
    rng = np.random.default_rng(6)
    data = _classification(rng, n=10)
    path = save_predictions(tmp_path / "view.npz", **data)
    loaded = load_predictions(path)
    assert (loaded.kind, loaded.name, loaded.size) == ("classification", "view", 10)
    np.testing.assert_array_equal(loaded["probs"], data["probs"])
    assert loaded["class_names"].tolist() == ["A2C", "A4C", "PLAX"] and loaded["sites"].dtype.kind == "U"

    bad = tmp_path / "bad.npz"
    with pytest.raises(EchoDataError) as err:
        save_predictions(bad, probs=data["probs"], targets=np.full(9, 3), class_names=["a", "b"])
    message = str(err.value)
    assert str(bad) in message and "'targets' has 9 entries" in message and "class_names' has 2 names" in message
    assert not bad.exists()
    with pytest.raises(EchoDataError, match="cannot tell the prediction kind"):
        save_predictions(bad, probs=data["probs"], preds=np.zeros(10), targets=data["targets"])
    with pytest.raises(EchoDataError, match="unexpected key 'logits'"):
        save_predictions(bad, preds=np.zeros(3), targets=np.ones(3), logits=np.zeros(3))
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(EchoDataError, match=re.escape(str(bad)) + ".*not a readable .npz"):
        load_predictions(bad)
    seg = _segmentation(rng, k=2, size=16)
    seg["images"] = seg["images"] * 255
    with pytest.raises(EchoDataError, match=r"'images' must be scaled to \[0, 1\]"):
        save_predictions(bad, **seg)


def test_history_round_trips_through_the_loader(run_dir):
    assert [asdict(r) for r in load_history(run_dir)] == json.loads((run_dir / "history.json").read_text())
