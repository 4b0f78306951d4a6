"""Reproduction experiments (``simulations/``): each published single-site result run pooled and
federated by ``fedecho simulate EXPERIMENT``, with one result row per federated arm."""

from fedecho.experiments.results import ArmResult, collect_arm, summary_table, write_results
from fedecho.experiments.runner import POOLED, arm_overrides, run_experiment
from fedecho.experiments.spec import Experiment, Published, list_experiments, load_experiment, simulations_dir

__all__ = [
    "POOLED", "ArmResult", "Experiment", "Published", "arm_overrides", "collect_arm", "list_experiments",
    "load_experiment", "run_experiment", "simulations_dir", "summary_table", "write_results",
]
