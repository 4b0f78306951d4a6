"""``fedecho``: data synth/check, train, simulate, report, bench, demo.

Each command lives in its own module exposing ``add_parser(subparsers)``; heavy imports happen
inside the command, so ``fedecho --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "COMMAND_MODULES"]

#: command name -> module with ``add_parser(subparsers)`` that sets ``func`` on its parser.
COMMAND_MODULES = {
    "data": "fedecho.cli.data",
    "train": "fedecho.cli.train",
    "demo": "fedecho.cli.demo",
    "simulate": "fedecho.cli.simulate",
    "report": "fedecho.cli.report",
    "bench": "fedecho.cli.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedecho", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's database migrations: noise
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    args.argv = ["fedecho", *(sys.argv[1:] if argv is None else argv)]  # the command as typed (provenance)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Input problems are reported to people as one clear message, not a traceback.
        print(f"fedecho {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
