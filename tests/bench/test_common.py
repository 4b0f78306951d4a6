"""Bench helpers against hand values: summaries, goals, row status, interleaving, the linear fit,
the FLOP count of a tiny model, the federated time breakdown and the GPU benchmark's skip."""

from __future__ import annotations

import statistics

import pytest
import torch

from fedecho.bench.common import BenchOptions, Goal, Row, interleave, summarize
from fedecho.bench.federation_ratio import federated_breakdown
from fedecho.bench.flops import mfu, peak_bf16_tflops, training_flops
from fedecho.bench.scale import linear_fit


def test_summarize_matches_hand_quartiles_and_statistics():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    # sorted 1 2 3 4: median (2+3)/2; q1 at position 0.75 -> 1.75; q3 at 2.25 -> 3.25
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (2.5, 1.75, 3.25, 1.0, 4.0, 4)
    values = [0.3, 1.9, 0.7, 5.2, 2.2, 0.1, 3.3]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    s = summarize(values)
    assert (s.q1, s.median, s.q3) == pytest.approx((q1, q2, q3))
    assert s.median == statistics.median(values)


def test_summarize_single_value_and_bad_input():
    s = summarize([0.25])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (0.25, 0.25, 0.25, 0.25, 0.25, 1)
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])


def test_goal_and_row_status():
    assert Goal("<=", 1.1).met(1.1) and not Goal("<", 1.0).met(1.0) and Goal(">=", 2).met(2.5)
    assert str(Goal("<=", 1.1)) == "≤ 1.1" and str(Goal(">=", 2.0)) == "≥ 2"
    with pytest.raises(ValueError, match="goal op"):
        Goal("==", 1.0)
    assert Row("a", "m", "s", summarize([0.9, 1.2, 1.0]), Goal("<=", 1.05)).status == "pass"
    assert Row("a", "m", "s", summarize([1.2, 1.3]), Goal("<=", 1.05)).status == "miss"
    assert Row("a", "m", "s", summarize([1.2]), None).status == "info"
    skipped = Row("a", "m", "s", None, note="skipped: why")
    assert skipped.status == "skipped" and skipped.as_dict()["median"] is None and skipped.as_dict()["reps"] == 0


def test_options_repetitions():
    assert BenchOptions().repetitions(5) == 5
    assert BenchOptions(quick=True).repetitions(5) == 2
    assert BenchOptions(quick=True, reps=3).repetitions(5, quick=1) == 3
    with pytest.raises(ValueError, match="reps"):
        BenchOptions(reps=0)


def test_interleave_alternates_order_after_warmup():
    calls = []

    def side(name, value):
        def f():
            calls.append(name)
            return value
        return f

    out = interleave({"a": side("a", 1.0), "b": side("b", 2.0)}, reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert out == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def test_linear_fit_hand_values():
    fit = linear_fit([10, 30, 100], [3.0, 7.0, 21.0])  # exactly 0.2 x + 1
    assert fit["slope"] == pytest.approx(0.2) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0)
    # y = 0, 2, 1 at x = 0, 1, 2: slope 0.5, intercept 0.5, residuals -0.5 1 -0.5 -> SSE 1.5, SST 2
    fit = linear_fit([0, 1, 2], [0.0, 2.0, 1.0])
    assert (fit["slope"], fit["intercept"], fit["r2"]) == pytest.approx((0.5, 0.5, 0.25))
    with pytest.raises(ValueError, match="paired"):
        linear_fit([1], [1.0])


def test_training_flops_of_a_tiny_mlp_match_a_hand_count():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 5))
    x = torch.randn(2, 4)  # batch 2, no gradient w.r.t. the input

    def step():
        model(x).sum().backward()

    # a (M, K) @ (K, N) product is 2·M·K·N. Forward: 2·2·4·3 + 2·2·3·5 = 48 + 60.
    # Backward: weight grads 48 + 60, input grad of the second layer 60 (none for the first).
    assert training_flops(step) == 48 + 60 + 48 + 60 + 60


def test_mfu_and_peak_table():
    assert mfu(989.4e12, 2.0, 989.4) == pytest.approx(0.5)
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert peak_bf16_tflops("Some Future GPU") is None
    with pytest.raises(ValueError):
        mfu(1.0, 0.0, 1.0)


def test_ssl_gpu_benchmark_reports_skip_without_cuda(monkeypatch):
    from fedecho.bench.ssl_throughput import NO_CUDA, run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = run(BenchOptions(quick=True))
    assert len(rows) == 6
    assert {r.status for r in rows} == {"skipped"} and {r.note for r in rows} == {NO_CUDA}
    assert {r.case for r in rows} == {"vit-s16 dino", "vit-s16 dinov2", "resnet18 simclr"}


def test_federated_breakdown_hand_history():
    history = [
        {"phase": "setup:lv_seg", "seconds": 0.0, "sites_train": {"site_0": {}, "site_1": {}}},
        {"phase": "adapt:lv_seg", "seconds": 10.0, "sites_train": {"site_0": {"seconds": 8.0}, "site_1": {"seconds": 9.0}}},
        {"phase": "adapt:lv_seg", "seconds": 4.0, "sites_train": {"site_0": {"seconds": 3.0}, "site_1": {"seconds": 3.5}}},
        {"phase": "adapt:lv_seg", "seconds": 4.0, "sites_train": {"site_0": {"seconds": 3.0}, "site_1": {"seconds": 3.5}}},
    ]
    out = federated_breakdown(history, total_s=30.0, sites=2, cores=2, round_trip_s=0.01)
    assert out["rounds_wall_s"] == 18.0 and out["outside_rounds_s"] == 12.0
    assert out["site_setup_s"] == pytest.approx((8 - 3) + (9 - 3.5))  # round 1 minus the later median
    assert out["site_training_s"] == pytest.approx(30.0 - 10.5)  # all site time (30) minus set-up
    assert out["serialisation_s"] == pytest.approx(2 * 0.01 * 2 * 3)
    assert out["idle_s"] == pytest.approx(18.0 * 2 - 30.0)
