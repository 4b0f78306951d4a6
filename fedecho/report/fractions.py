"""Label-fraction curves (EchoCLR style: Holste et al., "Efficient deep learning-based automated
diagnosis from echocardiography with contrastive self-supervised learning", 2023): a task metric
against the fraction of labelled training patients (1–100 %, log axis) for an SSL-pretrained
encoder (or several: SimCLR, DINO, ...) versus random initialisation, pooled, federated and each
site alone (the mean over sites).

A row is a dict ``{"arm": encoder name ("ssl", "simclr", "dino", ..., "random"), "setting": "pooled" |
"federated" | "local" (local-only: the mean over the sites, each trained alone), "fraction":
float in (0, 1], "metric": str, "value": float, "low": float, "high": float}``; ``low``/``high``
(a confidence interval, e.g. from :func:`fedecho.report.bootstrap.bootstrap_ci`) may be absent,
None or NaN, which draws no band for that point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedecho.report.document import format_value, markdown_table
from fedecho.report.figure import new_figure

__all__ = ["SETTINGS", "arm_label", "fraction_table", "plot_label_fraction_curves"]

SETTINGS = ("pooled", "federated", "local")
_STYLES = {"pooled": "-", "federated": "--", "local": ":"}
_SETTING_LABELS = {"pooled": "pooled", "federated": "federated", "local": "local-only (site mean)"}
_PRETRAINED_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:cyan")


def arm_label(arm: str) -> str:
    """How an encoder arm is named in legends and tables: ``random`` is random initialisation,
    ``ssl`` any self-supervised pretraining, ``pretext`` the supervised pretext encoder,
    ``fully-trained`` the whole model trained (no adapter), other names the pretraining method."""
    return {"random": "random init", "ssl": "SSL-pretrained", "pretext": "supervised pretext",
            "fully-trained": "fully trained"}.get(arm, f"{arm}-pretrained")


def _arms(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Encoder arms in first-seen order, random initialisation last."""
    seen = list(dict.fromkeys(str(r["arm"]) for r in rows))
    return [a for a in seen if a != "random"] + (["random"] if "random" in seen else [])


def _colours(arms: Sequence[str]) -> dict[str, str]:
    pretrained = [a for a in arms if a != "random"]
    colours = {a: _PRETRAINED_COLOURS[i % len(_PRETRAINED_COLOURS)] for i, a in enumerate(pretrained)}
    return {**colours, "random": "tab:orange"}


def _checked(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with float fields and NaN for missing bounds; ValueError listing every bad row."""
    if not rows:
        raise ValueError("no label-fraction rows to show")
    problems, out = [], []
    seen: set[tuple] = set()
    for i, row in enumerate(rows):
        missing = [k for k in ("arm", "setting", "fraction", "metric", "value") if k not in row]
        if missing:
            problems.append(f"row {i} lacks {missing}")
            continue
        if not isinstance(row["arm"], str) or not row["arm"]:
            problems.append(f"row {i}: arm {row['arm']!r} is not an encoder name")
        if row["setting"] not in SETTINGS:
            problems.append(f"row {i}: setting {row['setting']!r} is not one of {list(SETTINGS)}")
        try:
            fraction, value = float(row["fraction"]), float(row["value"])
            low, high = (float("nan") if row.get(k) is None else float(row[k]) for k in ("low", "high"))
        except (TypeError, ValueError):
            problems.append(f"row {i}: fraction, value, low and high must be numbers")
            continue
        if not 0 < fraction <= 1:
            problems.append(f"row {i}: fraction {fraction} must lie in (0, 1] (0.01 = 1 % of patients labelled)")
        key = (row["arm"], row["setting"], fraction, row["metric"])
        if key in seen:
            problems.append(f"row {i} repeats arm/setting/fraction/metric {key}")
        seen.add(key)
        out.append({**row, "fraction": fraction, "value": value, "low": low, "high": high})
    if problems:
        raise ValueError("label-fraction rows: " + "; ".join(problems))
    return out


def _lines(rows: list[dict[str, Any]], metric: str) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(arm, setting, rows by fraction) for each arm × setting present, arms in first-seen order
    (random last) × SETTINGS."""
    out = []
    for arm in _arms(rows):
        for setting in SETTINGS:
            chosen = sorted((r for r in rows if (r["arm"], r["setting"], r["metric"]) == (arm, setting, metric)),
                            key=lambda r: r["fraction"])
            if chosen:
                out.append((arm, setting, chosen))
    return out


def plot_label_fraction_curves(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """One panel per metric: the metric against the labelled fraction (log x axis, 1–100 %), one
    line per arm × setting (colour = arm, solid = pooled, dashed = federated, dotted = local-only)
    with its confidence band where ``low``/``high`` are given. Line labels: ``"<arm name>, <setting>"``."""
    checked = _checked(rows)
    colours = _colours(_arms(checked))
    metrics = list(dict.fromkeys(r["metric"] for r in checked))
    fig, axes = new_figure(ncols=len(metrics), panel_size=(6.0, 4.5))
    for ax, metric in zip(axes, metrics, strict=True):
        for arm, setting, line in _lines(checked, metric):
            x = np.array([100 * r["fraction"] for r in line])
            y = np.array([r["value"] for r in line])
            low = np.array([r["low"] for r in line])
            high = np.array([r["high"] for r in line])
            label = f"{arm_label(arm)}, {_SETTING_LABELS[setting]}"
            ax.plot(x, y, color=colours[arm], linestyle=_STYLES[setting], marker="o", label=label)
            band = np.isfinite(low) & np.isfinite(high)
            if band.any():
                ax.fill_between(x, np.where(band, low, y), np.where(band, high, y), color=colours[arm],
                                alpha={"pooled": 0.15, "federated": 0.08, "local": 0.05}[setting], linewidth=0)
        ax.set_xscale("log")
        ax.set_xlim(0.8, 125)
        ticks = [1, 5, 10, 25, 50, 100]
        ax.set_xticks(ticks, [f"{t} %" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled training patients")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs label fraction")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def fraction_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per metric × fraction, one column per arm × setting holding
    ``value [low, high]`` (``value`` alone without an interval, ``n/a`` where a run is missing)."""
    checked = _checked(rows)
    columns = [(arm, setting) for arm in _arms(checked) for setting in SETTINGS
               if any((r["arm"], r["setting"]) == (arm, setting) for r in checked)]
    cells = {(r["metric"], r["fraction"], r["arm"], r["setting"]): r for r in checked}
    body = []
    for metric in dict.fromkeys(r["metric"] for r in checked):
        for fraction in sorted({r["fraction"] for r in checked if r["metric"] == metric}):
            row: list[Any] = [metric, f"{format_value(round(100 * fraction, 4))} %"]
            for arm, setting in columns:
                cell = cells.get((metric, fraction, arm, setting))
                row.append("n/a" if cell is None else _cell(cell))
            body.append(row)
    header = ["metric", "labelled", *(f"{arm_label(a)}, {_SETTING_LABELS[s]}" for a, s in columns)]
    return markdown_table(header, body)


def _cell(row: Mapping[str, float]) -> str:
    text = format_value(row["value"])
    if math.isfinite(row["low"]) and math.isfinite(row["high"]):
        text += f" [{format_value(row['low'])}, {format_value(row['high'])}]"
    return text
