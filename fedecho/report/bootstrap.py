"""Percentile bootstrap confidence intervals (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13), resampling patients rather than images when the patient of each item
is known: a patient's images are correlated, and resampling them one by one would give intervals
that are too narrow (the cluster bootstrap; Field & Welsh, JRSS B 2007).

:func:`prediction_cis` gives the report's intervals for a prediction file: Dice per structure and
its mean over structures (segmentation), accuracy, balanced accuracy and one-vs-rest macro AUROC
(classification), MAE (regression, and per quantity when a file holds several).

AUROC: the estimate is scikit-learn's (:func:`fedecho.tasks.metrics.auroc`); resamples use the
same quantity through the Mann–Whitney rank formula (:func:`rank_auroc`, tested equal to
scikit-learn), because ``roc_auc_score``'s input checks cost milliseconds per call: 2000 resamples
of 200 three-class predictions took 16 s with it on this machine. Accuracy likewise: its resamples
are means of per-item hits (``accuracy_score``'s checks made it most of a smoke run's report time).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from fedecho.report.predictions import Predictions

__all__ = ["BOOTSTRAP_DRAWS", "average_ranks", "bootstrap_ci", "prediction_cis", "rank_auroc"]

#: resamples used by the report
BOOTSTRAP_DRAWS = 2000


def bootstrap_ci(
    values: Any,
    *,
    groups: Any | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = BOOTSTRAP_DRAWS,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): ``statistic(values)`` and its percentile bootstrap 1 − ``alpha`` interval.

    ``values`` (N, ...): rows are resampled with replacement (``n_boot`` times, generator
    ``np.random.default_rng(seed)``) and ``statistic`` is applied to each resample. With
    ``groups`` (N,) (e.g. patient ids), whole groups are drawn instead: as many groups as there
    are, each bringing all of its rows. A statistic of several arrays takes row indices:
    ``bootstrap_ci(np.arange(n), statistic=lambda i: auroc(y[i], p[i]))``. Resamples where the
    statistic is NaN (e.g. AUROC with one class drawn) are left out of the percentiles; when
    fewer than half remain, the interval is (NaN, NaN). Deterministic for a seed.
    """
    x = np.asarray(values)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"bootstrap_ci needs at least one value, got shape {x.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    estimate = float(statistic(x))
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = rng.integers(0, len(x), size=(n_boot, len(x)))
        samples = (draws[b] for b in range(n_boot))
    else:
        g = np.asarray(groups)
        if g.shape != (len(x),):
            raise ValueError(f"groups must have shape ({len(x)},) (one group per value), got {g.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)  # rows of each group
        picks = rng.integers(0, len(members), size=(n_boot, len(members)))
        samples = (np.concatenate([members[k] for k in picks[b]]) for b in range(n_boot))
    boots = np.array([float(statistic(x[index])) for index in samples])
    finite = boots[np.isfinite(boots)]
    if len(finite) < max(1, n_boot // 2):
        return estimate, float("nan"), float("nan")
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return estimate, float(low), float(high)


#: intervals already computed in this process, by the prediction file's content and the settings
_CACHE: OrderedDict[str, dict[str, tuple[float, float, float]]] = OrderedDict()
_CACHE_SIZE = 32


def prediction_cis(
    predictions: Predictions, *, n_boot: int = BOOTSTRAP_DRAWS, alpha: float = 0.05, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Metric -> (estimate, low, high) over every item of a prediction file, resampling patients
    when the file has ``patients``.

    segmentation (needs ``sample_dice``): ``dice/<structure>`` (mean Dice of the structure over
    items) and ``dice`` (the mean of those over structures, as the task reports it); with
    ``phases`` of two or more named phases, also ``dice@<phase>`` and ``dice/<structure>@<phase>``
    over that phase's items (CAMUS: ``dice/lv_cavity@ED``, the literature's LV Dice at ED); a file
    without ``sample_dice`` gives {}. classification: ``accuracy``, ``balanced_accuracy``,
    ``auroc``. regression: ``mae``, and ``mae/<quantity>`` per quantity.

    The run report and the experiment's result row both ask for the intervals of each prediction
    file: a file's intervals are computed once per process (cached by its arrays' bytes and the
    settings; the result is the same either way, 2000 resamples cost seconds per file).
    """
    key = _content_key(predictions, n_boot, alpha, seed)
    if key not in _CACHE:
        _CACHE[key] = _prediction_cis(predictions, n_boot=n_boot, alpha=alpha, seed=seed)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return dict(_CACHE[key])


def _content_key(predictions: Predictions, *settings: object) -> str:
    digest = hashlib.sha256(repr((predictions.kind, settings)).encode())
    for name in sorted(predictions.arrays):
        array = np.ascontiguousarray(predictions.arrays[name])
        digest.update(repr((name, array.dtype.str, array.shape)).encode())
        digest.update(repr(array.tolist()).encode() if array.dtype == object else array.tobytes())
    return digest.hexdigest()


def _prediction_cis(
    predictions: Predictions, *, n_boot: int, alpha: float, seed: int
) -> dict[str, tuple[float, float, float]]:
    from fedecho.tasks.metrics import accuracy, auroc, balanced_accuracy

    patients = predictions.get("patients")

    def ci(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
           groups: np.ndarray | None = patients) -> tuple[float, float, float]:
        return bootstrap_ci(values, groups=groups, statistic=statistic, n_boot=n_boot, alpha=alpha, seed=seed)

    out: dict[str, tuple[float, float, float]] = {}
    if predictions.kind == "segmentation":
        if "sample_dice" not in predictions:
            return out
        dice = predictions["sample_dice"].astype(np.float64)
        out["dice"] = ci(dice, lambda d: float(np.mean(d.mean(axis=0))))
        for s, name in enumerate(predictions["structure_names"]):
            out[f"dice/{name}"] = ci(dice[:, s])
        phases = predictions.get("phases")
        named = sorted({str(p) for p in phases.tolist()} - {""}) if phases is not None else []
        for phase in named if len(named) > 1 else []:  # e.g. CAMUS: Dice at ED and at ES
            chosen = phases == phase
            groups = None if patients is None else patients[chosen]
            out[f"dice@{phase}"] = ci(dice[chosen], lambda d: float(np.mean(d.mean(axis=0))), groups=groups)
            for s, name in enumerate(predictions["structure_names"]):
                out[f"dice/{name}@{phase}"] = ci(dice[chosen, s], groups=groups)
    elif predictions.kind == "classification":
        probs = predictions["probs"].astype(np.float64)
        targets = predictions["targets"].astype(np.int64)
        predicted = probs.argmax(axis=1)
        rows = np.arange(len(targets))
        _, low, high = ci((predicted == targets).astype(np.float64))  # a resample's accuracy: its mean hit
        out["accuracy"] = (accuracy(targets, predicted), low, high)
        out["balanced_accuracy"] = ci(rows, lambda i: balanced_accuracy(targets[i], predicted[i]))
        _, low, high = ci(rows, lambda i: rank_auroc(targets[i], probs[i]))
        out["auroc"] = (auroc(targets, probs), low, high)
    else:
        errors = np.abs(predictions["preds"].astype(np.float64) - predictions["targets"].astype(np.float64))
        out["mae"] = ci(errors)
        quantities = predictions.get("quantities")
        if quantities is not None and len(set(quantities.tolist())) > 1:
            for name in sorted(set(quantities.tolist())):
                chosen = quantities == name
                out[f"mae/{name}"] = ci(errors[chosen], groups=None if patients is None else patients[chosen])
    return out


def rank_auroc(targets: np.ndarray, probs: np.ndarray) -> float:
    """AUROC from ranks (Mann–Whitney U / (n₊ n₋), ties at average rank; Hanley & McNeil 1982):
    binary (C = 2) on the class-1 column, else the mean of the defined one-vs-rest AUROCs (a
    class absent from ``targets``, or all of it, is undefined); NaN when none is defined.
    Equals :func:`fedecho.tasks.metrics.auroc` on ``targets`` (N,) int and ``probs`` (N, C)."""
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    values = []
    columns = None
    for c in classes:
        positives = targets == c
        n_pos = int(positives.sum())
        n_neg = len(targets) - n_pos
        if n_pos and n_neg:
            columns = average_ranks(probs) if columns is None else columns  # every class's column at once
            ranks = columns[:, c]
            values.append((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(values)) if values else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,) or of each column of ``x`` (N, C), ties at their average rank: the
    values of ``scipy.stats.rankdata(x, axis=0)`` (the same float64 numbers, half-integers), without
    its array-API dispatch, which cost most of a classification report's bootstrap (thousands of
    calls on arrays of tens of items). NaN in ``x``: scipy's own result."""
    x = np.asarray(x)
    if x.ndim not in (1, 2) or len(x) == 0 or (x.dtype.kind == "f" and np.isnan(x).any()):
        from scipy.stats import rankdata

        return rankdata(x, axis=0)
    order = np.argsort(x, axis=0, kind="stable")
    sorted_x = np.take_along_axis(x, order, axis=0)
    position = np.arange(len(x)).reshape((-1,) + (1,) * (x.ndim - 1))
    differs = sorted_x[1:] != sorted_x[:-1]
    edge = np.ones((1,) + x.shape[1:], dtype=bool)
    first = np.maximum.accumulate(np.where(np.concatenate([edge, differs]), position, 0), axis=0)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(np.concatenate([differs, edge]), position, len(x)), 0),
                                         axis=0), 0)
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last).astype(np.float64) / 2 + 1, axis=0)
    return ranks
