"""``fedecho demo``: the federated demo on the embedded synthetic data.

Three virtual hospital sites with different scanner looks, a short SimCLR pretraining phase, then
LoRA adapter phases for view classification and LV segmentation, then evaluation on each site's
test patients (``conf/demo.yaml``). Prints one line per phase and round, a final table, and where
the history, Flower's log, TensorBoard logs and report are (fedecho.federation.progress).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="the federated demo on synthetic data (3 sites, < 10 min on 2 cores)")
    parser.add_argument("--out", default="demo_out", help="output folder (replaced if it exists)")
    parser.add_argument("--verbose", dest="show_logs", action="store_true",
                        help="show Flower's and the sites' logs on the terminal (always in RUN_DIR/flower.log)")
    parser.set_defaults(func=_demo, accepts_overrides=True)


def _demo(args: argparse.Namespace) -> int:
    from fedecho.federation.simulation import simulate

    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    overrides = [f"federation.run_dir={out / 'run'}", f"data.root={out / 'data'}", *args.overrides]
    result = simulate("demo", overrides, verbose=args.show_logs or args.verbose)
    run = Path(result["run_dir"])
    print(f"\ndemo finished in {result['seconds']:.0f} s")
    print(f"  Flower log:  {result['log']}")
    print(f"  history:     {run / 'history.json'}")
    return 0
