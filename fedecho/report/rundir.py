"""Reading a run directory for the report: ``history.json``, ``summary.json``, prediction files,
and which metric of a phase is its primary one.

A run directory holds ``history.json`` (a list of :class:`~fedecho.federation.history.RoundRecord`
dicts, written by :class:`~fedecho.federation.history.RunHistory`), optionally ``summary.json``
(``{"rows": [{column: value, ...}, ...]}``: the reproduction table), ``predictions/*.npz`` (see
:mod:`fedecho.report.predictions`) and ``tb/`` (TensorBoard events).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedecho.data.errors import EchoDataError
from fedecho.federation.contract import MetricKey
from fedecho.federation.history import RoundRecord

__all__ = [
    "FALLBACK_METRICS",
    "group_phases",
    "load_history",
    "load_summary",
    "prediction_files",
    "primary_metric",
]

#: evaluation metrics tried in this order when a phase's task does not name its primary metric
FALLBACK_METRICS = (
    "balanced_accuracy", "auroc", "accuracy", "dice", "mae_mm", "mae", "rmse", MetricKey.EVAL_LOSS, "loss",
)
_FIELDS = {f.name: f for f in dataclasses.fields(RoundRecord)}
_DICTS = ("train", "evaluate", "central")
_SITE_DICTS = ("sites_train", "sites_evaluate")


def load_history(run_dir: str | Path) -> list[RoundRecord]:
    """The round records of ``RUN_DIR/history.json``, checked; errors name the file and the problem.

    FileNotFoundError when the file is missing; EchoDataError (a ValueError) listing every problem
    when it is not JSON or not a list of round records.
    """
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: history.json not found; is {Path(run_dir)} a FedEcho run directory?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise EchoDataError.at(path, f"not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise EchoDataError.at(path, f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(raw, list):
        raise EchoDataError.at(path, f"expected a JSON list of round records, got {type(raw).__name__}")
    problems = [p for i, entry in enumerate(raw) for p in _record_problems(i, entry)]
    if problems:
        raise EchoDataError.at(path, "; ".join(problems))
    return [RoundRecord(**entry) for entry in raw]


def _record_problems(index: int, entry: Any) -> list[str]:
    where = f"record {index}"
    if not isinstance(entry, dict):
        return [f"{where} is a {type(entry).__name__}, not an object"]
    problems = [f"{where} has unknown key {key!r}" for key in entry if key not in _FIELDS]
    for key in ("phase", "round"):
        if key not in entry:
            problems.append(f"{where} lacks {key!r}")
    if "phase" in entry and not isinstance(entry["phase"], str):
        problems.append(f"{where}: 'phase' must be a string")
    if "round" in entry and (not isinstance(entry["round"], int) or isinstance(entry["round"], bool)):
        problems.append(f"{where}: 'round' must be an integer")
    for key in _DICTS:
        if key in entry and not _is_metrics(entry[key]):
            problems.append(f"{where}: {key!r} must map metric names to numbers")
    for key in _SITE_DICTS:
        value = entry.get(key, {})
        if not isinstance(value, dict) or not all(_is_metrics(v) for v in value.values()):
            problems.append(f"{where}: {key!r} must map site names to metric dicts")
    if not isinstance(entry.get("rejected", {}), dict):
        problems.append(f"{where}: 'rejected' must map site names to reasons")
    for key in ("bytes_sent", "bytes_received", "seconds"):
        if key in entry and not _is_number(entry[key]):
            problems.append(f"{where}: {key!r} must be a number")
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_metrics(value: Any) -> bool:
    # json.dumps writes NaN as NaN, which json.loads reads back as float("nan"): allowed
    return isinstance(value, dict) and all(_is_number(v) for v in value.values())


def load_summary(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The rows of ``RUN_DIR/summary.json`` (``{"rows": [...]}``), or None when the file is absent."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EchoDataError.at(path, f"not valid JSON ({err})") from None
    rows = raw.get("rows") if isinstance(raw, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise EchoDataError.at(path, 'expected {"rows": [{column: value, ...}, ...]}')
    return rows


def prediction_files(run_dir: str | Path) -> list[Path]:
    """``RUN_DIR/predictions/*.npz``, sorted by name (empty when there are none)."""
    folder = Path(run_dir) / "predictions"
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def group_phases(records: Sequence[RoundRecord]) -> dict[str, list[RoundRecord]]:
    """Phase name -> its records in run order (phases in order of first appearance)."""
    phases: dict[str, list[RoundRecord]] = {}
    for record in records:
        phases.setdefault(record.phase, []).append(record)
    return phases


def primary_metric(phase: str, records: Sequence[RoundRecord]) -> str | None:
    """The evaluation metric to plot for a phase, or None when no evaluation metric was recorded.

    A phase named ``<kind>:<task>`` (e.g. ``adapt:view``) uses the registered task's
    ``primary_metric`` when the history holds it; otherwise the first of :data:`FALLBACK_METRICS`
    present, otherwise the first evaluation metric other than ``num-examples``.
    """
    names: dict[str, None] = {}
    for record in records:
        for metrics in (record.evaluate, record.central, *record.sites_evaluate.values()):
            names.update({key: None for key, value in metrics.items() if not math.isnan(float(value))})
    names.pop(MetricKey.NUM_EXAMPLES, None)
    if not names:
        return None
    task = phase.split(":", 1)[1] if ":" in phase else ""
    candidates = list(FALLBACK_METRICS)
    if task:
        from fedecho.tasks import TASKS

        if task in TASKS:
            candidates.insert(0, TASKS.get(task).primary_metric)
    for candidate in candidates:
        if candidate in names:
            return candidate
    return next(iter(names))
