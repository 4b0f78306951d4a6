"""``fedecho simulate EXPERIMENT [hydra overrides]``: a reproduction experiment from ``simulations/``
(pooled and federated arms, one result row per federated arm), or any ``conf/`` config as one
federated run over virtual sites."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run a reproduction experiment (simulations/) or a conf/ config as a Flower simulation",
        description="Examples:\n"
        "  fedecho simulate --list\n"
        "  fedecho simulate camus_lv_seg --size smoke           # pooled + federated arms, result row\n"
        "  fedecho simulate camus_lv_seg --size full --arms pooled,fedavg-intensity\n"
        "  fedecho simulate camus_lv_seg_unet --size full --publish  # + simulations/results/camus_lv_seg_unet.json\n"
        "  fedecho simulate all --size smoke                     # every experiment, one summary table\n"
        "  fedecho simulate demo                                 # a conf/ config: one federated run\n"
        "  fedecho simulate federated federation.strategy.name=fedprox federation.num_sites=5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", nargs="?", default="federated",
                        help="experiment in simulations/, 'all', or a config name in conf/ (default federated)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--size", default="smoke", help="experiment size: smoke (synthetic, minutes) or full")
    parser.add_argument("--arms", default=None, help="comma-separated arms to run (default: all)")
    parser.add_argument("--first-arm", action="store_true",
                        help="only the pooled arm and the first federated arm of each experiment")
    parser.add_argument("--out", default=None, help="results folder (default runs/experiments/NAME/SIZE)")
    parser.add_argument("--data-root", default=None, help="the dataset folder for sizes that read real data")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.add_argument("--publish", nargs="?", const="", default=None, metavar="DIR",
                        help="also write the results with their provenance (command, commit, CPU time, machine) "
                        "to DIR/<experiment>[-<size>].json (default DIR: simulations/results/ of this checkout)")
    parser.add_argument("--verbose", dest="show_logs", action="store_true",
                        help="show Flower's and the sites' logs on the terminal (always in RUN_DIR/flower.log)")
    parser.set_defaults(func=_simulate, accepts_overrides=True)


def _simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedecho.experiments import list_experiments, load_experiment, run_experiment, summary_table

    experiments = list_experiments()
    if args.list:
        for name in experiments:
            exp = load_experiment(name)
            print(f"{name:28s} {exp.title} [sizes: {', '.join(exp.sizes)}]")
        return 0
    if args.experiment == "all" or args.experiment in experiments:
        names = experiments if args.experiment == "all" else [args.experiment]
        rows = []
        for name in names:
            exp = load_experiment(name)
            out = Path(args.out) / name / args.size if args.out and len(names) > 1 else args.out
            result = run_experiment(exp, args.size, out=out, data_root=args.data_root, extra=args.overrides,
                                    arms=args.arms.split(",") if args.arms else None, cpus=args.cpus,
                                    cpus_per_site=args.cpus_per_site, first_arm=args.first_arm, argv=args.argv)
            rows += result["rows"]
            if args.publish is not None:
                from fedecho.experiments.provenance import publish
                from fedecho.experiments.spec import simulations_dir

                dest = Path(args.publish) if args.publish else simulations_dir() / "results"
                print(f"published: {publish(result, dest)}")
        print("\n".join(summary_table(rows)))
        if len(names) > 1:
            summary = Path(args.out or "runs/experiments") / f"summary-{args.size}.md"
            summary.parent.mkdir(parents=True, exist_ok=True)
            summary.write_text("\n".join(summary_table(rows)) + "\n")
            print(f"summary: {summary}")
        return 0
    from fedecho.federation.simulation import simulate

    result = simulate(args.experiment, args.overrides, cpus_per_site=args.cpus_per_site, total_cpus=args.cpus,
                      verbose=args.show_logs or args.verbose)
    print(f"simulation finished in {result['seconds']:.0f} s; run directory {result['run_dir']}")
    return 0
