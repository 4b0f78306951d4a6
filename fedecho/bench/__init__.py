"""``fedecho bench``: what federation costs, measured side by side (never run in CI).

>>> from fedecho.bench import BenchOptions, run_benchmarks, write_results
>>> record = run_benchmarks(["bytes"], BenchOptions(quick=True), command="fedecho bench bytes --quick")  # doctest: +SKIP
>>> write_results(record, "benchmarks/results")  # doctest: +SKIP

One module per benchmark family (``federation_ratio``, ``wire``, ``engine_step``, ``pipeline``, ``deploy_round``,
``privacy``, ``scale``, ``aggregation``, ``ssl_throughput`` with ``flops``); ``common`` holds the
options, machine, summaries, goals and rows; ``report`` runs benchmarks and writes JSON +
Markdown; ``registry`` names them (:data:`BENCHMARKS`).
"""

from fedecho.bench.common import (
    BenchOptions,
    Goal,
    Row,
    Summary,
    describe_machine,
    interleave,
    machine_info,
    summarize,
)
from fedecho.bench.registry import BENCHMARKS, BenchmarkSpec, benchmark_names
from fedecho.bench.report import SCHEMA, run_benchmarks, to_markdown, write_results

__all__ = [
    "BENCHMARKS",
    "SCHEMA",
    "BenchOptions",
    "BenchmarkSpec",
    "Goal",
    "Row",
    "Summary",
    "benchmark_names",
    "describe_machine",
    "interleave",
    "machine_info",
    "run_benchmarks",
    "summarize",
    "to_markdown",
    "write_results",
]
