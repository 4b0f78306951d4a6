"""Federation configuration: the coordinator's strategy, the phases of a run, and privacy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["FederationConfig", "PhaseConfig", "PrivacyConfig", "StrategyConfig", "MEAN_STRATEGIES",
           "STRATEGY_NAMES", "WEIGHTING_MODES"]

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "fedmedian", "fedtrimmedavg", "krum")
#: Strategies whose aggregate is a (weighted) mean of the updates, optionally followed by a server
#: optimiser step: the only ones whose sensitivity to one site site-level DP noise is calibrated for.
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm")
#: federation.weighting: auto = examples, or uniform where the aggregation requires it (site-level DP).
WEIGHTING_MODES = ("auto", "examples", "uniform")


@dataclass
class StrategyConfig:
    """How the coordinator aggregates (Flower's strategies, wrapped)."""

    name: str = "fedavg"
    """fedavg | fedprox | fedadam | fedyogi | fedavgm | fedmedian | fedtrimmedavg | krum"""
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_sites: int = 2
    """Sites that must be connected to start a round and must return a valid update to finish it."""
    proximal_mu: float = 0.01
    """FedProx μ; sent to sites, which add μ/2‖w − w_global‖² to their loss."""
    server_lr: float = 1e-2
    """FedAdam/FedYogi η (server learning rate); FedAvgM server learning rate is server_momentum's lr."""
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    server_momentum: float = 0.9
    trim_beta: float = 0.2
    """FedTrimmedAvg: fraction cut from each end."""
    num_malicious: int = 0
    """Krum: assumed number of Byzantine sites."""
    local_norms: bool = False
    """FedBN (Li et al. 2021): normalisation layers stay on each site, never aggregated."""
    max_update_norm: float | None = None
    """Reject a site's update whose L2 distance from the global weights exceeds this."""
    round_timeout: float = 3600.0
    """Seconds to wait for replies; sites that do not answer in time are left out of the round."""

    def __post_init__(self) -> None:
        if self.name not in STRATEGY_NAMES:
            raise ValueError(f"strategy.name {self.name!r} is unknown; valid: {', '.join(STRATEGY_NAMES)}")
        if self.min_sites < 1:
            raise ValueError(f"strategy.min_sites must be >= 1, got {self.min_sites}")
        if not 0 < self.fraction_train <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise ValueError("strategy.fraction_train must be in (0, 1] and fraction_evaluate in [0, 1]")
        if self.name == "fedprox" and self.proximal_mu <= 0:
            raise ValueError("strategy.name=fedprox needs strategy.proximal_mu > 0 (e.g. 0.01)")
        if self.name == "fedtrimmedavg" and not 0 <= self.trim_beta < 0.5:
            raise ValueError(f"strategy.trim_beta must be in [0, 0.5), got {self.trim_beta}")
        if self.max_update_norm is not None and self.max_update_norm <= 0:
            raise ValueError("strategy.max_update_norm must be > 0 or null")


@dataclass
class PrivacyConfig:
    """Differential privacy. ``sample``: DP-SGD (opacus) on each site, per-sample clipping and noise,
    one accountant per site for the whole run. ``site``: clipping + noise of whole site updates at
    the coordinator (Flower's DP strategy wrapper) — the option for contrastive losses."""

    mode: str = "none"
    """none | sample | site"""
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    """sample: per-sample gradient clipping norm. site: per-site update clipping norm."""
    target_epsilon: float | None = None
    """sample: a site stops training once its epsilon would exceed this."""
    delta: float = 1e-5
    unit: str = "patient"
    """sample: what epsilon protects: a patient (all their examples at the site) or one example."""

    def __post_init__(self) -> None:
        if self.unit not in ("patient", "example"):
            raise ValueError(f"privacy.unit {self.unit!r} is unknown; valid: patient, example")
        if self.mode not in ("none", "sample", "site"):
            raise ValueError(f"privacy.mode {self.mode!r} is unknown; valid: none, sample, site")
        if self.mode != "none" and (self.noise_multiplier < 0 or self.max_grad_norm <= 0):
            raise ValueError("privacy.noise_multiplier must be >= 0 and privacy.max_grad_norm > 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta must be in (0, 1), got {self.delta}")


@dataclass
class PhaseConfig:
    """One phase: its rounds and local work per round."""

    rounds: int = 2
    local_epochs: int = 1
    local_steps: int = 0
    """> 0: a fixed number of optimiser steps per round instead of whole epochs."""
    lr: float | None = None
    """None: train.lr."""

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.local_epochs < 1 or self.local_steps < 0:
            raise ValueError("phase rounds must be >= 0, local_epochs >= 1, local_steps >= 0")


@dataclass
class FederationConfig:
    """A run = optional pretraining, then one adapter phase per task, then evaluation."""

    pretrain: PhaseConfig = field(default_factory=lambda: PhaseConfig(rounds=0))
    adapt: PhaseConfig = field(default_factory=PhaseConfig)
    tasks: tuple[str, ...] = ("view",)
    """Tasks of the adapt phases, each trained and aggregated on its own (never mixed)."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    lora_aggregation: str = "fedavg"
    """encoder=lora: fedavg (A, B averaged apart) | ffa (A frozen, B federated: exact) | fedsa (A
    federated, B kept per site); see fedecho.adapters.lora."""
    num_sites: int = 3
    """Simulation: virtual sites made by data.partition."""
    run_dir: str = "runs/federated"
    central_eval: bool = True
    """Simulation: the coordinator also evaluates the global model on the pooled test split."""
    weighting: str = "auto"
    """How sites' updates are weighted: auto | examples | uniform. auto = by num-examples, or uniform
    where the aggregation requires it (privacy.mode=site). See fedecho.federation.weights."""
    max_weight_ratio: float | None = 10.0
    """examples weighting: a site's weight is clipped to this x the round's median weight (so one site
    lying about its num-examples cannot take over the model); null: unbounded."""

    def __post_init__(self) -> None:
        for name in ("pretrain", "adapt"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, PhaseConfig(**value))
        if isinstance(self.strategy, dict):
            self.strategy = StrategyConfig(**self.strategy)
        if isinstance(self.privacy, dict):
            self.privacy = PrivacyConfig(**self.privacy)
        self.tasks = tuple(self.tasks)
        if self.adapt.rounds > 0 and not self.tasks:
            raise ValueError("federation.adapt.rounds > 0 needs federation.tasks (e.g. [view, lv_seg])")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"federation.tasks lists a task twice: {list(self.tasks)}")
        if self.weighting not in WEIGHTING_MODES:
            raise ValueError(f"federation.weighting {self.weighting!r} is unknown; valid: {', '.join(WEIGHTING_MODES)}")
        if self.max_weight_ratio is not None and not (math.isfinite(self.max_weight_ratio)
                                                      and self.max_weight_ratio >= 1):
            raise ValueError(f"federation.max_weight_ratio must be >= 1 (or null for unbounded), "
                             f"got {self.max_weight_ratio}")
        if self.privacy.mode == "site":
            if self.weighting == "examples":
                raise ValueError("federation.weighting=examples cannot be used with federation.privacy.mode=site: "
                                 "site-level DP calibrates its noise for a uniform mean; set "
                                 "federation.weighting=auto or uniform")
            if self.strategy.name not in MEAN_STRATEGIES:
                raise ValueError(f"federation.privacy.mode=site needs a strategy that averages updates "
                                 f"({', '.join(MEAN_STRATEGIES)}); {self.strategy.name} has a different "
                                 f"sensitivity to one site: set federation.strategy.name=fedavg")
            if self.strategy.max_update_norm is not None:
                raise ValueError("federation.strategy.max_update_norm rejects updates by their norm, a choice of "
                                 "participants that depends on the sites' data; with federation.privacy.mode=site "
                                 "updates are clipped to federation.privacy.max_grad_norm instead: set "
                                 "federation.strategy.max_update_norm=null")
        if self.strategy.min_sites > self.num_sites:
            raise ValueError(
                f"strategy.min_sites={self.strategy.min_sites} exceeds federation.num_sites={self.num_sites}; "
                f"lower min_sites or add sites"
            )
