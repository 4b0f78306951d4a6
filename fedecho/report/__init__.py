"""Reporting: TensorBoard scalars, prediction files, plots and the Markdown run report.

>>> from fedecho.report import write_report
>>> write_report("runs/demo")  # doctest: +SKIP
PosixPath('runs/demo/report/report.md')

Names are imported on first use (PEP 562): ``from fedecho.report import ScalarWriter`` (used while
training) does not pull in matplotlib, scikit-learn or the federation history, and importing
``fedecho.report.tensorboard`` from the engine cannot form an import cycle through the report.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Predictions",
    "ScalarWriter",
    "bootstrap_ci",
    "clinical_table",
    "fraction_table",
    "load_history",
    "load_predictions",
    "load_summary",
    "plot_bland_altman",
    "plot_bytes",
    "plot_clinical",
    "plot_confusion_matrix",
    "plot_epsilon",
    "plot_label_fraction_curves",
    "plot_learning_curves",
    "plot_roc",
    "plot_segmentation_overlays",
    "plot_tsne",
    "predict_clinical",
    "prediction_cis",
    "read_scalars",
    "save_figure",
    "save_predictions",
    "tsne_embedding",
    "write_report",
]

_MODULES = {
    "Predictions": "predictions",
    "ScalarWriter": "tensorboard",
    "bootstrap_ci": "bootstrap",
    "clinical_table": "clinical",
    "fraction_table": "fractions",
    "load_history": "rundir",
    "load_predictions": "predictions",
    "load_summary": "rundir",
    "plot_bland_altman": "plots",
    "plot_bytes": "curves",
    "plot_clinical": "clinical",
    "plot_confusion_matrix": "plots",
    "plot_epsilon": "curves",
    "plot_label_fraction_curves": "fractions",
    "plot_learning_curves": "curves",
    "plot_roc": "plots",
    "plot_segmentation_overlays": "plots",
    "plot_tsne": "embedding",
    "predict_clinical": "clinical",
    "prediction_cis": "bootstrap",
    "read_scalars": "tensorboard",
    "save_figure": "figure",
    "save_predictions": "predictions",
    "tsne_embedding": "embedding",
    "write_report": "markdown",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'fedecho.report' has no attribute {name!r}; public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(f"fedecho.report.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
