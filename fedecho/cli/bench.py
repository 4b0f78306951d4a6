"""``fedecho bench [NAMES...] [--quick] [--reps N] [--threads N] [--out DIR]``: run benchmarks side
by side and write ``bench-<timestamp>.json`` and ``.md``; ``fedecho bench --list`` names them."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure what federation costs (ratios taken side by side); writes JSON + Markdown",
        description="Examples: fedecho bench --list\n"
        "  fedecho bench bytes engine --reps 3\n"
        "  fedecho bench --quick            # every benchmark at tiny sizes (seconds each)\n"
        "Never run in CI: the full set takes ~30 min on 2 cores.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their goals, then exit")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every benchmark completes in seconds")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per side (default: per benchmark)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads and OMP_NUM_THREADS (default: the usable cores)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    parser.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from fedecho.bench.common import BenchOptions, usable_cores
    from fedecho.bench.registry import BENCHMARKS, benchmark_names

    if args.list:
        for name in benchmark_names():
            spec = BENCHMARKS.get(name)
            print(f"{name:10s} {spec.title} (goal {spec.goal})")
        return 0
    names = args.names or benchmark_names()
    for name in names:
        BENCHMARKS.get(name)  # an unknown name lists the valid ones before anything runs
    threads = args.threads or usable_cores()
    options = BenchOptions(quick=args.quick, reps=args.reps, threads=threads)
    # Decided here, before torch starts its thread pool; child processes (Ray workers) inherit it.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from fedecho.bench.report import run_benchmarks, write_results

    torch.set_num_threads(threads)
    command = shlex.join(["fedecho", "bench", *sys.argv[sys.argv.index("bench") + 1:]]
                         if "bench" in sys.argv else ["fedecho", "bench", *names])
    # written after every benchmark: a long run that is stopped keeps what it measured
    record = run_benchmarks(names, options, command=command, after_each=lambda rec: write_results(rec, args.out))
    json_path, md_path = write_results(record, args.out)
    print(f"\nwrote {json_path} and {md_path}")
    failed = [b["name"] for b in record["benchmarks"] if b["status"] == "error"]
    if failed:
        print(f"fedecho bench: {', '.join(failed)} raised (see the error lines above)", file=sys.stderr)
        return 1
    return 0
