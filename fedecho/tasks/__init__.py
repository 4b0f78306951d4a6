"""Supervised tasks: per task a head factory, a per-sample loss and whole-set metrics.

>>> from fedecho.config.task import TaskConfig
>>> task = build_task(TaskConfig(name="view", classes=("A4C", "A2C")))
>>> task.num_classes, task.primary_metric
(2, 'balanced_accuracy')

Registered tasks (:data:`TASKS`): ``view``, ``as_severity``, ``as_present``, ``lvh_present``
(classification; all but ``view`` on images or clips, per the backbone);
``lv_seg`` (segmentation); ``ef``, ``volumes``, ``age`` (regression); ``lvh`` (caliper landmarks).
"""

from fedecho.config.task import TaskConfig
from fedecho.registry import Registry
from fedecho.tasks.base import Task
from fedecho.tasks.classification import ASPresentTask, ASSeverityTask, ClassificationTask, ViewTask
from fedecho.tasks.dataset import TaskDataset, collate_examples, concat_batches, is_empty_batch
from fedecho.tasks.lvh import LVH_MEASUREMENTS, LVHTask
from fedecho.tasks.lvh_present import LVH_WALL_THRESHOLD_CM, LVHPresentTask
from fedecho.tasks.regression import AgeTask, EFTask, RegressionTask, VolumesTask
from fedecho.tasks.segmentation import LVSegmentationTask
from fedecho.tasks.selection import METRIC_DIRECTIONS, BestTracker, is_better, metric_direction

__all__ = [
    "LVH_MEASUREMENTS",
    "LVH_WALL_THRESHOLD_CM",
    "METRIC_DIRECTIONS",
    "TASKS",
    "ASPresentTask",
    "ASSeverityTask",
    "AgeTask",
    "BestTracker",
    "ClassificationTask",
    "EFTask",
    "LVHPresentTask",
    "LVHTask",
    "LVSegmentationTask",
    "RegressionTask",
    "Task",
    "TaskDataset",
    "ViewTask",
    "VolumesTask",
    "build_task",
    "collate_examples",
    "concat_batches",
    "is_better",
    "is_empty_batch",
    "metric_direction",
]

#: task name -> Task class (loud: duplicate names and unknown names raise, listing the valid ones)
TASKS: Registry[type[Task]] = Registry("task")
for _task in (
    ViewTask,
    ASSeverityTask,
    ASPresentTask,
    LVSegmentationTask,
    EFTask,
    VolumesTask,
    AgeTask,
    LVHTask,
    LVHPresentTask,
):
    TASKS.add(_task.name, _task)
del _task


def build_task(cfg: TaskConfig) -> Task:
    """The task named ``cfg.name``, configured by ``cfg``; an unknown name lists the valid ones."""
    return TASKS.get(cfg.name)(cfg)
