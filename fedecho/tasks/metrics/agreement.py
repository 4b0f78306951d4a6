"""Bland–Altman agreement between a method and a reference (Bland & Altman, Lancet 1986).

``bias`` is the mean of the differences ``pred - reference``; the 95 % limits of agreement are
``bias ± 1.96 · sd`` with ``sd`` the sample standard deviation (ddof = 1) of the differences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedecho.tasks.metrics._arrays import to_numpy

__all__ = ["BlandAltman", "bland_altman"]

_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class BlandAltman:
    """Agreement statistics; ``sd`` and the limits are NaN for fewer than two pairs."""

    bias: float
    sd: float
    loa_low: float
    loa_high: float
    n: int

    def as_metrics(self, suffix: str = "") -> dict[str, float]:
        """``bias``, ``loa_low``, ``loa_high`` (each + ``suffix``) for a metrics dict."""
        values = asdict(self)
        return {f"{key}{suffix}": float(values[key]) for key in ("bias", "loa_low", "loa_high")}


def bland_altman(pred: Any, reference: Any) -> BlandAltman:
    """Bias and 95 % limits of agreement of ``pred`` against ``reference`` (both (N,))."""
    p = to_numpy(pred, dtype=np.float64).reshape(-1)
    r = to_numpy(reference, dtype=np.float64).reshape(-1)
    if p.shape != r.shape:
        raise ValueError(f"bland_altman: {p.size} predictions but {r.size} reference values")
    if p.size == 0:
        raise ValueError("bland_altman needs at least one pair")
    diff = p - r
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else float("nan")
    return BlandAltman(bias=bias, sd=sd, loa_low=bias - _Z95 * sd, loa_high=bias + _Z95 * sd, n=int(diff.size))
