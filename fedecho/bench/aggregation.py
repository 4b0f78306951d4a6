"""Benchmark 7: the coordinator's time to validate and aggregate 100 LoRA updates.

What :class:`~fedecho.federation.guarded.GuardedStrategy` does in ``aggregate_train`` when 100
sites reply: check every update against the phase's declaration (names, shapes, dtypes,
NaN/Inf, update norm) and run Flower's aggregation (FedAvg, FedAdam, FedMedian, Krum) on the
valid ones. Updates are the ViT-S (224 px) and Segformer-B0 (256 px) LoRA + view-head states
plus small noise; each repetition builds fresh reply messages (outside the timing).
"""

from __future__ import annotations

import time
from typing import Any

from fedecho.bench.common import BenchOptions, Goal, Row, summarize
from fedecho.federation.contract import MetricKey

__all__ = ["AGGREGATION_GOAL", "make_replies", "run"]

AGGREGATION_GOAL = Goal("<", 1.0)


class _Grid:
    """The part of Flower's Grid a strategy's ``configure_train`` asks for: the node ids."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))


def make_replies(updates: list[dict[str, Any]]) -> list[Any]:
    """One Flower train reply per update (node ids 1..N, ``num-examples`` 10)."""
    from flwr.app import Message, MessageType, MetricRecord, RecordDict
    from flwr.app.metadata import Metadata

    from fedecho.federation.arrays import to_arrayrecord

    replies = []
    for node, arrays in enumerate(updates, start=1):
        metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                            group_id="1", created_at=time.time(), ttl=60, message_type=MessageType.TRAIN)
        replies.append(Message(metadata=metadata, content=RecordDict(
            {"arrays": to_arrayrecord(arrays), "metrics": MetricRecord({MetricKey.NUM_EXAMPLES: 10.0})})))
    return replies


def _updates(model: str, size: int, count: int) -> tuple[dict, list[dict]]:
    import numpy as np

    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_task_learner

    cfg = compose_run_config([f"model={model}", f"model.image_size={size}", "task=view",
                              f"task.image_size=[{size},{size}]", "encoder=lora"])
    state = {k: v.numpy() for k, v in build_task_learner(cfg).shared_state_dict().items()}
    rng = np.random.default_rng(0)
    return state, [{k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) for k, v in state.items()}
                   for _ in range(count)]


def run(options: BenchOptions) -> list[Row]:
    from flwr.app import ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from fedecho.config.federation import StrategyConfig
    from fedecho.federation.arrays import to_arrayrecord
    from fedecho.federation.contract import declare
    from fedecho.federation.guarded import GuardedStrategy
    from fedecho.federation.strategies import build_strategy

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # Flower's message ids
    count = 10 if options.quick else 100
    cases = (("segformer-b0", 256),) if options.quick else (("vit-s16", 224), ("segformer-b0", 256))
    strategies = ("fedavg",) if options.quick else ("fedavg", "fedadam", "fedmedian", "krum")
    reps = options.repetitions(3)
    rows = []
    for model, size in cases:
        state, updates = _updates(model, size, count)
        update_mb = to_arrayrecord(updates[0]).count_bytes() / 1e6
        for name in strategies:
            times = []
            for _ in range(reps):
                strategy = build_strategy(StrategyConfig(name=name, min_sites=1), num_sites=count)
                guarded = GuardedStrategy(strategy, phase_name="adapt:view", phase_config={},
                                          declaration=declare(state), min_sites=1, max_update_norm=10.0)
                guarded.configure_train(1, to_arrayrecord(state), ConfigRecord(), _Grid(count))
                replies = make_replies(updates)
                start = time.perf_counter()
                guarded.aggregate_train(1, replies)
                times.append(time.perf_counter() - start)
            rows.append(Row(f"{model} {name}", f"validate + aggregate {count} updates", "s", summarize(times),
                            AGGREGATION_GOAL, details={"update_mb": round(update_mb, 3), "tensors": len(state)},
                            note=f"{count} updates of {update_mb:.2f} MB ({len(state)} tensors)"))
    return rows
