"""One privacy accountant per site for the whole run (RDP, Mironov 2017; subsampled Gaussian,
Mironov et al. 2019), its state persisted so that ε composes over rounds, phases and restarts.

It counts two units. *Example*: opacus' accountant over (σ, q) for every step. *Patient*
(user-level DP, McMahan et al. 2018): with ``privacy.unit=patient`` the site samples whole patients
(each with probability q, all of their examples at once; :func:`fedecho.privacy.dpsgd.poisson_loader`)
and clips every example to C, so one patient with at most k examples moves a step's gradient sum
by at most k·C while the noise is σ·C: the patient-level mechanism is the subsampled Gaussian with
noise multiplier σ/k at rate q, and the patient ledger records exactly that for every step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from opacus.accountants import RDPAccountant

__all__ = ["SiteAccountant"]


def _restore(history: Any) -> list[tuple]:
    return [tuple(entry) for entry in history or []]


class SiteAccountant:
    """opacus' RDP accountant per example (``accountant``) and a second one per patient
    (``patients``), with persistence and budget look-ahead. Their histories are opacus' lists of
    ``(noise_multiplier, sample_rate, steps)``; the state dict is plain Python and goes into the
    site's per-round snapshot."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self.accountant = RDPAccountant()
        self.patients = RDPAccountant()
        if state:
            self.accountant.history = _restore(state.get("history"))
            self.patients.history = _restore(state.get("patient_history"))

    @property
    def steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def patient_step(self, *, noise_multiplier: float, sample_rate: float, group_size: int) -> None:
        """Record one step for patients of at most ``group_size`` examples."""
        self.patients.step(noise_multiplier=noise_multiplier / group_size, sample_rate=sample_rate)

    def epsilon(self, delta: float, unit: str = "example") -> float:
        """ε spent so far at ``delta`` per ``unit`` (0 before any private step)."""
        ledger = self.patients if unit == "patient" else self.accountant
        if not ledger.history:
            return 0.0
        return float(ledger.get_epsilon(delta=delta))

    def epsilon_after(self, delta: float, *, noise_multiplier: float, sample_rate: float, steps: int,
                      unit: str = "example", group_size: int = 1) -> float:
        """ε per ``unit`` that would be spent after ``steps`` more steps at this noise and rate."""
        ahead = RDPAccountant()
        if unit == "patient":
            ahead.history = copy.deepcopy(self.patients.history)
            noise_multiplier = noise_multiplier / group_size
        else:
            ahead.history = copy.deepcopy(self.accountant.history)
        ahead.history.append((noise_multiplier, sample_rate, steps))
        return float(ahead.get_epsilon(delta=delta))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(entry) for entry in self.accountant.history],
                "patient_history": [list(entry) for entry in self.patients.history]}
