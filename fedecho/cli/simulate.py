"""``fedecho simulate [EXPERIMENT] [hydra overrides]``: a federated run over virtual sites."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run a federated experiment over virtual sites (Flower simulation); Hydra overrides follow",
        description="Examples: fedecho simulate demo\n"
        "  fedecho simulate federated federation.strategy.name=fedprox federation.num_sites=5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", nargs="?", default="federated", help="config name in conf/ (default federated)")
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.set_defaults(func=_simulate, accepts_overrides=True)


def _simulate(args: argparse.Namespace) -> int:
    from fedecho.federation.simulation import simulate

    result = simulate(args.experiment, args.overrides, cpus_per_site=args.cpus_per_site)
    print(f"simulation finished in {result['seconds']:.0f} s; run directory {result['run_dir']}")
    return 0
