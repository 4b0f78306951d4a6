"""One privacy accountant per site for the whole run (RDP, Mironov 2017; subsampled Gaussian,
Mironov et al. 2019), its state persisted so that ε composes over rounds and restarts."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from opacus.accountants import RDPAccountant

__all__ = ["SiteAccountant"]


class SiteAccountant:
    """Wraps opacus' RDP accountant with persistence and budget look-ahead.

    ``history`` is opacus' list of ``(noise_multiplier, sample_rate, steps)``; the state dict is
    plain Python and can be saved with the site's checkpoint.
    """

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self.accountant = RDPAccountant()
        if state:
            self.accountant.history = [tuple(entry) for entry in state["history"]]

    @property
    def steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before any private step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=delta))

    def epsilon_after(self, delta: float, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε that would be spent after ``steps`` more steps at this noise and sampling rate."""
        ahead = RDPAccountant()
        ahead.history = copy.deepcopy(self.accountant.history)
        ahead.history.append((noise_multiplier, sample_rate, steps))
        return float(ahead.get_epsilon(delta=delta))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(entry) for entry in self.accountant.history]}
