"""Plots of a task's predictions: confusion matrix, ROC curves, Bland–Altman agreement and
segmentation overlays (t-SNE of embeddings is in :mod:`fedecho.report.embedding`; plots over
rounds in :mod:`fedecho.report.curves`).

Every function takes the arrays of a prediction file (shapes as in
:mod:`fedecho.report.predictions`) and returns a :class:`matplotlib.figure.Figure` with an Agg
canvas; save it with :func:`fedecho.report.figure.save_figure`. The numbers drawn come from
:mod:`fedecho.tasks.metrics` (confusion matrix, AUROC, Bland–Altman) so that plots and metric
tables agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from fedecho.report.figure import color_cycle, new_figure
from fedecho.tasks.metrics import (
    auroc,
    auroc_per_class,
    bland_altman,
    confusion_matrix,
    dice_per_label,
)

__all__ = [
    "plot_bland_altman",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_segmentation_overlays",
    "roc_defined",
]

_ANNOTATE_MAX_CLASSES = 15


def plot_confusion_matrix(probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Two panels: counts and row-normalised fractions (recall per true class on the diagonal).

    ``probs`` (N, C), ``targets`` (N,) int; the prediction is ``probs.argmax(1)``. A true class
    without samples has an empty (white) row in the normalised panel.
    """
    probs = np.asarray(probs, dtype=np.float64)
    names = [str(n) for n in class_names]
    counts = confusion_matrix(targets, probs.argmax(axis=1), len(names))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    fig, axes = new_figure(ncols=2, panel_size=(max(4.5, 0.6 * len(names) + 2.5), max(4.0, 0.6 * len(names) + 2.0)))
    from matplotlib import colormaps

    cmap = colormaps["Blues"].with_extremes(bad="white")
    for ax, matrix, title, fmt in (
        (axes[0], counts.astype(np.float64), f"Counts (n = {int(counts.sum())})", "{:.0f}"),
        (axes[1], normalised, "Normalised by true class", "{:.2f}"),
    ):
        image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1 if matrix is normalised else max(1, matrix.max()))
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if len(names) <= _ANNOTATE_MAX_CLASSES:
            _annotate(ax, matrix, fmt)
    return fig


def _annotate(ax: Axes, matrix: np.ndarray, fmt: str) -> None:
    top = np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0
    for (i, j), value in np.ndenumerate(matrix):
        if math.isfinite(value):
            color = "white" if value > 0.6 * top else "black"
            ax.text(j, i, fmt.format(value), ha="center", va="center", color=color, fontsize="small")


def roc_defined(targets: np.ndarray, num_classes: int) -> bool:
    """Whether at least one ROC curve exists: some class has both positives and negatives."""
    present = np.unique(np.asarray(targets))
    return len(present) >= 2 and (num_classes > 2 or {0, 1} <= set(present.tolist()))


def plot_roc(probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> Figure:
    """ROC curves with AUROC in the legend: for two classes, class 1 against class 0; for more,
    one-vs-rest per class (classes absent from ``targets`` have no curve) with the macro AUROC
    in the title. ``probs`` (N, C), ``targets`` (N,) int. ValueError when no curve is defined.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    names = [str(n) for n in class_names]
    if not roc_defined(targets, len(names)):
        raise ValueError(f"ROC needs samples of at least two classes; targets hold only {np.unique(targets).tolist()}")
    fig, (ax,) = new_figure(panel_size=(5.5, 5.0))
    if len(names) == 2:
        fpr, tpr, _ = roc_curve(targets == 1, probs[:, 1])
        ax.plot(fpr, tpr, color="tab:blue", linewidth=2,
                label=f"{names[1]} vs {names[0]} (AUC = {auroc(targets, probs):.3f})")
        ax.set_title("ROC")
    else:
        per_class = auroc_per_class(targets, probs)
        colors = color_cycle(names)
        missing = []
        for c, name in enumerate(names):
            if not math.isfinite(per_class[c]):
                missing.append(name)
                continue
            fpr, tpr, _ = roc_curve(targets == c, probs[:, c])
            ax.plot(fpr, tpr, color=colors[name], linewidth=1.5, label=f"{name} (AUC = {per_class[c]:.3f})")
        ax.set_title(f"One-vs-rest ROC (macro AUC = {auroc(targets, probs):.3f})")
        if missing:
            ax.text(0.98, 0.02, f"no samples of: {', '.join(missing)}", ha="right", va="bottom",
                    transform=ax.transAxes, fontsize="x-small", color="gray")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_bland_altman(preds: np.ndarray, targets: np.ndarray, unit: str = "", quantity: str = "") -> Figure:
    """Bland–Altman plot (Bland & Altman, Lancet 1986): x = mean of prediction and reference,
    y = prediction − reference, with horizontal lines at the bias (mean difference) and the 95 %
    limits of agreement bias ± 1.96 · SD (from :func:`fedecho.tasks.metrics.bland_altman`; the
    limits are not drawn for fewer than two pairs). ``preds``, ``targets`` (N,).
    """
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    stats = bland_altman(p, t)
    suffix = f" ({unit})" if unit else ""
    fig, (ax,) = new_figure(panel_size=(6.0, 4.5))
    ax.scatter((p + t) / 2, p - t, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    ax.axhline(0.0, color="lightgray", linewidth=1)
    ax.axhline(stats.bias, color="tab:red", linewidth=2, label=f"bias {stats.bias:.3g}{unit and ' ' + unit}")
    if math.isfinite(stats.sd):
        for value, side in ((stats.loa_high, "+"), (stats.loa_low, "−")):
            ax.axhline(value, color="tab:red", linestyle="--", linewidth=1.5,
                       label=f"bias {side} 1.96 SD: {value:.3g}{unit and ' ' + unit}")
    ax.set_xlabel(f"mean of prediction and reference{suffix}")
    ax.set_ylabel(f"prediction − reference{suffix}")
    ax.set_title(f"Bland–Altman{': ' + quantity if quantity else ''} (n = {stats.n})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_segmentation_overlays(
    images: np.ndarray,
    masks: np.ndarray,
    pred_masks: np.ndarray,
    class_names: Sequence[str] | None = None,
    max_examples: int = 8,
    ncols: int = 4,
) -> Figure:
    """A grid of up to ``max_examples`` examples: the image (grey) with the ground-truth contour
    (solid) and the predicted contour (dashed) of every foreground label, one colour per label;
    each panel's title gives the mean foreground Dice of that example.

    ``images`` (K, H, W) float in [0, 1]; ``masks``, ``pred_masks`` (K, H, W) int (0 = background).
    """
    images, masks, pred_masks = (np.asarray(a) for a in (images, masks, pred_masks))
    count = min(len(images), max_examples)
    if count == 0:
        raise ValueError("no segmentation examples to draw")
    labels = sorted(int(v) for v in np.union1d(np.unique(masks[:count]), np.unique(pred_masks[:count])) if v > 0)
    names = {v: (str(class_names[v]) if class_names is not None and v < len(class_names) else f"label {v}")
             for v in labels}
    colors = color_cycle([names[v] for v in labels])
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, panel_size=(3.0, 3.2))
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= count:
            continue
        ax.imshow(images[k], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        for value in reversed(labels):  # lower labels (LV cavity) on top of the structures around them
            for mask, style in ((masks[k], "solid"), (pred_masks[k], "dashed")):
                region = (mask == value).astype(np.float64)
                if 0 < region.sum() < region.size:  # contour of an empty/full region does not exist
                    ax.contour(region, levels=[0.5], colors=[colors[names[value]]], linestyles=style, linewidths=1.5)
        title = f"#{k}"
        if labels:
            dice = dice_per_label(pred_masks[k], masks[k], labels)
            title += f"  Dice {float(np.mean(dice)):.3f}"
        ax.set_title(title, fontsize="small")
    handles = [Line2D([], [], color=colors[names[v]], label=names[v]) for v in labels]
    handles += [Line2D([], [], color="black", linestyle="solid", label="ground truth"),
                Line2D([], [], color="black", linestyle="dashed", label="prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")
    return fig
