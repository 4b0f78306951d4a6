"""Flower's own strategies, built from a :class:`StrategyConfig` (never copied), plus the list of
their attributes that make up server-side state (so a resumed run continues FedAdam's moments)."""

from __future__ import annotations

import copy
from typing import Any

from flwr.serverapp import strategy as fl

from fedecho.config.federation import MEAN_STRATEGIES, PrivacyConfig, StrategyConfig
from fedecho.federation.contract import ARRAYS, CONFIG, MetricKey
from fedecho.federation.site_dp import SiteLevelDP

__all__ = ["STATE_ATTRIBUTES", "build_strategy", "load_strategy_state", "strategy_state"]

#: Attributes of Flower strategies that carry state from round to round.
STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")


def build_strategy(cfg: StrategyConfig, privacy: PrivacyConfig | None = None, *, num_sites: int) -> fl.Strategy:
    """The configured Flower strategy; wrapped in :class:`~fedecho.federation.site_dp.SiteLevelDP` for
    site-level DP (uniform weights, zero-norm safe, noise calibrated to the updates aggregated)."""
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_sites,
        "min_evaluate_nodes": min(cfg.min_sites, num_sites) if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_sites,
        "weighted_by_key": MetricKey.NUM_EXAMPLES,
        "arrayrecord_key": ARRAYS,
        "configrecord_key": CONFIG,
    }
    name = cfg.name
    if name == "fedavg":
        strategy: fl.Strategy = fl.FedAvg(**common)
    elif name == "fedprox":
        strategy = fl.FedProx(**common, proximal_mu=cfg.proximal_mu)
    elif name in ("fedadam", "fedyogi"):
        cls = fl.FedAdam if name == "fedadam" else fl.FedYogi
        strategy = cls(**common, eta=cfg.server_lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, tau=cfg.tau)
    elif name == "fedavgm":
        strategy = fl.FedAvgM(**common, server_learning_rate=1.0, server_momentum=cfg.server_momentum)
    elif name == "fedmedian":
        strategy = fl.FedMedian(**common)
    elif name == "fedtrimmedavg":
        strategy = fl.FedTrimmedAvg(**common, beta=cfg.trim_beta)
    elif name == "krum":
        strategy = fl.Krum(**common, num_malicious_nodes=cfg.num_malicious)
    else:  # StrategyConfig validates names; this guards a new name added there but not here
        raise ValueError(f"strategy {name!r} has no builder")
    if privacy is not None and privacy.mode == "site":
        if name not in MEAN_STRATEGIES:  # FederationConfig refuses this too; guard direct callers
            raise ValueError(f"privacy.mode=site needs an averaging strategy ({', '.join(MEAN_STRATEGIES)}), "
                             f"not {name}")
        strategy = SiteLevelDP(strategy, noise_multiplier=privacy.noise_multiplier,
                               clipping_norm=privacy.max_grad_norm)
    return strategy


def _stateful(strategy: fl.Strategy) -> list[Any]:
    chain = [strategy]
    inner = getattr(strategy, "strategy", None)
    if inner is not None:
        chain.append(inner)
    return chain


def strategy_state(strategy: fl.Strategy) -> list[dict[str, Any]]:
    """Deep copies of the stateful attributes of the strategy (and of a wrapped one)."""
    return [
        {k: copy.deepcopy(getattr(s, k)) for k in STATE_ATTRIBUTES if hasattr(s, k)} for s in _stateful(strategy)
    ]


def load_strategy_state(strategy: fl.Strategy, state: list[dict[str, Any]]) -> None:
    for target, values in zip(_stateful(strategy), state, strict=True):
        for key, value in values.items():
            setattr(target, key, value)
