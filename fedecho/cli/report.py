"""``fedecho report RUN_DIR``: render RUN_DIR/report/report.md and its plots."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="write a run's Markdown report with result tables and plots",
        description="Reads RUN_DIR/history.json (required), summary.json, predictions/*.npz and tb/; "
        "writes RUN_DIR/report/report.md and its PNGs, and prints the report's path.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a FedEcho run directory (holds history.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE layouts (default 0)")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from fedecho.report.markdown import write_report

    print(write_report(args.run_dir, seed=args.seed))
    return 0
