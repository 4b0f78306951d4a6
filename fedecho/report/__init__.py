"""Reporting: TensorBoard scalars (and, later, plots and run reports)."""

from fedecho.report.tensorboard import ScalarWriter, read_scalars

__all__ = ["ScalarWriter", "read_scalars"]
