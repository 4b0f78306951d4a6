"""``fedecho data synth``, ``fedecho data check`` and ``fedecho data cache-clear``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "DATA_FORMATS"]

DATA_FORMATS = ("camus", "echonet-dynamic", "echonet-lvh", "tmed2", "dicom")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="generate synthetic echo data or check a data folder")
    data_sub = parser.add_subparsers(dest="data_command", required=True)

    synth = data_sub.add_parser("synth", help="write synthetic echo data in a dataset's on-disk format")
    synth.add_argument("--format", required=True, choices=DATA_FORMATS)
    synth.add_argument("--out", required=True, help="output folder (created)")
    synth.add_argument("--patients", type=int, default=20)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--style", default="mixed", help="scanner style name, or 'mixed' (one per patient)")
    synth.add_argument("--image-size", type=int, default=None, help="frame size (default: the format's own)")
    synth.set_defaults(func=_synth)

    check = data_sub.add_parser(
        "check",
        help="scan a data folder: counts, labels, every unreadable item",
        description="Exit status: 0 all items readable, 1 some problems (usable data remains), 2 no usable data.",
    )
    check.add_argument("path")
    check.add_argument("--format", required=True, choices=DATA_FORMATS)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--shallow", action="store_true", help="headers and manifests only; do not decode pixels")
    check.add_argument("--id-fallback", action="store_true",
                       help="DICOM without PatientID/StudyInstanceUID/SOPInstanceUID: derive them as documented")
    check.set_defaults(func=_check)

    clear = data_sub.add_parser(
        "cache-clear",
        help="delete the site's decoded cache (it is rebuilt by the next training pass)",
        description="Deletes only entries the decoded cache wrote (fedecho.data.cache).",
    )
    clear.add_argument("--dir", default=None,
                       help="cache folder: the data.cache_dir the site runs with (default: $FEDECHO_CACHE/decoded, "
                            "i.e. ~/.cache/fedecho/decoded)")
    clear.set_defaults(func=_cache_clear)


def _synth(args: argparse.Namespace) -> int:
    from fedecho.data.synthetic import synthesize

    if args.patients < 1:
        raise ValueError(f"--patients must be >= 1, got {args.patients}")
    summary = synthesize(
        args.format, args.out, patients=args.patients, seed=args.seed, style=args.style, image_size=args.image_size
    )
    print(
        f"wrote {summary.format} data to {summary.out}: {summary.patients} patients, {summary.studies} studies, "
        f"{summary.items} items in {summary.seconds:.1f} s"
    )
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    from fedecho.data.cache import clear_cache, default_cache_dir

    folder = args.dir or str(default_cache_dir())
    entries, freed = clear_cache(folder)
    print(f"removed {entries} decoded item(s), {freed / 1e6:.1f} MB, from {folder}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from fedecho.data.check import check_data

    report = check_data(args.format, args.path, deep=not args.shallow, id_fallback=args.id_fallback)
    print(report.to_json() if args.json else report.format_text(), file=sys.stdout)
    if not report.usable:
        return 2
    return 1 if report.errors else 0
