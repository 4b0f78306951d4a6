"""Evaluation metrics: classification, segmentation, regression and Bland–Altman agreement."""

from fedecho.tasks.metrics.agreement import BlandAltman, bland_altman
from fedecho.tasks.metrics.classification import (
    accuracy,
    auroc,
    auroc_per_class,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    f1_macro,
    precision_macro,
    recall_macro,
    specificity,
    specificity_macro,
)
from fedecho.tasks.metrics.regression import mae, r2, regression_metrics, rmse
from fedecho.tasks.metrics.segmentation import dice_per_label, iou_per_label, segmentation_metrics

__all__ = [
    "BlandAltman",
    "accuracy",
    "auroc",
    "auroc_per_class",
    "balanced_accuracy",
    "bland_altman",
    "classification_metrics",
    "confusion_matrix",
    "dice_per_label",
    "f1_macro",
    "iou_per_label",
    "mae",
    "precision_macro",
    "r2",
    "recall_macro",
    "regression_metrics",
    "rmse",
    "segmentation_metrics",
    "specificity",
    "specificity_macro",
]
