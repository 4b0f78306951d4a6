"""The message contract between the ServerApp and the ClientApp: record keys, config and metric
keys, and the declaration of the tensors a phase lets travel.

Both apps import these constants; nothing else names a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "ConfigKey",
    "Declaration",
    "MetricKey",
    "TensorSpec",
    "declare",
]

#: RecordDict keys of a message's content.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"


class ConfigKey:
    """Keys of the ``config`` record sent with every instruction."""

    PHASE = "phase"                # "pretrain" | "adapt" | "evaluate"
    PHASE_NAME = "phase-name"      # unique name, e.g. "adapt:lv_seg"
    TASK = "task"                  # task name in adapt/evaluate phases, "" in pretrain
    ROUND = "server-round"         # absolute round within the phase (Flower sets it too)
    NUM_ROUNDS = "num-rounds"      # rounds in this phase (for the site's LR schedule)
    LOCAL_EPOCHS = "local-epochs"
    LOCAL_STEPS = "local-steps"    # 0 = whole local epochs
    LR = "lr"
    PROXIMAL_MU = "proximal-mu"    # FedProx: the client adds mu/2 ||w - w_global||^2
    SEED = "seed"
    SETUP = "setup"                # 1 on the message that hands sites the frozen encoder
    SPLIT = "split"                # evaluate: which split the site evaluates on ("val" | "test")


class MetricKey:
    """Keys of the ``metrics`` record a site returns (scalars only)."""

    NUM_EXAMPLES = "num-examples"  # Flower's weighting key
    SITE_INDEX = "site-index"      # the site's index (names it in logs and the report)
    LOSS = "train-loss"
    EVAL_LOSS = "eval-loss"
    SECONDS = "seconds"
    CPU_SECONDS = "cpu-seconds"    # CPU time of the site's process for this round (all threads)
    SKIPPED = "skipped-items"      # unreadable items left out under the skip policy
    EPSILON = "epsilon"            # DP-SGD epsilon spent so far, in privacy.unit (patient by default)
    EPSILON_EXAMPLE = "epsilon-example"  # the same budget counted per example (always reported)
    DELTA = "delta"
    BUDGET_SPENT = "budget-spent"  # 1 when the site's (epsilon, delta) budget stopped its training


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one declared tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


Declaration = Mapping[str, TensorSpec]


def declare(arrays: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """The declaration of a phase, from the (numpy) tensors it sends."""
    return {name: TensorSpec(name, tuple(int(s) for s in a.shape), str(a.dtype)) for name, a in arrays.items()}
