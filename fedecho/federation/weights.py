"""How much each site's update counts in an aggregate, when sites may lie about their size.

A site reports ``num-examples`` with its update, and FedAvg-style strategies weight by it: one site
that reports 1e9 would otherwise *be* the global model, whatever bound its update's norm respects,
and ``inf``/``NaN`` would turn the aggregate into NaN. So:

1. ``num-examples`` must be a positive integer of at most 2**53 (an integral float such as ``120.0``
   is accepted, as sites send floats); anything else rejects that site's reply (:func:`parse_num_examples`).
2. Weighting is ``examples`` (by the reported count) or ``uniform`` (every site counts once).
   ``auto`` means ``examples``, or ``uniform`` where the aggregation requires it: site-level DP
   calibrates its noise for a uniform mean (fedecho.federation.site_dp).
3. Under ``examples``, a site's weight is clipped to ``max_weight_ratio`` × the round's median
   weight (:func:`bound_weights`). The median is used because a few liars cannot carry it: with
   ``n`` sites, fewer than ``n / 2`` liars leave it within the range of the honest counts (the
   lower median is taken, so with two sites the smaller one sets the bound), and a liar counts at
   most ``k`` times as much as the median site. The limit: a lying *majority* sets the median itself, and a site that
   truthfully holds more than ``k`` × the median's data is clipped too (raise the ratio, or use
   ``uniform``). Every clipped weight is logged per site with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedecho.config.federation import WEIGHTING_MODES, FederationConfig

__all__ = ["WEIGHTING_MODES", "WeightDecision", "WeightPolicy", "bound_weights", "parse_num_examples"]

#: The largest count a float holds exactly; a larger claim is no count of examples.
_MAX_COUNT = 2**53


def parse_num_examples(value: object) -> int:
    """A site's reported ``num-examples`` as a positive int; ValueError saying what is wrong otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"num-examples is a {type(value).__name__}, not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"num-examples is {value} (not finite)")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"num-examples is {value:g}, not a whole number of examples")
    if value <= 0:
        raise ValueError(f"num-examples is {value:g} (the site must have trained on at least one example)")
    if value > _MAX_COUNT:
        raise ValueError(f"num-examples is {value:g}, beyond 2**53 (no exact count; sums of such weights overflow)")
    return int(value)


@dataclass(frozen=True)
class WeightPolicy:
    """The weighting of one aggregation: ``mode`` is ``examples`` or ``uniform`` (``auto`` resolved)."""

    mode: str = "examples"
    max_weight_ratio: float | None = 10.0
    """examples: a site's weight is at most this × the round's (lower) median weight; None: unbounded."""

    def __post_init__(self) -> None:
        if self.mode not in ("examples", "uniform"):
            raise ValueError(f"weighting mode {self.mode!r} is unknown; valid: examples, uniform")
        if self.max_weight_ratio is not None and not (math.isfinite(self.max_weight_ratio)
                                                      and self.max_weight_ratio >= 1):
            raise ValueError(f"federation.max_weight_ratio must be >= 1 (or null), got {self.max_weight_ratio}")

    @classmethod
    def resolve(cls, weighting: str, max_weight_ratio: float | None, *, site_dp: bool) -> WeightPolicy:
        """``federation.weighting`` (auto | examples | uniform) for a run with or without site-level DP."""
        if weighting not in WEIGHTING_MODES:
            raise ValueError(f"federation.weighting {weighting!r} is unknown; valid: {', '.join(WEIGHTING_MODES)}")
        if site_dp and weighting == "examples":
            raise ValueError("federation.weighting=examples cannot be used with federation.privacy.mode=site: "
                             "site-level DP calibrates its noise for a uniform mean; set federation.weighting=auto "
                             "or uniform")
        mode = "uniform" if weighting == "uniform" or (weighting == "auto" and site_dp) else "examples"
        return cls(mode=mode, max_weight_ratio=max_weight_ratio)

    @classmethod
    def from_config(cls, cfg: FederationConfig) -> WeightPolicy:
        """The policy of a run's ``federation`` config."""
        return cls.resolve(cfg.weighting, cfg.max_weight_ratio, site_dp=cfg.privacy.mode == "site")


@dataclass
class WeightDecision:
    """The weights a round aggregates with, and why any differs from what its site reported."""

    weights: dict[str, float]
    clipped: dict[str, str]


def bound_weights(num_examples: Mapping[str, int], policy: WeightPolicy) -> WeightDecision:
    """Aggregation weight of each site (keyed like ``num_examples``) under ``policy``."""
    if policy.mode == "uniform":
        return WeightDecision({site: 1.0 for site in num_examples}, {})
    weights = {site: float(n) for site, n in num_examples.items()}
    if policy.max_weight_ratio is None or not weights:
        return WeightDecision(weights, {})
    ordered = sorted(weights.values())
    median = ordered[(len(ordered) - 1) // 2]  # the lower median: with two sites, the smaller one
    cap = policy.max_weight_ratio * median
    clipped: dict[str, str] = {}
    for site, weight in weights.items():
        if weight > cap:
            clipped[site] = (f"num-examples {weight:.6g} clipped to {cap:.6g} ({policy.max_weight_ratio:g} x the "
                             f"round's median {median:.6g}; federation.max_weight_ratio)")
            weights[site] = cap
    return WeightDecision(weights, clipped)
