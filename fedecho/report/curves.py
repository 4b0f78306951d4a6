"""Plots over rounds, from the run history: learning curves per phase (per site and global), the
privacy budget ε spent per site, and bytes on the wire per round.

Every function returns a :class:`matplotlib.figure.Figure` (Agg canvas); save it with
:func:`fedecho.report.figure.save_figure`. Run-wide plots (ε, bytes) put round records on one axis
numbered 1..R in run order (the TensorBoard step of :class:`~fedecho.federation.history.RunHistory`)
and mark where each phase starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedecho.federation.contract import MetricKey
from fedecho.federation.history import RoundRecord
from fedecho.report.figure import color_cycle, new_figure

__all__ = [
    "CENTRAL",
    "GLOBAL",
    "curve_series",
    "epsilon_series",
    "plot_bytes",
    "plot_epsilon",
    "plot_learning_curves",
]

GLOBAL = "global"
CENTRAL = "central"
_TRAIN_LOSS = MetricKey.LOSS


def curve_series(
    records: Sequence[RoundRecord], metric: str, kind: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Line label -> (rounds, values) of ``metric`` over ``records`` (one phase).

    ``kind`` is ``"train"`` (aggregated ``train`` + ``sites_train``) or ``"evaluate"``
    (aggregated ``evaluate``, ``central`` and ``sites_evaluate``). Labels: ``global``,
    ``central`` (evaluate only), then the sites in order of appearance. A round where a source
    lacks the metric (site rejected, not sampled) is left out of that source's line. Sources
    without any value are absent.
    """
    if kind not in ("train", "evaluate"):
        raise ValueError(f"kind must be 'train' or 'evaluate', got {kind!r}")
    points: dict[str, list[tuple[int, float]]] = {GLOBAL: []}
    if kind == "evaluate":
        points[CENTRAL] = []
    for record in records:
        sources = {GLOBAL: record.train} if kind == "train" else {GLOBAL: record.evaluate, CENTRAL: record.central}
        sources.update(record.sites_train if kind == "train" else record.sites_evaluate)
        for label, metrics in sources.items():
            if metric in metrics and not math.isnan(float(metrics[metric])):
                points.setdefault(label, []).append((record.round, float(metrics[metric])))
    return {
        label: (np.array([r for r, _ in values], dtype=np.int64), np.array([v for _, v in values], dtype=np.float64))
        for label, values in points.items()
        if values
    }


def plot_learning_curves(phase: str, records: Sequence[RoundRecord], metric: str | None) -> Figure:
    """Training loss (``train-loss``) and ``metric`` (federated evaluation) per round of one phase:
    one line per site plus the aggregated (global) line, and the central evaluation if any.

    Panels without data are left out; ValueError when neither panel has data.
    """
    panels = [(_TRAIN_LOSS, "train", curve_series(records, _TRAIN_LOSS, "train"))]
    if metric is not None:
        panels.append((metric, "evaluate", curve_series(records, metric, "evaluate")))
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        raise ValueError(f"phase {phase!r}: no '{_TRAIN_LOSS}' or evaluation metric in its {len(records)} rounds")
    sites = [label for _, _, series in panels for label in series if label not in (GLOBAL, CENTRAL)]
    colors = color_cycle(list(dict.fromkeys(sites)))
    fig, axes = new_figure(ncols=len(panels))
    for ax, (name, kind, series) in zip(axes, panels, strict=True):
        for label, (rounds, values) in series.items():
            if label == GLOBAL:
                style = {"color": "black", "linewidth": 2.5, "marker": "o"}
            elif label == CENTRAL:
                style = {"color": "dimgray", "linewidth": 2.0, "linestyle": "--", "marker": "s"}
            else:
                style = {"color": colors[label], "linewidth": 1.2, "marker": ".", "alpha": 0.9}
            ax.plot(rounds, values, label=label, **style)
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.set_title(f"{name} ({'training' if kind == 'train' else 'evaluation'})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        _integer_ticks(ax)
    fig.suptitle(f"Learning curves: {phase}")
    return fig


def epsilon_series(records: Sequence[RoundRecord]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Site -> (run-wide round numbers 1..R, ε reported by the site) from ``sites_train``."""
    points: dict[str, list[tuple[int, float]]] = {}
    for step, record in enumerate(records, start=1):
        for site, metrics in record.sites_train.items():
            if MetricKey.EPSILON in metrics and math.isfinite(float(metrics[MetricKey.EPSILON])):
                points.setdefault(site, []).append((step, float(metrics[MetricKey.EPSILON])))
    return {site: (np.array([s for s, _ in v]), np.array([e for _, e in v])) for site, v in points.items()}


def plot_epsilon(records: Sequence[RoundRecord]) -> Figure:
    """ε spent per site over the run (DP-SGD accountants compose across rounds and phases).

    ValueError when no site reported ``epsilon``.
    """
    series = epsilon_series(records)
    if not series:
        raise ValueError("no site reported 'epsilon': DP-SGD was off in this run")
    deltas = {float(m[MetricKey.DELTA]) for r in records for m in r.sites_train.values() if MetricKey.DELTA in m}
    colors = color_cycle(list(series))
    fig, (ax,) = new_figure(panel_size=(7.0, 4.0))
    for site, (steps, eps) in series.items():
        ax.plot(steps, eps, marker="o", color=colors[site], label=site)
    _phase_bounds(ax, records)
    ax.set_xlabel("round (run-wide)")
    ax.set_ylabel("ε")
    delta = f", δ = {deltas.pop():.3g}" if len(deltas) == 1 else ""
    ax.set_title(f"Privacy budget spent per site{delta}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _integer_ticks(ax)
    return fig


def plot_bytes(records: Sequence[RoundRecord]) -> Figure:
    """Bytes sent (coordinator → sites) and received (sites → coordinator) per round, in MB."""
    if not records:
        raise ValueError("no rounds to plot")
    steps = np.arange(1, len(records) + 1)
    sent = np.array([r.bytes_sent for r in records], dtype=np.float64) / 1e6
    received = np.array([r.bytes_received for r in records], dtype=np.float64) / 1e6
    fig, (ax,) = new_figure(panel_size=(7.0, 4.0))
    width = 0.4
    ax.bar(steps - width / 2, sent, width, label="sent (to sites)", color="tab:blue")
    ax.bar(steps + width / 2, received, width, label="received (from sites)", color="tab:orange")
    _phase_bounds(ax, records)
    ax.set_xlabel("round (run-wide)")
    ax.set_ylabel("MB")
    ax.set_title(f"Bytes on the wire per round (total {sent.sum() + received.sum():.3g} MB)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    _integer_ticks(ax)
    return fig


def _phase_bounds(ax: Axes, records: Sequence[RoundRecord]) -> None:
    """Dotted vertical lines where a new phase starts; phase names on a top axis over their rounds."""
    spans: list[list] = []  # [phase, first step, last step]
    for step, record in enumerate(records, start=1):
        if spans and spans[-1][0] == record.phase:
            spans[-1][2] = step
        else:
            if spans:
                ax.axvline(step - 0.5, color="gray", linestyle=":", linewidth=1)
            spans.append([record.phase, step, step])
    top = ax.secondary_xaxis("top")
    top.set_xticks([(first + last) / 2 for _, first, last in spans], [phase for phase, _, _ in spans],
                   fontsize="small", color="dimgray")
    top.tick_params(length=0)


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
