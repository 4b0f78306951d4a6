"""Flower's own strategies, built from a :class:`StrategyConfig` (never copied), plus the list of
their attributes that make up server-side state (so a resumed run continues FedAdam's moments)."""

from __future__ import annotations

import copy
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import strategy as fl

from fedecho.config.federation import MEAN_STRATEGIES, PrivacyConfig, StrategyConfig
from fedecho.federation.contract import ARRAYS, CONFIG, MetricKey
from fedecho.federation.site_dp import SiteLevelDP

__all__ = ["NORM_STATISTICS", "STATE_ATTRIBUTES", "build_strategy", "is_norm_statistic", "load_strategy_state",
           "strategy_state"]

#: Attributes of Flower strategies that carry state from round to round.
STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")

#: Name endings of normalisation statistics (BatchNorm / InstanceNorm running mean and variance).
NORM_STATISTICS = (".running_mean", ".running_var")


def is_norm_statistic(name: str) -> bool:
    return name.endswith(NORM_STATISTICS) or name in ("running_mean", "running_var")


class _StatisticsAveraged:
    """Mixin for server optimisers (FedAdam, FedYogi, FedAvgM): they step the *weights* along the
    pseudo-gradient, but normalisation statistics are not gradients: a running variance moved by at
    most ``eta`` per round (Adam's normalised step) stays near its initial 1 for a whole run and the
    global model's BatchNorm layers then normalise with the wrong statistics (measured: a width-8
    U-Net on CAMUS, FedAdam eta 0.01, test LV Dice 0.41 vs FedAvg 0.92). The statistics take the
    plain weighted mean of the sites' values (what FedAvg gives them); every other array is the
    optimiser's. Under site-level DP the replies this sees are already the privatised ones."""

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[Any, Any]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None or not any(is_norm_statistic(k) for k in arrays):
            return arrays, metrics
        mean, _ = fl.FedAvg.aggregate_train(self, server_round, replies)  # type: ignore[arg-type]
        arrays = ArrayRecord({k: (mean[k] if is_norm_statistic(k) else v) for k, v in arrays.items()})
        if isinstance(getattr(self, "current_arrays", None), ArrayRecord):  # FedAvgM's next pseudo-gradient
            self.current_arrays = arrays
        return arrays, metrics


class FedAdam(_StatisticsAveraged, fl.FedAdam):
    """Flower's FedAdam; normalisation statistics averaged (see :class:`_StatisticsAveraged`)."""


class FedYogi(_StatisticsAveraged, fl.FedYogi):
    """Flower's FedYogi; normalisation statistics averaged (see :class:`_StatisticsAveraged`)."""


class FedAvgM(_StatisticsAveraged, fl.FedAvgM):
    """Flower's FedAvgM; normalisation statistics averaged (see :class:`_StatisticsAveraged`)."""


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
        cls = FedAdam if name == "fedadam" else FedYogi
        strategy = cls(**common, eta=cfg.server_lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, tau=cfg.tau)
    elif name == "fedavgm":
        strategy = FedAvgM(**common, server_learning_rate=1.0, server_momentum=cfg.server_momentum)
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
