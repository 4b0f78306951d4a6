"""Report sections for prediction files: a metrics table (all samples, per site, per quantity),
bootstrap 95 % intervals of the headline metrics (patients resampled when known) and the plots
that fit the file's kind (confusion matrix, ROC, Bland–Altman, segmentation overlays, t-SNE)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedecho.report.bootstrap import BOOTSTRAP_DRAWS, prediction_cis
from fedecho.report.document import Document, format_value, plural
from fedecho.report.embedding import MIN_TSNE_POINTS, plot_tsne
from fedecho.report.plots import (
    plot_bland_altman,
    plot_confusion_matrix,
    plot_roc,
    plot_segmentation_overlays,
    roc_defined,
)
from fedecho.report.predictions import Predictions
from fedecho.tasks.metrics import (
    bland_altman,
    classification_metrics,
    regression_metrics,
    segmentation_metrics,
)

__all__ = ["CLASSIFICATION_COLUMNS", "REGRESSION_COLUMNS", "add_prediction_section"]

#: metrics shown per subset for a classification file
CLASSIFICATION_COLUMNS = ("accuracy", "balanced_accuracy", "f1", "auroc")
#: metrics shown per subset for a regression file (bias and limits: Bland–Altman)
REGRESSION_COLUMNS = ("mae", "rmse", "r2", "bias", "loa_low", "loa_high")


def add_prediction_section(doc: Document, predictions: Predictions, *, seed: int = 0) -> None:
    """Append the section of one prediction file to ``doc`` (figures named ``<file stem>_<plot>.png``)."""
    {"classification": _classification, "regression": _regression, "segmentation": _segmentation}[
        predictions.kind
    ](doc, predictions, seed)


def _subsets(predictions: Predictions) -> list[tuple[str, np.ndarray]]:
    """("all", every row), then (site, its rows) per site and (quantity, its rows) per quantity,
    each sorted by name."""
    subsets = [("all", np.arange(predictions.num_items))]
    for key, at_least in (("sites", 1), ("quantities", 2)):
        values = predictions.get(key)
        if values is not None and len(set(values.tolist())) >= at_least:
            subsets += [(str(v), np.flatnonzero(values == v)) for v in sorted(set(values.tolist()))]
    return subsets


def _interval_table(doc: Document, predictions: Predictions, seed: int) -> None:
    """Metric | estimate | 95 % CI over all items (percentile bootstrap)."""
    cis = prediction_cis(predictions, seed=seed)
    if not cis:
        return
    unit = "patients" if "patients" in predictions else "items"
    doc.paragraph(f"Bootstrap 95 % confidence intervals ({BOOTSTRAP_DRAWS} resamples of {unit}, percentile):")
    doc.table(["metric", "estimate", "95 % CI"],
              [[metric, est, f"[{format_value(low)}, {format_value(high)}]"] for metric, (est, low, high) in cis.items()])


def _metrics_table(
    doc: Document, predictions: Predictions, columns: tuple[str, ...],
    score: Callable[[np.ndarray], dict[str, float]],
) -> None:
    rows = []
    for subset, index in _subsets(predictions):
        values = score(index)
        rows.append([subset, len(index), *(values.get(column, float("nan")) for column in columns)])
    doc.table(["subset", "n", *columns], rows)


def _classification(doc: Document, predictions: Predictions, seed: int) -> None:
    name = predictions.name
    probs, targets = predictions["probs"], predictions["targets"].astype(np.int64)
    class_names = [str(c) for c in predictions["class_names"]]
    doc.heading(3, f"`{name}`: classification ({plural(predictions.size, 'sample')}, {len(class_names)} classes)")
    _metrics_table(doc, predictions, CLASSIFICATION_COLUMNS,
                   lambda index: classification_metrics(targets[index], probs[index], class_names))
    _interval_table(doc, predictions, seed)
    doc.figure(plot_confusion_matrix(probs, targets, class_names), f"{name}_confusion",
               f"Confusion matrix of `{name}`: counts and fractions of each true class (prediction = most probable class).")
    if roc_defined(targets, len(class_names)):
        kind = "binary" if len(class_names) == 2 else "one-vs-rest per class"
        doc.figure(plot_roc(probs, targets, class_names), f"{name}_roc",
                   f"ROC curves of `{name}` ({kind}), AUROC in the legend.")
    labels = np.asarray(class_names)[targets]
    _tsne(doc, predictions, labels, "class", seed)


def _regression(doc: Document, predictions: Predictions, seed: int) -> None:
    name = predictions.name
    preds, targets = predictions["preds"].astype(np.float64), predictions["targets"].astype(np.float64)
    unit = str(predictions["unit"]) if "unit" in predictions else ""
    in_unit = f" ({unit})" if unit else ""
    doc.heading(3, f"`{name}`: regression ({plural(predictions.size, 'sample')}{', ' + unit if unit else ''})")

    def score(index: np.ndarray) -> dict[str, float]:
        return {**regression_metrics(preds[index], targets[index]),
                **bland_altman(preds[index], targets[index]).as_metrics()}

    _metrics_table(doc, predictions, REGRESSION_COLUMNS, score)
    _interval_table(doc, predictions, seed)
    doc.figure(plot_bland_altman(preds, targets, unit=unit, quantity=name), f"{name}_bland_altman",
               f"Bland–Altman plot of `{name}`{in_unit}: bias and 95 % limits of agreement (bias ± 1.96 SD).")
    _tsne(doc, predictions, targets, f"target{in_unit}", seed)


def _segmentation(doc: Document, predictions: Predictions, seed: int) -> None:
    name = predictions.name
    masks, pred_masks = predictions["masks"], predictions["pred_masks"]
    class_names = predictions.get("class_names")
    labels = [int(v) for v in np.union1d(np.unique(masks), np.unique(pred_masks)) if v > 0]
    if "sample_dice" in predictions:
        doc.heading(3, f"`{name}`: segmentation ({plural(predictions.num_items, 'item')}, "
                       f"{plural(predictions.size, 'example')} shown)")
        dice = predictions["sample_dice"].astype(np.float64)
        structures = [str(s) for s in predictions["structure_names"]]
        rows = [[subset, len(index), float(dice[index].mean(axis=0).mean()), *dice[index].mean(axis=0)]
                for subset, index in _subsets(predictions)]
        doc.table(["subset", "n", "dice", *(f"dice/{s}" for s in structures)], rows)
        _interval_table(doc, predictions, seed)
    else:
        doc.heading(3, f"`{name}`: segmentation ({plural(predictions.size, 'example')})")
        if labels:
            label_names = {v: str(class_names[v]) if class_names is not None else f"label_{v}" for v in labels}
            metrics = segmentation_metrics(pred_masks, masks, label_names)
            columns = ["dice", *(f"dice/{label_names[v]}" for v in labels)]
            doc.table(["examples", *columns], [[predictions.size, *(metrics[c] for c in columns)]])
    doc.figure(
        plot_segmentation_overlays(predictions["images"], masks, pred_masks,
                                   None if class_names is None else [str(c) for c in class_names]),
        f"{name}_overlays",
        f"Segmentation examples of `{name}`: ground truth (solid) and prediction (dashed) contours, Dice per example.",
    )


def _tsne(doc: Document, predictions: Predictions, labels: np.ndarray, label_name: str, seed: int) -> None:
    embeddings = predictions.get("embeddings")
    if embeddings is None or len(embeddings) < MIN_TSNE_POINTS:
        return
    index = predictions.get("embedding_index")
    index = np.arange(len(embeddings)) if index is None else index.astype(np.int64)
    sites = predictions.get("sites")
    fig = plot_tsne(embeddings, np.asarray(labels)[index], None if sites is None else sites[index],
                    label_name=label_name, seed=seed)
    by = "site and by " + label_name if sites is not None else label_name
    doc.figure(fig, f"{predictions.name}_tsne", f"t-SNE of the `{predictions.name}` embeddings, coloured by {by}.")
