"""``fedecho demo``: the project's main job on the embedded synthetic default.

Three virtual hospital sites, each with its own scanner style, get synthetic CAMUS-format data;
each site's data is then checked as a site operator would before joining a federation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "DEMO_SITES"]

DEMO_SITES = ("site_a", "site_b", "site_c")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the demo on synthetic data (3 sites)")
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--patients", type=int, default=12, help="patients per site")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from fedecho.data.check import check_data
    from fedecho.data.synthetic import synthesize

    out = Path(args.out).resolve()
    for index, site in enumerate(DEMO_SITES):
        root = out / "data" / site
        summary = synthesize("camus", root, patients=args.patients, seed=args.seed + index, style=site)
        print(f"[{site}] synthesized {summary.items} CAMUS items for {summary.patients} patients "
              f"({summary.seconds:.1f} s) -> {root}")
        report = check_data("camus", root)
        print("\n".join(f"[{site}] {line}" for line in report.format_text().splitlines()))
        if report.errors or not report.usable:
            print(f"[{site}] data check found problems")
            return 1
    print(f"demo data for {len(DEMO_SITES)} sites in {out / 'data'}")
    return 0
