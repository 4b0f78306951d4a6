"""Model selection directions and the best-checkpoint tracker."""

from __future__ import annotations

import pytest

from fedecho.config.task import TaskConfig
from fedecho.tasks import TASKS, build_task
from fedecho.tasks.selection import BestTracker, is_better, metric_direction


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("mae", "min"),
        ("rmse", "min"),
        ("loss", "min"),
        ("mae/edv", "min"),
        ("mae_mm/IVSd", "min"),
        ("val_mae", "min"),
        ("dice", "max"),
        ("dice/lv_cavity", "max"),
        ("auroc", "max"),
        ("balanced_accuracy", "max"),
        ("r2", "max"),
    ],
)
def test_metric_directions(metric, direction):
    assert metric_direction(metric) == direction


def test_metric_without_direction_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no selection direction for metric 'bias'.*mae"):
        metric_direction("bias")


def test_tracker_keeps_the_lowest_mae():
    """The Segformer seed kept the checkpoint with the highest MAE; the tracker must keep the lowest."""
    tracker = BestTracker("mae")
    improved = [tracker.update({"mae": v, "dice": 0.5}, step=i) for i, v in enumerate([5.0, 3.0, 4.0, 2.5, 6.0])]
    assert improved == [True, True, False, True, False]
    assert tracker.best == 2.5 and tracker.best_step == 3


def test_tracker_keeps_the_highest_dice_and_its_payload():
    tracker = BestTracker("dice/lv_cavity")
    for step, value in enumerate([0.6, 0.9, 0.8]):
        tracker.update({"dice/lv_cavity": value}, step=step, payload=f"ckpt{step}.pt")
    assert (tracker.best, tracker.best_step, tracker.best_payload) == (0.9, 1, "ckpt1.pt")


def test_tracker_ignores_nan_and_respects_min_delta():
    tracker = BestTracker("mae", min_delta=0.5)
    assert tracker.update(float("nan")) is False and tracker.best is None
    assert tracker.update(4.0) is True
    assert tracker.update(3.7) is False  # not better by more than 0.5
    assert tracker.update(3.4) is True
    assert is_better(1.0, None, "max") and not is_better(float("nan"), 1.0, "max")


def test_tracker_explicit_direction_and_errors():
    tracker = BestTracker("bias_abs", direction="min")
    assert tracker.update(1.0) and tracker.update(0.5) and not tracker.update(0.7)
    with pytest.raises(KeyError, match="'mae' not in the evaluation results"):
        BestTracker("mae").update({"dice": 0.3})
    with pytest.raises(ValueError, match="'max' or 'min'"):
        BestTracker("mae", direction="lowest")


def test_tracker_state_round_trip():
    tracker = BestTracker("rmse")
    tracker.update(3.0, step=2)
    restored = BestTracker("rmse")
    restored.load_state_dict(tracker.state_dict())
    assert (restored.best, restored.best_step) == (3.0, 2)
    assert restored.update(3.5) is False
    with pytest.raises(ValueError, match="same metric"):
        BestTracker("dice").load_state_dict(tracker.state_dict())


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_declares_consistent_directions(name):
    task = build_task(TaskConfig(name=name))
    assert task.primary_metric in task.metric_directions
    for metric, direction in task.metric_directions.items():
        assert direction == metric_direction(metric)
    assert task.metric_directions.get("loss") == "min"
