"""``fedecho bench``: --list, an unknown name, one quick end-to-end run of two cheap benchmarks, and the
quick pipeline-gpu rows."""

from __future__ import annotations

import json

import pytest

from fedecho.cli.main import main


def test_list_names_every_benchmark_with_its_goal(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["ratio", "bytes", "engine", "pipeline", "pipeline-gpu", "dp", "scale",
                                                 "aggregate", "deploy-round", "superlink-call", "ssl-gpu"]
    assert "(goal wall ratio ≤ 1.10)" in out[0] and "(goal < 1 s)" in out[7]


def test_unknown_name_fails_before_running(capsys, tmp_path):
    assert main(["bench", "bytes", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark 'nope'; valid benchmarks: aggregate, bytes" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_quick_bytes_and_engine_write_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "bytes", "engine", "--quick", "--reps", "1", "--threads", "1", "--out", str(out)]) == 0
    json_files, md_files = sorted(out.glob("bench-*.json")), sorted(out.glob("bench-*.md"))
    assert len(json_files) == 1 and len(md_files) == 1
    record = json.loads(json_files[0].read_text())
    assert record["options"] == {"quick": True, "reps": 1, "threads": 1}
    assert [b["name"] for b in record["benchmarks"]] == ["bytes", "engine"]
    bytes_bench, engine = record["benchmarks"]
    assert bytes_bench["command"] == "fedecho bench bytes --quick --reps 1 --threads 1"
    rows = {row["case"]: row for row in bytes_bench["rows"]}
    resnet = rows["resnet18"]
    # ResNet-18 (1 input channel) holds 11,170,240 float32 parameters plus BatchNorm buffers: the
    # serialized encoder is at least 4 bytes per parameter; rank-8 LoRA on every conv is 286,600.
    assert resnet["details"]["encoder_bytes"] >= 4 * 11_170_240
    assert 4 * 286_600 <= resnet["details"]["adapter_bytes"] < 4 * 286_600 * 1.2
    assert resnet["median"] == resnet["details"]["adapter_bytes"] / resnet["details"]["encoder_bytes"]
    assert resnet["status"] == "miss" and resnet["goal"] == "≤ 0.01"  # CNN adapters are ~2.6 % of the encoder
    (row,) = engine["rows"]
    assert row["n"] == 1 and row["median"] > 0 and row["goal"] == "≤ 1.05" and row["status"] in ("pass", "miss")
    assert set(row["details"]) == {"plain_s_per_step", "engine_s_per_step"}
    md = md_files[0].read_text()
    assert "## bytes:" in md and "## engine:" in md and "| resnet18 |" in md
    assert "machine:" in md and ("no GPU" in md or "GiB)" in md)


def test_quick_pipeline_gpu_reports_cold_cached_before_and_gpu_rates(tmp_path):
    from fedecho.bench.common import BenchOptions
    from fedecho.bench.pipeline_gpu import run

    rows = run(BenchOptions(quick=True, reps=1))
    rates = [r for r in rows if r.case.endswith("cached loader")]
    assert [r.unit for r in rates] == ["clips/s", "frames/s"]
    assert [str(r.goal) for r in rates] == ["≥ 500", "≥ 2000"]
    for row in rates:
        d = row.details
        assert d["cold_first_epoch"] > 0 and d["before_no_cache_cpu_augmentation_workers_0"] > 0
        assert d["gpu_rate"] > 0 and d["training_gflop_per_sample"] > 0 and "TFLOP/s" in d["gpu_rate_from"]
        assert d["coverage_cached_over_gpu"] == pytest.approx(row.summary.median / d["gpu_rate"], rel=1e-2)
        assert {"before: decode", "after: cache read", "after: batched augmentation (this CPU)"} <= set(
            d["profile_ms_per_sample"]) and d["profile_ms_per_sample"].keys() == d["profile_cpu_ms_per_sample"].keys()
        assert d["cpu_bound_rate_on_idle_cores"]["after"] > 0
        # load-robust rate: samples per CPU-second of the main process and its workers
        assert d["cached_per_cpu_second"]["median"] > 0 and d["cached_cpu_bound_rate"] > 0
        assert set(d["load_average_1min"]) == {"start", "end"}
