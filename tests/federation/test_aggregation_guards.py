"""Aggregation against a lying or broken site (issue 12, items 5, 6, 7, 9), with hand-computed
aggregates: bounded and validated ``num-examples`` weights, per-reply parsing of malformed arrays,
site-level DP with uniform weights, and strategy state checkpointed without pickle."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from fedecho.config.federation import FederationConfig, PrivacyConfig, StrategyConfig
from fedecho.federation.arrays import MalformedArrayError, numpy_dict, parse_array
from fedecho.federation.contract import declare
from fedecho.federation.guarded import GuardedStrategy, RoundFailedError
from fedecho.federation.strategies import build_strategy
from fedecho.federation.weights import WeightPolicy, bound_weights, parse_num_examples


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


GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}


def site(value_w: float, value_b: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), value_w, np.float32), "b": np.full(3, value_b, np.float32)}


def record_of(arrays: dict[str, np.ndarray | Array]) -> ArrayRecord:
    return ArrayRecord({k: v if isinstance(v, Array) else Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def reply(node_id: int, arrays: dict | None, num_examples: object = 1, kind=MessageType.TRAIN, **metrics) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id="m",
                        group_id="1", created_at=time.time(), ttl=60, message_type=kind)
    content = RecordDict({"metrics": MetricRecord({"num-examples": num_examples, **metrics})})
    if arrays is not None:
        content["arrays"] = record_of(arrays)
    return Message(metadata=metadata, content=content)


def guarded_for(cfg: StrategyConfig, n: int, *, privacy=None, weights=None, min_sites=1, max_update_norm=None,
                strategy=None, round_offset=0) -> GuardedStrategy:
    strategy = strategy or build_strategy(cfg, privacy, num_sites=n)
    return GuardedStrategy(strategy, phase_name="adapt:view", phase_config={"phase": "adapt"},
                           declaration=declare(GLOBAL), min_sites=min_sites, max_update_norm=max_update_norm,
                           weights=weights, round_offset=round_offset)


def run_round(updates, weights, cfg=None, *, policy=None, current=GLOBAL, server_round=1, guarded=None, **kw):
    cfg = cfg or StrategyConfig(name="fedavg", min_sites=1)
    guarded = guarded or guarded_for(cfg, len(updates), weights=policy, **kw)
    guarded.configure_train(server_round, record_of(current), ConfigRecord({}), FixedGrid(range(1, len(updates) + 1)))
    replies = [reply(i + 1, u, n) for i, (u, n) in enumerate(zip(updates, weights, strict=True))]
    arrays, _ = guarded.aggregate_train(server_round, replies)
    return numpy_dict(arrays), guarded.current


THREE = [site(1.0, 2.0), site(3.0, -1.0), site(8.0, 0.5)]


# --- item 6: num-examples is validated and bounded -------------------------------------------------
def test_a_site_claiming_1e9_examples_is_clipped_to_k_times_the_median():
    arrays, record = run_round(THREE, [1, 1, 1e9], policy=WeightPolicy("examples", max_weight_ratio=10))
    # weights 1, 1, min(1e9, 10 x median 1) = 10
    assert np.allclose(arrays["w"], (1 * 1 + 3 * 1 + 8 * 10) / 12)
    assert np.allclose(arrays["b"], (2 * 1 - 1 * 1 + 0.5 * 10) / 12)
    assert "num-examples 1e+09 clipped to 10" in record.clipped["node_3"]
    assert set(record.clipped) == {"node_3"} and not record.rejected
    assert record.sites_train["node_3"]["num-examples"] == 1e9  # the history keeps what the site said
    unbounded, _ = run_round(THREE, [1, 1, 1e9], policy=WeightPolicy("examples", max_weight_ratio=None))
    assert np.allclose(unbounded["w"], 8.0, atol=1e-6)  # what the bound prevents: the liar is the model


def test_a_liar_within_max_update_norm_cannot_take_over():
    """The update-norm bound accepts the liar's (small) update; only the weight bound limits its pull."""
    updates = [site(1.0), site(3.0), site(4.0)]  # norms 2, 6, 8: all within 10
    arrays, record = run_round(updates, [1, 1, 1e9], max_update_norm=10.0)  # default policy: ratio 10
    assert not record.rejected
    assert np.allclose(arrays["w"], (1 + 3 + 4 * 10) / 12)


def test_two_sites_the_lower_median_bounds_the_liar():
    arrays, record = run_round([site(1.0), site(5.0)], [100, 1e9])
    assert np.allclose(arrays["w"], (1 * 100 + 5 * 1000) / 1100)
    assert "clipped to 1000" in record.clipped["node_2"]


@pytest.mark.parametrize("bad,reason", [
    (float("inf"), "num-examples is inf (not finite)"),
    (float("nan"), "num-examples is nan (not finite)"),
    (0, "num-examples is 0"),
    (-5.0, "num-examples is -5"),
    (2.5, "num-examples is 2.5, not a whole number"),
    (1e300, "num-examples is 1e+300, beyond 2**53"),
])
def test_a_non_finite_or_non_positive_or_fractional_num_examples_rejects_only_that_site(bad, reason):
    arrays, record = run_round(THREE, [1, 3, bad])
    assert np.allclose(arrays["w"], (1 * 1 + 3 * 3) / 4) and np.all(np.isfinite(arrays["b"]))
    assert reason in record.rejected["node_3"]


def test_uniform_weighting_ignores_what_sites_report():
    arrays, record = run_round(THREE, [1, 1, 1000], policy=WeightPolicy("uniform"))
    assert np.allclose(arrays["w"], (1 + 3 + 8) / 3) and not record.clipped


def test_num_examples_parsing_and_bounds_by_hand():
    assert parse_num_examples(120.0) == 120 and parse_num_examples(7) == 7
    for bad in (True, "12", None, float("-inf")):
        with pytest.raises(ValueError, match="num-examples"):
            parse_num_examples(bad)
    decision = bound_weights({"a": 10, "b": 20, "c": 30, "d": 10_000}, WeightPolicy("examples", 2.0))
    assert decision.weights == {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}  # lower median 20, cap 40
    assert set(decision.clipped) == {"d"}
    assert "clipped to 40" in decision.clipped["d"]


def test_weighting_config_auto_examples_uniform_and_errors():
    assert WeightPolicy.from_config(FederationConfig()).mode == "examples"
    site_dp = FederationConfig(privacy=PrivacyConfig(mode="site"))
    assert WeightPolicy.from_config(site_dp).mode == "uniform"  # auto: what site-level DP requires
    assert WeightPolicy.from_config(FederationConfig(weighting="uniform")).mode == "uniform"
    with pytest.raises(ValueError, match="federation.weighting 'size' is unknown; valid: auto, examples, uniform"):
        FederationConfig(weighting="size")
    with pytest.raises(ValueError, match="federation.max_weight_ratio must be >= 1"):
        FederationConfig(max_weight_ratio=0.5)
    with pytest.raises(ValueError, match="weighting=examples cannot be used with federation.privacy.mode=site"):
        FederationConfig(weighting="examples", privacy=PrivacyConfig(mode="site"))
    with pytest.raises(ValueError, match="privacy.mode=site needs a strategy that averages"):
        FederationConfig(strategy=StrategyConfig(name="krum"), privacy=PrivacyConfig(mode="site"))
    with pytest.raises(ValueError, match="set federation.strategy.max_update_norm=null"):
        FederationConfig(strategy=StrategyConfig(max_update_norm=5.0), privacy=PrivacyConfig(mode="site"))


def test_evaluation_metrics_are_bounded_and_validated_the_same_way():
    cfg = StrategyConfig(name="fedavg", min_sites=1)
    guarded = guarded_for(cfg, 4)
    guarded.configure_train(1, record_of(GLOBAL), ConfigRecord({}), FixedGrid([1, 2, 3, 4]))
    replies = [reply(1, None, 10, MessageType.EVALUATE, **{"eval-loss": 1.0}),
               reply(2, None, 10, MessageType.EVALUATE, **{"eval-loss": 2.0}),
               reply(3, None, 1e9, MessageType.EVALUATE, **{"eval-loss": 100.0}),
               reply(4, None, float("nan"), MessageType.EVALUATE, **{"eval-loss": 5.0})]
    metrics = guarded.aggregate_evaluate(1, replies)
    # node 4 left out (NaN count); node 3 clipped to 10 x the lower median 10 = 100
    assert metrics["eval-loss"] == pytest.approx((1 * 10 + 2 * 10 + 100 * 100) / 120)
    assert set(guarded.current.sites_evaluate) == {"node_1", "node_2", "node_3"}


def test_the_global_model_keeps_its_declared_dtype_under_fedadam():
    """Flower's FedAdam computes in float64: without the cast, every site would receive twice the
    bytes from round 2 on and the arrays would no longer match the phase's declaration."""
    cfg = StrategyConfig(name="fedadam", min_sites=1)
    guarded = guarded_for(cfg, 3)
    arrays, record = run_round(THREE, [1, 1, 2], guarded=guarded)
    assert {k: v.dtype for k, v in arrays.items()} == {"w": np.float32, "b": np.float32}
    sent_1 = record.bytes_sent
    _, record = run_round(THREE, [1, 1, 2], guarded=guarded, current=arrays, server_round=2)
    assert record.bytes_sent == sent_1


# --- item 7: a malformed array rejects only its site -----------------------------------------------
def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _raw(data: bytes, dtype="float32", shape=(2, 2)) -> Array:
    return Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray", data=data)


def test_a_truncated_array_among_good_replies_rejects_only_that_site():
    good = _npy(np.full((2, 2), 8.0, np.float32))
    truncated = {"w": _raw(good[:-8]), "b": np.full(3, 0.5, np.float32)}
    arrays, record = run_round([THREE[0], truncated, THREE[1]], [1, 5, 3])
    assert np.allclose(arrays["w"], (1 * 1 + 3 * 3) / 4)
    assert np.allclose(arrays["b"], (2 * 1 - 1 * 3) / 4)
    assert "malformed array 'w': payload is 8 bytes short" in record.rejected["node_2"]
    assert set(record.sites_train) == {"node_1", "node_3"}


@pytest.mark.parametrize("array,problem", [
    (_raw(b"garbage bytes, not an array"), "unreadable .npy header (not .npy data"),
    (_raw(_npy(np.zeros((2, 2), np.float32)) + b"\0" * 4), "payload is 4 bytes too long"),
    (_raw(_npy(np.zeros((2, 2), np.float64))), "payload has dtype float64, the array claims float32"),
    (_raw(_npy(np.zeros((4,), np.float32))), "payload has shape (4,), the array claims (2, 2)"),
    (_raw(_npy(np.zeros(8, np.uint8))[:10]), "the .npy header claims"),
    (Array(dtype="float32", shape=(2, 2), stype="torch.Tensor", data=_npy(np.zeros((2, 2), np.float32))),
     "serialisation type 'torch.Tensor'"),
])
def test_each_kind_of_malformed_array_is_named(array, problem):
    with pytest.raises(MalformedArrayError, match="array 'w'") as err:
        parse_array("w", array)
    assert problem in str(err.value)


def test_object_and_negative_shape_headers_are_refused_before_any_read():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    with pytest.raises(MalformedArrayError, match="object arrays are never accepted"):
        parse_array("w", _raw(header.getvalue() + b"\0" * 16, dtype="object", shape=(2,)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (-1,)})
    with pytest.raises(MalformedArrayError, match="negative dimension"):
        parse_array("w", _raw(header.getvalue() + b"\0" * 16, shape=(-1,)))


def test_extra_records_odd_metrics_and_a_bogus_site_index_break_only_their_reply():
    """Flower's aggregation refuses a whole round for a second ArrayRecord or mismatched metric
    types; a NaN site index used to crash naming the site."""
    cfg = StrategyConfig(name="fedavg", min_sites=1)
    guarded = guarded_for(cfg, 6)
    guarded.configure_train(1, record_of(GLOBAL), ConfigRecord({}), FixedGrid([1, 2, 3, 4, 5, 6]))
    extra = reply(2, site(50.0), 1)
    extra.content["smuggled"] = record_of({"x": np.zeros(3, np.float32)})
    replies = [reply(1, THREE[0], 1, **{"train-loss": 1.0}), extra,
               reply(3, THREE[1], 3, **{"train-loss": [1.0, 2.0]}),  # a list where others send a number
               reply(4, THREE[2], 2, **{"site-index": float("nan"), "train-loss": 4.0}),
               reply(5, site(8.0, 0.5), 2, **{"site-index": 0.0, "train-loss": 4.0}),  # "I am site_0"
               reply(6, site(8.0, 0.5), 2, **{"site-index": 0.0, "train-loss": 4.0})]  # ... and so am I
    arrays, metrics = guarded.aggregate_train(1, replies)
    arrays = numpy_dict(arrays)
    assert np.allclose(arrays["w"], (1 * 1 + 3 * 3 + 8 * 2 * 3) / 10)
    assert guarded.current.rejected == {"node_2": "unexpected record 'smuggled' in reply"}
    assert "train-loss" not in metrics  # not a number at every site: left out, not a crash
    # two nodes claiming one site index: both kept in the history, neither overwrites the other
    assert set(guarded.current.sites_train) == {"node_1", "node_3", "node_4", "site_0", "site_0@node_6"}


def test_a_malformed_array_below_min_sites_fails_the_round_with_its_reason():
    truncated = {"w": _raw(_npy(np.zeros((2, 2), np.float32))[:-8]), "b": np.zeros(3, np.float32)}
    with pytest.raises(RoundFailedError, match=r"1 valid updates from 2 replies.*node_2: malformed array 'w'"):
        run_round([THREE[0], truncated], [1, 1], cfg=StrategyConfig(name="fedavg", min_sites=2), min_sites=2)


# --- item 5: site-level DP with uniform weights --------------------------------------------------------
SITE_DP = PrivacyConfig(mode="site", noise_multiplier=0.0, max_grad_norm=100.0)


def test_site_level_dp_weights_sites_uniformly_whatever_they_report():
    # even with an examples policy in the guard, site-level DP aggregates 1/3 each
    arrays, record = run_round(THREE, [1, 1, 1000], privacy=SITE_DP, policy=WeightPolicy("examples", None))
    assert np.allclose(arrays["w"], (1 + 3 + 8) / 3) and np.allclose(arrays["b"], (2 - 1 + 0.5) / 3)
    assert record.train["site-dp-noise-std"] == 0.0 and record.train["site-dp-clipped"] == 0


def test_site_level_dp_takes_an_unchanged_update_without_dividing_by_zero():
    arrays, _ = run_round([GLOBAL, site(3.0)], [1, 1], privacy=SITE_DP)
    assert np.allclose(arrays["w"], 1.5) and np.allclose(arrays["b"], 0.0)
    # clipping: ‖site(30)‖ = 60 > C = 6 -> scaled to 3 per entry; the unchanged update stays 0
    arrays, record = run_round([GLOBAL, site(30.0)], [1, 1],
                               privacy=PrivacyConfig(mode="site", noise_multiplier=0.0, max_grad_norm=6.0))
    assert np.allclose(arrays["w"], 1.5) and record.train["site-dp-clipped"] == 1


def test_site_level_dp_noise_is_calibrated_to_clip_over_the_sites_aggregated():
    from fedecho.federation.site_dp import SiteLevelDP

    big = {"w": np.zeros(40_000, np.float32)}
    dp = SiteLevelDP(build_strategy(StrategyConfig(min_sites=1), num_sites=4), noise_multiplier=2.0,
                     clipping_norm=3.0, rng=np.random.default_rng(7))
    dp.configure_train(1, record_of(big), ConfigRecord({}), FixedGrid([1, 2, 3, 4]))
    replies = [reply(i, {"w": np.full(40_000, 1e-3, np.float32)}, n) for i, n in ((1, 1), (2, 50), (3, 10_000))]
    arrays, metrics = dp.aggregate_train(1, replies)  # 3 updates (a 4th site was rejected upstream)
    noise = numpy_dict(arrays)["w"] - 1e-3
    assert metrics["site-dp-noise-std"] == pytest.approx(2.0 * 3.0 / 3)
    assert noise.std() == pytest.approx(2.0, rel=0.03) and abs(noise.mean()) < 0.05


# --- item 9: strategy state as arrays + JSON, never pickle ---------------------------------------------
class ScriptedGrid:
    """Flower's Grid as the Coordinator uses it, with three sites that answer deterministically from
    what they receive (a fixed pseudo-update per site and round); ``crash_at`` makes the coordinator
    "die" when it sends that round's training instructions."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at

    def get_node_ids(self):
        return [1, 2, 3]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            node, config = message.metadata.dst_node_id, message.content.config_records["config"]
            metrics = {"num-examples": float(10 * node), "site-index": float(node - 1)}
            if message.metadata.message_type == MessageType.TRAIN:
                if config["server-round"] == self.crash_at:
                    raise RuntimeError(f"coordinator killed before round {self.crash_at}")
                step = np.sin(np.arange(7, dtype=np.float32) * node + config["server-round"])
                # like a site's float32 model
                received = numpy_dict(message.content.array_records["arrays"])
                arrays = {k: v.astype(np.float32) for k, v in received.items()}
                new = {"w": arrays["w"] + step[:4].reshape(2, 2), "b": arrays["b"] - step[4:]}
                content = RecordDict({"arrays": record_of(new), "metrics": MetricRecord(metrics)})
            else:
                content = RecordDict({"metrics": MetricRecord({**metrics, "eval-loss": 1.0 / node})})
            replies.append(Message(content, reply_to=message))
        return replies


def _coordinator(run_dir, grid, monkeypatch, strategy="fedadam", resume=False, extra=()):
    import torch

    from fedecho.config.compose import compose_run_config
    from fedecho.federation.coordinator import Coordinator

    cfg = compose_run_config([f"federation.strategy.name={strategy}", "federation.adapt.rounds=4",
                              "federation.tasks=[view]", "federation.central_eval=false",
                              "federation.strategy.server_lr=0.3", f"federation.run_dir={run_dir}", *extra],
                             config_name="federated")
    monkeypatch.setattr(Coordinator, "_initial",
                        lambda self, phase: ({k: torch.from_numpy(v.copy()) for k, v in GLOBAL.items()}, None))
    return Coordinator(cfg, grid, resume=resume)


# site-level DP without noise is deterministic: its (two-level) strategy state must resume exactly too
SITE_DP_NO_NOISE = ("federation.privacy.mode=site", "federation.privacy.noise_multiplier=0",
                    "federation.privacy.max_grad_norm=0.5")


@pytest.mark.parametrize("strategy,extra", [("fedadam", ()), ("fedavgm", ()), ("fedadam", SITE_DP_NO_NOISE)],
                         ids=["fedadam", "fedavgm", "fedadam-site-dp"])
def test_a_resumed_run_continues_the_strategy_state_bit_for_bit(tmp_path, monkeypatch, strategy, extra):
    from fedecho.federation import coordinator as coordinator_module
    from fedecho.federation.state import RunCheckpoint

    _coordinator(tmp_path / "full", ScriptedGrid(), monkeypatch, strategy, extra=extra).run()
    full = RunCheckpoint.load(tmp_path / "full").phase_arrays("adapt:view")
    if extra:  # every site's update (norm ~1.8) was clipped to 0.5 at the coordinator
        import json

        history = json.loads((tmp_path / "full" / "history.json").read_text())
        assert [r["train"]["site-dp-clipped"] for r in history if r["phase"] == "adapt:view"] == [3, 3, 3, 3]

    with pytest.raises(RuntimeError, match="killed before round 3"):
        _coordinator(tmp_path / "resumed", ScriptedGrid(crash_at=3), monkeypatch, strategy, extra=extra).run()
    checkpoint = RunCheckpoint.load(tmp_path / "resumed")
    assert (checkpoint.phase, checkpoint.round) == ("adapt:view", 2)
    files = sorted(p.name for p in checkpoint.directory.iterdir())
    assert files == ["round_adapt_view_000002.npz", "state.json"]  # round 1's file was replaced
    saved = checkpoint.strategy_state()
    moments = ("m_t", "v_t") if strategy == "fedadam" else ("momentum_vector",)
    assert all(saved[-1][name] is not None for name in moments)  # (the inner strategy under site DP)
    _coordinator(tmp_path / "resumed", ScriptedGrid(), monkeypatch, strategy, resume=True, extra=extra).run()
    resumed = RunCheckpoint.load(tmp_path / "resumed").phase_arrays("adapt:view")
    for key in full:
        np.testing.assert_array_equal(full[key], resumed[key])

    # what the test guards: the same resume without the saved moments ends elsewhere
    with pytest.raises(RuntimeError):
        _coordinator(tmp_path / "forgetful", ScriptedGrid(crash_at=3), monkeypatch, strategy, extra=extra).run()
    monkeypatch.setattr(coordinator_module, "load_strategy_state", lambda strategy, state: None)
    _coordinator(tmp_path / "forgetful", ScriptedGrid(), monkeypatch, strategy, resume=True, extra=extra).run()
    forgetful = RunCheckpoint.load(tmp_path / "forgetful").phase_arrays("adapt:view")
    assert not np.array_equal(full["w"], forgetful["w"])


class _Payload:
    """A pickle that, if ever loaded, creates a marker file (what a hostile strategy.pkl would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_a_run_directory_with_a_pickle_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    import pickle

    from fedecho.federation.state import RunCheckpoint

    with pytest.raises(RuntimeError):
        _coordinator(tmp_path / "run", ScriptedGrid(crash_at=2), monkeypatch).run()
    marker = tmp_path / "code-ran"
    legacy = tmp_path / "run" / "checkpoint" / "strategy.pkl"
    legacy.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"holds strategy.pkl, written by an older FedEcho: it is never "
                                         r"unpickled .* another\s+federation.run_dir"):
        _coordinator(tmp_path / "run", ScriptedGrid(), monkeypatch, resume=True)
    with pytest.raises(ValueError, match="never unpickled"):
        RunCheckpoint.load(tmp_path / "run")
    assert not marker.exists()
    # the arrays file itself is read with allow_pickle=False: an object array inside is refused
    legacy.unlink()
    checkpoint = RunCheckpoint.load(tmp_path / "run")
    path = checkpoint.directory / checkpoint.round_file
    buffer = io.BytesIO()
    np.savez(buffer, a0=np.array([_Payload(marker)], dtype=object))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"round_adapt_view_000001.npz is unreadable"):
        checkpoint.strategy_state()
    assert not marker.exists()
