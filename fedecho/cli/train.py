"""``fedecho train [hydra overrides]``: train one site, no federation."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train one site (no federation); Hydra overrides follow, e.g. task=lv_seg model=segformer-b0",
        description="Examples: fedecho train task=view model=resnet18 train.epochs=5\n"
        "  fedecho train data=camus data.root=../shared/data/camus model=segformer-b0 task=lv_seg\n"
        "  fedecho train mode=pretrain ssl=simclr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.set_defaults(func=_train, accepts_overrides=True)


def _train(args: argparse.Namespace) -> int:
    from fedecho.config.compose import compose_run_config
    from fedecho.config.run import to_dict

    cfg = compose_run_config(args.overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=1, default=str))
        return 0
    from fedecho.engine.local import train_local

    results = train_local(cfg)
    if "test" in results:
        scores = {k: round(v, 4) for k, v in results["test"].items() if isinstance(v, float)}
        print(f"test ({results['selection'][0]} selected, best epoch {results['best_epoch']}): {scores}")
    else:
        print(f"{cfg.mode} finished: {results['epochs_run']} epochs, last loss "
              f"{results['history'][-1]['train_loss']:.4f}")
    print(f"outputs in {cfg.train.out_dir} ({results['seconds']:.0f} s)")
    return 0
