"""The bench record (JSON schema), its Markdown table and the runner, on benchmarks made here."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from fedecho.bench import report
from fedecho.bench.common import BenchOptions, Goal, Row, summarize
from fedecho.bench.registry import BENCHMARKS, BenchmarkSpec, benchmark_names
from fedecho.registry import Registry


@dataclass(frozen=True)
class _LocalSpec(BenchmarkSpec):
    """A spec whose function is given directly (test benchmarks live in no module path)."""

    function: object = None

    def load(self):
        return self.function


def _fast(options):
    return [Row("case a", "x / y", "ratio", summarize([1.0, 1.2, 0.9]), Goal("<=", 1.1), details={"k": 1}),
            Row("case b", "size", "MB", summarize([2.5]), note="a | pipe")]


def _missing(options):
    return [Row("case c", "t", "s", summarize([3.0, 4.0]), Goal("<", 1.0)),
            Row("case d", "t", "s", None, note="skipped: no CUDA device")]


def _broken(options):
    raise RuntimeError("boom")


@pytest.fixture()
def registry(monkeypatch):
    fake = Registry("benchmark")
    for name, function in (("fast", _fast), ("missing", _missing), ("broken", _broken)):
        fake.add(name, _LocalSpec(name, f"{name} title", "goal text", "unused:unused", function))
    monkeypatch.setattr(report, "BENCHMARKS", fake)
    return fake


def test_record_schema_statuses_and_files(registry, tmp_path):
    lines, partial = [], []
    record = report.run_benchmarks(["fast", "missing", "broken"], BenchOptions(reps=3, threads=1),
                                   command="fedecho bench fast missing broken --reps 3", echo=lines.append,
                                   after_each=lambda rec: partial.append([b["name"] for b in rec["benchmarks"]]))
    assert partial == [["fast"], ["fast", "missing"], ["fast", "missing", "broken"]]
    assert record["schema"] == report.SCHEMA and record["command"] == "fedecho bench fast missing broken --reps 3"
    machine = record["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0 and machine["threads"] == 1 and "gpu" in machine
    assert record["options"] == {"quick": False, "reps": 3, "threads": 1}
    fast, missing, broken = record["benchmarks"]
    assert [b["status"] for b in record["benchmarks"]] == ["pass", "miss", "error"]
    assert fast["command"] == "fedecho bench fast --reps 3 --threads 1"
    assert broken["error"] == "RuntimeError: boom" and broken["rows"] == []
    row = fast["rows"][0]
    assert {k: row[k] for k in ("case", "median", "q1", "q3", "min", "max", "n", "reps", "goal", "status")} == {
        "case": "case a", "median": 1.0, "q1": 0.95, "q3": 1.1, "min": 0.9, "max": 1.2, "n": 3, "reps": 3,
        "goal": "≤ 1.1", "status": "pass"}
    assert missing["rows"][1]["status"] == "skipped" and missing["rows"][1]["median"] is None
    assert any("boom" in line for line in lines) and lines[0].startswith("command: fedecho bench")

    json_path, md_path = report.write_results(record, tmp_path / "out")
    assert json_path.name.startswith("bench-") and json_path.suffix == ".json" and md_path.suffix == ".md"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(record, default=str))
    md = md_path.read_text()
    assert "`fedecho bench fast missing broken --reps 3`" in md
    assert "| case a | x / y | 1 ratio | IQR 0.95–1.1; min–max 0.9–1.2 | 3 | ≤ 1.1 | pass |" in md
    assert "a \\| pipe" in md and "error: `RuntimeError: boom`" in md and "**miss**" in md


def test_benchmark_status_rules():
    assert report.benchmark_status([{"status": "pass"}, {"status": "info"}]) == "pass"
    assert report.benchmark_status([{"status": "info"}]) == "info"
    assert report.benchmark_status([{"status": "skipped"}]) == "skipped"
    assert report.benchmark_status([], "ValueError: x") == "error"


def test_registry_holds_the_issue_benchmarks_in_order():
    assert benchmark_names() == ["ratio", "bytes", "engine", "pipeline", "pipeline-gpu", "dp", "scale", "aggregate",
                                 "deploy-round", "superlink-call", "ssl-gpu"]
    for name in benchmark_names():
        assert callable(BENCHMARKS.get(name).load())
    with pytest.raises(ValueError, match="valid benchmarks: aggregate, bytes"):
        BENCHMARKS.get("nope")
