"""What federation costs, measured side by side (never run in CI).

    python benchmarks/federation.py bytes        # adapter-phase bytes per site per round / full encoder
    python benchmarks/federation.py aggregate    # coordinator time to validate + aggregate 100 LoRA updates
    python benchmarks/federation.py dp           # DP-SGD step / non-private step on LoRA models
    python benchmarks/federation.py ratio        # simulated federation vs pooled training, same total steps
    python benchmarks/federation.py scale        # round time and peak memory for 10, 30, 100 sites

Every command prints the command line, the machine, the median of several repetitions and the
spread; ``--json PATH`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fedecho.config.compose import compose_run_config


def machine() -> str:
    import psutil

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {gpu}, "
            f"torch {torch.__version__}")


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --- bytes ---------------------------------------------------------------------------------------
def bench_bytes(args) -> list[dict]:
    from fedecho.engine.build import build_task_learner
    from fedecho.federation.arrays import to_arrayrecord

    rows = []
    for model, size in (("vit-s16", 224), ("segformer-b0", 256)):
        for task in ("view", "lv_seg"):
            cfg = compose_run_config([f"model={model}", f"model.image_size={size}", f"task={task}",
                                      f"task.image_size=[{size},{size}]", "encoder=lora", "lora.rank=8",
                                      *([f"lora.target_modules=[{args.targets}]"] if args.targets else [])])
            learner = build_task_learner(cfg)
            adapter = {k: v for k, v in learner.shared_state_dict().items() if "lora_" in k}
            head = {k: v for k, v in learner.shared_state_dict().items() if k.startswith("head.")}
            encoder = {k: v for k, v in learner.backbone.state_dict().items() if "lora_" not in k}
            full = to_arrayrecord(encoder).count_bytes()
            row = {"model": model, "task": task, "targets": args.targets or "default", "encoder_bytes": full,
                   "adapter_bytes": to_arrayrecord(adapter).count_bytes(), "head_bytes": to_arrayrecord(head).count_bytes(),
                   "declared_bytes": to_arrayrecord(learner.shared_state_dict()).count_bytes()}
            row["adapter_over_encoder"] = row["adapter_bytes"] / full
            row["declared_over_encoder"] = row["declared_bytes"] / full
            rows.append(row)
            print(f"{model:13s} {task:7s} encoder {full / 1e6:7.2f} MB | LoRA r8 {row['adapter_bytes'] / 1e6:.3f} MB "
                  f"({row['adapter_over_encoder']:.4f}) | + head {row['declared_bytes'] / 1e6:.3f} MB "
                  f"({row['declared_over_encoder']:.4f} of the encoder) per site per round, each way")
    return rows


# --- aggregation -----------------------------------------------------------------------------------
def bench_aggregate(args) -> list[dict]:
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.app.metadata import Metadata
    from flwr.supercore.task_identity import TaskIdentity

    from fedecho.config.federation import StrategyConfig
    from fedecho.engine.build import build_task_learner
    from fedecho.federation.arrays import to_arrayrecord
    from fedecho.federation.contract import declare
    from fedecho.federation.guarded import GuardedStrategy
    from fedecho.federation.strategies import build_strategy

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    class Grid:
        def get_node_ids(self):
            return list(range(1, args.sites + 1))

    rows = []
    for model, size in (("vit-s16", 224), ("segformer-b0", 256)):
        cfg = compose_run_config([f"model={model}", f"model.image_size={size}", "task=view",
                                  f"task.image_size=[{size},{size}]", "encoder=lora"])
        state = {k: v.numpy() for k, v in build_task_learner(cfg).shared_state_dict().items()}
        rng = np.random.default_rng(0)
        updates = [{k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) for k, v in state.items()}
                   for _ in range(args.sites)]

        def make_replies():  # fresh messages each time: aggregation may consume their records
            replies = []
            for node, arrays in enumerate(updates, start=1):
                metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                                    group_id="1", created_at=time.time(), ttl=60, message_type=MessageType.TRAIN)
                replies.append(Message(metadata=metadata, content=RecordDict(
                    {"arrays": to_arrayrecord(arrays), "metrics": MetricRecord({"num-examples": 10.0})})))
            return replies

        for name in ("fedavg", "fedadam", "fedmedian", "krum"):
            times = []
            for _ in range(args.reps):
                strategy = build_strategy(StrategyConfig(name=name, min_sites=1), num_sites=args.sites)
                guarded = GuardedStrategy(strategy, phase_name="adapt:view", phase_config={}, declaration=declare(state),
                                          min_sites=1, max_update_norm=10.0)
                guarded.configure_train(1, to_arrayrecord(state), ConfigRecord(), Grid())
                replies = make_replies()
                start = time.perf_counter()
                guarded.aggregate_train(1, replies)
                times.append(time.perf_counter() - start)
            row = {"model": model, "strategy": name, "updates": args.sites,
                   "update_mb": to_arrayrecord(updates[0]).count_bytes() / 1e6,
                   "seconds": stats(times)}
            rows.append(row)
            print(f"{model:13s} {name:10s} {args.sites} updates of {row['update_mb']:.2f} MB: validate + aggregate "
                  f"{row['seconds']['median']:.3f} s (min {row['seconds']['min']:.3f}, max {row['seconds']['max']:.3f})")
    return rows


# --- DP-SGD step -----------------------------------------------------------------------------------
def bench_dp(args) -> list[dict]:
    from torch.utils.data import DataLoader, Dataset

    from fedecho.config.federation import PrivacyConfig
    from fedecho.config.train import TrainConfig
    from fedecho.engine.build import build_task_learner
    from fedecho.engine.trainer import Trainer
    from fedecho.privacy import SitePrivacy

    class Images(Dataset):
        def __init__(self, n, size):
            g = torch.Generator().manual_seed(0)
            self.x = torch.rand(n, 1, size, size, generator=g)
            self.y = torch.randint(0, 5, (n,), generator=g)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"image": self.x[i], "label": self.y[i]}

    rows = []
    for model, size, extra in (("vit-s16", 224, []), ("resnet18", 112, ["model.norm=group"]),
                               ("segformer-b0", 256, [])):
        cfg = compose_run_config([f"model={model}", f"model.image_size={size}", "task=view",
                                  f"task.image_size=[{size},{size}]", "encoder=lora", *extra])
        batch = args.batch
        data = Images(batch * args.steps, size)
        results = {}
        for private in (False, True):
            learner = build_task_learner(cfg)
            trainer = Trainer(learner, TrainConfig(lr=1e-3, progress=False, log_every=10**9), total_steps=10**6)
            loader = DataLoader(data, batch_size=batch, shuffle=False)
            if private:
                privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0))
                loader = privacy.attach(trainer, loader, per_sample_loss=True, what=model)
            trainer.train_epoch(loader, max_steps=1)  # warm-up
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                result = trainer.train_epoch(loader)
                times.append((time.perf_counter() - start) / max(1, result.steps))
            results[private] = times
        ratio = statistics.median(results[True]) / statistics.median(results[False])
        row = {"model": model, "batch": batch, "plain_s_per_step": stats(results[False]),
               "dp_s_per_step": stats(results[True]), "ratio": ratio}
        rows.append(row)
        print(f"{model:13s} LoRA, batch {batch}: plain {row['plain_s_per_step']['median']:.3f} s/step, DP-SGD "
              f"{row['dp_s_per_step']['median']:.3f} s/step (Poisson batches, mean size {batch}): ratio {ratio:.2f}")
    return rows


# --- federated vs pooled ---------------------------------------------------------------------------
SMALL = ["data.synthetic_patients=30", "data.synthetic_image_size=64", "model.image_size=64",
         "task.image_size=[64,64]", "train.batch_size=16", "encoder=lora", "task=lv_seg"]


def bench_ratio(args) -> list[dict]:
    from fedecho.engine.data import load_site
    from fedecho.engine.local import train_local
    from fedecho.federation.simulation import simulate

    rows = []
    for sites in args.sites_list:
        with tempfile.TemporaryDirectory() as tmp:
            base = [*SMALL, f"data.root={tmp}/data"]
            cfg = compose_run_config(base)
            n_train = len(load_site(cfg.data).train)
            steps_pooled = args.epochs * -(-n_train // cfg.train.batch_size)
            rounds = args.rounds
            local_steps = max(1, steps_pooled // (rounds * sites))
            pooled_times, fed_times, breakdown = [], [], []
            for rep in range(args.reps):
                start = time.perf_counter()
                pooled = train_local(compose_run_config([*base, f"train.epochs={args.epochs}",
                                                         f"train.out_dir={tmp}/pooled{rep}", "train.progress=false"]))
                pooled_times.append(time.perf_counter() - start)
                pooled_training_s = sum(row["seconds"] for row in pooled["history"])
                result = simulate("federated", [*base, f"federation.num_sites={sites}", "federation.tasks=[lv_seg]",
                                                f"federation.adapt.rounds={rounds}", f"federation.adapt.local_steps={local_steps}",
                                                "federation.central_eval=false", "federation.strategy.fraction_evaluate=0",
                                                f"federation.run_dir={tmp}/fed{rep}"], total_cpus=os.cpu_count())
                fed_times.append(result["seconds"])
                history = json.loads(Path(f"{tmp}/fed{rep}/history.json").read_text())
                train_rounds = [r for r in history if r["phase"].startswith("adapt")]
                site_seconds = sum(s.get("seconds", 0) for r in train_rounds for s in r["sites_train"].values())
                round_seconds = sum(r["seconds"] for r in train_rounds)
                breakdown.append({"site_training_s": site_seconds, "round_wall_s": round_seconds,
                                  "outside_rounds_s": result["seconds"] - round_seconds,
                                  "pooled_training_s": pooled_training_s})
            ratio = statistics.median(fed_times) / statistics.median(pooled_times)
            row = {"sites": sites, "optimizer_steps": local_steps * rounds * sites, "pooled_steps": steps_pooled,
                   "pooled_s": stats(pooled_times), "federated_s": stats(fed_times), "ratio": ratio,
                   "breakdown": breakdown}
            rows.append(row)
            print(f"K={sites}: pooled {row['pooled_s']['median']:.1f} s ({steps_pooled} steps), federated "
                  f"{row['federated_s']['median']:.1f} s ({row['optimizer_steps']} steps in {rounds} rounds): ratio "
                  f"{ratio:.2f}; federated time: site training {breakdown[-1]['site_training_s']:.1f} s (summed over "
                  f"sites), rounds {breakdown[-1]['round_wall_s']:.1f} s wall, outside rounds (Ray start, setup, data) "
                  f"{breakdown[-1]['outside_rounds_s']:.1f} s; pooled training epochs alone "
                  f"{breakdown[-1]['pooled_training_s']:.1f} s (the rest is its per-epoch validation and test)")
    return rows


# --- scale -------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak resident memory of this process and all its descendants (Ray workers), sampled."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.peak = 0
        self._stop = threading.Event()
        self._root = psutil.Process()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_scale(args) -> list[dict]:
    from fedecho.federation.simulation import simulate

    rows = []
    for sites in args.sites_list:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = ["data.synthetic_patients=" + str(max(5 * sites, 30)), "data.synthetic_image_size=48",
                         "model.image_size=32", "task.image_size=[32,32]", "train.batch_size=4", "encoder=lora",
                         "task=view", f"federation.num_sites={sites}", "federation.tasks=[view]",
                         f"federation.adapt.rounds={args.rounds}", "federation.adapt.local_steps=1",
                         "federation.central_eval=false", "federation.strategy.fraction_evaluate=0",
                         f"federation.strategy.min_sites={max(1, sites // 2)}", "data.partition.min_patients=1",
                         f"data.root={tmp}/data", f"federation.run_dir={tmp}/run"]
            with PeakMemory() as memory:
                result = simulate("federated", overrides, total_cpus=os.cpu_count())
            history = json.loads(Path(f"{tmp}/run/history.json").read_text())
            round_s = [r["seconds"] for r in history if r["phase"].startswith("adapt")]
            completed = [len(r["sites_train"]) for r in history if r["phase"].startswith("adapt")]
            row = {"sites": sites, "round_s": stats(round_s), "sites_completed": completed,
                   "total_s": result["seconds"], "peak_rss_gib": memory.peak / 2**30}
            rows.append(row)
            print(f"{sites:4d} sites: round {row['round_s']['median']:.1f} s (min {row['round_s']['min']:.1f}, max "
                  f"{row['round_s']['max']:.1f}; {completed} sites returned), run {result['seconds']:.0f} s, "
                  f"peak RSS {row['peak_rss_gib']:.2f} GiB")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("bytes", "aggregate", "dp", "ratio", "scale"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sites", type=int, default=100, help="aggregate: number of updates")
    parser.add_argument("--sites-list", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--targets", default=None, help="bytes: LoRA target modules, e.g. q_proj,v_proj")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.sites_list is None:
        args.sites_list = [3, 10] if args.what == "ratio" else [10, 30, 100]
    print(f"command: {' '.join(sys.argv)}\nmachine: {machine()}")
    rows = {"bytes": bench_bytes, "aggregate": bench_aggregate, "dp": bench_dp, "ratio": bench_ratio,
            "scale": bench_scale}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
