"""Flower strategies (wrapped by GuardedStrategy) against hand-computed aggregates, and the
validation of replies."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from flwr.serverapp import strategy as fl

from fedecho.config.federation import PrivacyConfig, StrategyConfig
from fedecho.federation.arrays import numpy_dict
from fedecho.federation.contract import declare
from fedecho.federation.guarded import GuardedStrategy, RoundFailedError
from fedecho.federation.strategies import build_strategy, load_strategy_state, strategy_state
from fedecho.federation.validation import check_update, update_norm


@pytest.fixture(autouse=True)
def _run_identity(monkeypatch):
    """Messages are stamped with the run id of the ServerApp process; set one as Flower would."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FixedGrid:
    """The part of Flower's Grid that strategies use to sample nodes: a fixed set of node ids."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def reply(node_id: int, arrays: dict[str, np.ndarray] | None, num_examples: float = 1, **metrics) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id="m",
                        group_id="1", created_at=time.time(), ttl=60, message_type=MessageType.TRAIN)
    if arrays is None:
        return Message(metadata=metadata, error=Error(code=1, reason="site crashed"))
    content = RecordDict({"arrays": ArrayRecord(numpy_ndarrays=None, torch_state_dict=None) if not arrays else
                          ArrayRecord({k: _t(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": num_examples, **metrics})})
    return Message(metadata=metadata, content=content)


def _t(value):
    import torch

    return torch.from_numpy(np.asarray(value, dtype=np.float32))


GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}


def run_round(cfg: StrategyConfig, updates, weights, *, min_sites=1, max_update_norm=None, privacy=None,
              strategy=None, server_round=1, current=GLOBAL):
    strategy = strategy or build_strategy(cfg, privacy, num_sites=len(updates))
    guarded = GuardedStrategy(strategy, phase_name="adapt:view", phase_config={"phase": "adapt", "task": "view"},
                              declaration=declare(GLOBAL), min_sites=min_sites, max_update_norm=max_update_norm)
    grid = FixedGrid(range(1, len(updates) + 1))
    messages = list(guarded.configure_train(server_round, ArrayRecord({k: _t(v) for k, v in current.items()}),
                                            ConfigRecord({"lr": 0.1}), grid))
    replies = [reply(i + 1, u, n) for i, (u, n) in enumerate(zip(updates, weights, strict=True))]
    arrays, metrics = guarded.aggregate_train(server_round, replies)
    return (numpy_dict(arrays) if arrays is not None else None), guarded, messages, strategy


def site(value_w, value_b):
    return {"w": np.full((2, 2), value_w, np.float32), "b": np.full(3, value_b, np.float32)}


UPDATES = [site(1.0, 2.0), site(3.0, -1.0), site(8.0, 0.5)]
WEIGHTS = [1, 1, 2]


def test_fedavg_is_the_num_examples_weighted_mean_and_config_is_sent():
    arrays, guarded, messages, _ = run_round(StrategyConfig(name="fedavg"), UPDATES, WEIGHTS)
    assert np.allclose(arrays["w"], (1 * 1 + 3 * 1 + 8 * 2) / 4)
    assert np.allclose(arrays["b"], (2 - 1 + 0.5 * 2) / 4)
    config = messages[0].content.config_records["config"]
    assert config["phase"] == "adapt" and config["task"] == "view" and config["lr"] == 0.1
    assert config["server-round"] == 1
    # serialized size (payload + per-array header) of the global arrays, once per site
    per_site = ArrayRecord({k: _t(v) for k, v in GLOBAL.items()}).count_bytes()
    assert per_site >= (4 + 3) * 4
    assert guarded.current.bytes_sent == 3 * per_site
    assert guarded.current.bytes_received == 3 * per_site
    assert set(guarded.current.sites_train) == {"node_1", "node_2", "node_3"}


def test_fedprox_sends_mu_and_averages_like_fedavg():
    arrays, _, messages, _ = run_round(StrategyConfig(name="fedprox", proximal_mu=0.3), UPDATES, WEIGHTS)
    assert messages[0].content.config_records["config"]["proximal-mu"] == pytest.approx(0.3)
    assert np.allclose(arrays["w"], 5.0)


def test_fedmedian_and_trimmed_mean():
    arrays, *_ = run_round(StrategyConfig(name="fedmedian"), UPDATES, WEIGHTS)
    assert np.allclose(arrays["w"], 3.0) and np.allclose(arrays["b"], 0.5)
    five = [site(v, v) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    arrays, *_ = run_round(StrategyConfig(name="fedtrimmedavg", trim_beta=0.2), five, [1] * 5)
    assert np.allclose(arrays["w"], 3.0)  # cut 1 and 100, mean of 2, 3, 4


def test_krum_picks_the_update_closest_to_its_neighbours():
    updates = [site(1.0, 1.0), site(1.1, 1.1), site(0.9, 0.9), site(50.0, -50.0)]
    arrays, *_ = run_round(StrategyConfig(name="krum", num_malicious=1), updates, [1] * 4)
    assert np.allclose(arrays["w"], 1.0) and np.allclose(arrays["b"], 1.0)


def test_fedavgm_applies_server_momentum():
    cfg = StrategyConfig(name="fedavgm", server_momentum=0.5)
    strategy = build_strategy(cfg, num_sites=3)
    arrays, *_ = run_round(cfg, UPDATES, WEIGHTS, strategy=strategy)
    # round 1: pseudo-gradient g1 = 0 - 5 = -5, momentum = g1, new = 0 - 1.0 * (-5) = 5
    assert np.allclose(arrays["w"], 5.0)
    arrays2, *_ = run_round(cfg, [site(7.0, 0.0)] * 3, [1] * 3, strategy=strategy, server_round=2,
                            current={"w": arrays["w"], "b": arrays["b"]})
    # round 2: g2 = 5 - 7 = -2, momentum = 0.5 * -5 + -2 = -4.5, new = 5 + 4.5 = 9.5
    assert np.allclose(arrays2["w"], 9.5)


def test_fedadam_matches_the_closed_form_first_step():
    cfg = StrategyConfig(name="fedadam", server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    arrays, *_ = run_round(cfg, UPDATES, WEIGHTS)
    delta = 5.0
    m = 0.1 * delta
    v = 0.01 * delta**2
    eta_norm = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert np.allclose(arrays["w"], eta_norm * m / (np.sqrt(v) + 1e-3), rtol=1e-5)


def test_strategy_state_round_trips_fedadam_moments():
    cfg = StrategyConfig(name="fedadam")
    first = build_strategy(cfg, num_sites=3)
    run_round(cfg, UPDATES, WEIGHTS, strategy=first)
    saved = strategy_state(first)
    assert saved[0]["m_t"] is not None
    second = build_strategy(cfg, num_sites=3)
    load_strategy_state(second, saved)
    a, *_ = run_round(cfg, UPDATES, WEIGHTS, strategy=first, server_round=2)
    b, *_ = run_round(cfg, UPDATES, WEIGHTS, strategy=second, server_round=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_server_optimisers_average_norm_statistics_and_step_the_weights(name):
    """BatchNorm running statistics are not gradients: a server optimiser steps the weights, the
    statistics take the weighted mean of the sites' values (FedAdam at eta 0.01 otherwise moves a
    running variance by at most 0.01 per round)."""
    cfg = StrategyConfig(name=name, server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, server_momentum=0.5)
    start = {"w": np.zeros((2, 2), np.float32), "bn.running_mean": np.zeros(3, np.float32),
             "bn.running_var": np.ones(3, np.float32)}
    updates = [{"w": np.full((2, 2), w, np.float32), "bn.running_mean": np.full(3, m, np.float32),
                "bn.running_var": np.full(3, v, np.float32)} for w, m, v in ((1.0, 2.0, 30.0), (3.0, -1.0, 50.0),
                                                                             (8.0, 0.5, 90.0))]

    def one_round(strategy):
        guarded = GuardedStrategy(strategy, phase_name="adapt:view", phase_config={"phase": "adapt", "task": "view"},
                                  declaration=declare(start), min_sites=1)
        list(guarded.configure_train(1, ArrayRecord({k: _t(v) for k, v in start.items()}), ConfigRecord({}),
                                     FixedGrid([1, 2, 3])))
        arrays, _ = guarded.aggregate_train(1, [reply(i + 1, u, n) for i, (u, n) in
                                                enumerate(zip(updates, WEIGHTS, strict=True))])
        return numpy_dict(arrays)

    arrays = one_round(build_strategy(cfg, num_sites=3))
    assert np.allclose(arrays["bn.running_mean"], (2 - 1 + 0.5 * 2) / 4)
    assert np.allclose(arrays["bn.running_var"], (30 + 50 + 90 * 2) / 4)  # 65, not 1 + eta-sized step
    # the weights are exactly what Flower's own optimiser gives
    stock = {"fedadam": fl.FedAdam, "fedyogi": fl.FedYogi, "fedavgm": fl.FedAvgM}[name]
    kwargs = ({"server_learning_rate": 1.0, "server_momentum": 0.5} if name == "fedavgm" else
              {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3})
    reference = one_round(stock(weighted_by_key="num-examples", arrayrecord_key="arrays", configrecord_key="config",
                                min_train_nodes=1, min_available_nodes=1, min_evaluate_nodes=0, **kwargs))
    assert np.array_equal(arrays["w"], reference["w"])
    if name != "fedavgm":  # FedAvgM's first step at server lr 1 is the mean; its momentum acts from round 2
        assert not np.allclose(reference["bn.running_var"], 65.0)  # what the stock optimiser does to it
    if name == "fedadam":
        eta_norm = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
        assert np.allclose(arrays["w"], eta_norm * (0.1 * 5.0) / (np.sqrt(0.01 * 25.0) + 1e-3), rtol=1e-5)


@pytest.mark.parametrize(
    "bad,reason",
    [
        ({"w": np.full((2, 2), np.nan, np.float32), "b": np.zeros(3, np.float32)}, "'w' has 4 NaN/Inf values"),
        ({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}, "'w' has shape (2, 3), declared (2, 2)"),
        ({**site(1, 1), "extra": np.zeros(1, np.float32)}, "unexpected tensor 'extra'"),
        ({"w": np.zeros((2, 2), np.float32)}, "missing tensor 'b'"),
    ],
)
def test_a_bad_update_is_rejected_and_the_round_goes_on(bad, reason):
    arrays, guarded, *_ = run_round(StrategyConfig(name="fedavg"), [UPDATES[0], bad, UPDATES[1]], [1, 5, 1])
    assert np.allclose(arrays["w"], 2.0)  # the mean of the two good sites only
    assert reason in guarded.current.rejected["node_2"]


def test_update_norm_bound_rejects_an_outlier():
    arrays, guarded, *_ = run_round(StrategyConfig(), [site(1, 1), site(100, 100), site(2, 2)], [1, 1, 1],
                                    max_update_norm=10.0)
    assert np.allclose(arrays["w"], 1.5)
    assert "exceeds the bound 10" in guarded.current.rejected["node_2"]


def test_too_few_valid_sites_fail_the_round_with_the_reasons():
    with pytest.raises(RoundFailedError, match=r"1 valid updates from 3 replies, but min-sites is 2 .*node_2: error: site crashed.*node_3: .*NaN"):
        run_round(StrategyConfig(min_sites=2), [UPDATES[0], None, site(np.nan, 0)], [1, 1, 1], min_sites=2)


def test_server_side_dp_wrapper_clips_and_noises_site_updates():
    privacy = PrivacyConfig(mode="site", noise_multiplier=0.0, max_grad_norm=1.0)
    arrays, *_ = run_round(StrategyConfig(), [site(10.0, 0.0)] * 3, [1, 1, 1], privacy=privacy)
    # each update (norm 20) is clipped to norm 1: all mass on w, 4 equal entries of 0.5
    assert update_norm(arrays, GLOBAL) == pytest.approx(1.0, rel=1e-4)
    privacy = PrivacyConfig(mode="site", noise_multiplier=1.0, max_grad_norm=1.0)
    noisy, *_ = run_round(StrategyConfig(), [site(10.0, 0.0)] * 3, [1, 1, 1], privacy=privacy)
    assert not np.allclose(noisy["b"], 0.0)


def test_check_update_lists_every_problem():
    problems = check_update({"w": np.zeros((3,), np.float32), "x": np.zeros(1)}, declare(GLOBAL))
    assert problems == ["unexpected tensor 'x'", "missing tensor 'b'", "'w' has shape (3,), declared (2, 2)"]


def test_too_few_connected_sites_fail_the_round_instead_of_waiting_forever():
    """Flower's node sampling loops until min_available_nodes sites are online; the guard bounds the
    wait by the round timeout and names how many sites were there."""
    from fedecho.federation.guarded import RoundFailedError

    strategy = build_strategy(StrategyConfig(name="fedavg", min_sites=2), num_sites=3)
    guarded = GuardedStrategy(strategy, phase_name="adapt:view", phase_config={"phase": "adapt"},
                              declaration=declare(GLOBAL), min_sites=2, connect_timeout=0.3)
    record = ArrayRecord({k: _t(v) for k, v in GLOBAL.items()})
    start = time.monotonic()
    with pytest.raises(RoundFailedError, match=r"1 site\(s\) connected after waiting 0 s, but the round needs 2"):
        guarded.configure_train(1, record, ConfigRecord({}), FixedGrid([7]))
    assert 0.25 < time.monotonic() - start < 5
    assert len(guarded.configure_train(1, record, ConfigRecord({}), FixedGrid([7, 8]))) == 2
