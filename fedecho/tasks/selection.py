"""Model selection: which way each metric improves, and a tracker that keeps the best checkpoint.

A metric name is ``<base>`` or ``<base>/<qualifier>`` (``mae``, ``mae/edv``, ``dice/lv_cavity``);
its direction is that of its base. Lower is better for errors and losses, higher for scores. The
Segformer seed kept the checkpoint with the *highest* MAE; :class:`BestTracker` looks the
direction up instead of assuming "max".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["METRIC_DIRECTIONS", "BestTracker", "is_better", "metric_direction"]

#: base metric name -> "max" | "min"
METRIC_DIRECTIONS: Mapping[str, str] = {
    # scores: higher is better
    "accuracy": "max",
    "balanced_accuracy": "max",
    "precision": "max",
    "recall": "max",
    "f1": "max",
    "specificity": "max",
    "auroc": "max",
    "dice": "max",
    "iou": "max",
    "r2": "max",
    # errors and losses: lower is better
    "loss": "min",
    "mae": "min",
    "rmse": "min",
    "mae_mm": "min",
    "mae_px": "min",
    "point_error_mm": "min",
    "point_error_px": "min",
}


def metric_direction(metric: str) -> str:
    """``"max"`` or ``"min"`` for a metric name; unknown names list the known bases.

    Bland–Altman ``bias`` and limits have no direction (a bias of -3 is as bad as +3).
    """
    base = metric.split("/", 1)[0]
    if base.startswith(("val_", "eval_")):
        base = base.split("_", 1)[1]
    try:
        return METRIC_DIRECTIONS[base]
    except KeyError:
        known = ", ".join(sorted(METRIC_DIRECTIONS))
        raise ValueError(
            f"no selection direction for metric {metric!r}; select on one of: {known} "
            f"(optionally with a '/<qualifier>'), or pass direction='max'|'min' explicitly"
        ) from None


def is_better(value: float, best: float | None, direction: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta``. NaN never improves."""
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best + min_delta if direction == "max" else value < best - min_delta


class BestTracker:
    """Keeps the best value of one metric over evaluations (and the step and payload it came with).

    >>> tracker = BestTracker("mae")          # direction looked up: "min"
    >>> tracker.update({"mae": 5.0}, step=1), tracker.update({"mae": 7.0}, step=2)
    (True, False)
    >>> tracker.best, tracker.best_step
    (5.0, 1)
    """

    def __init__(self, metric: str, direction: str | None = None, min_delta: float = 0.0) -> None:
        self.metric = metric
        self.direction = metric_direction(metric) if direction is None else direction
        if self.direction not in ("max", "min"):
            raise ValueError(f"direction must be 'max' or 'min', got {self.direction!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_payload: Any = None

    def update(self, metrics: Mapping[str, float] | float, step: int | None = None, payload: Any = None) -> bool:
        """Offer one evaluation; return True (and keep it) if it is the new best.

        ``metrics`` is a metrics dict holding ``self.metric`` or the value itself; ``payload``
        (e.g. a checkpoint path or a state dict copy) is kept alongside the best value.
        """
        if isinstance(metrics, Mapping):
            if self.metric not in metrics:
                raise KeyError(
                    f"metric {self.metric!r} not in the evaluation results; got {sorted(metrics)}"
                )
            value = metrics[self.metric]
        else:
            value = metrics
        value = float(value)
        if not is_better(value, self.best, self.direction, self.min_delta):
            return False
        self.best, self.best_step, self.best_payload = value, step, payload
        return True

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (without the payload) for a run checkpoint."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_step": self.best_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the metric and direction must match."""
        if state["metric"] != self.metric or state["direction"] != self.direction:
            raise ValueError(
                f"checkpointed tracker follows {state['metric']!r} ({state['direction']}), "
                f"this one {self.metric!r} ({self.direction}); build the tracker with the same metric"
            )
        self.min_delta = float(state["min_delta"])
        self.best = state["best"]
        self.best_step = state["best_step"]
