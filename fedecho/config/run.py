"""The whole run's configuration: one typed tree with two front ends — Hydra (``conf/``, overrides
on the command line) and Flower's flat run config (``"train.lr" = 0.001``) — both validated by the
same dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedecho.config.data import DataConfig
from fedecho.config.federation import FederationConfig
from fedecho.config.model import LORA_AGGREGATIONS, BackboneConfig, LoraConfig
from fedecho.config.ssl import SSLConfig
from fedecho.config.task import TaskConfig
from fedecho.config.train import TrainConfig

__all__ = ["RunConfig", "flatten", "from_dict", "to_dict", "unflatten"]

_ENCODER_MODES = ("full", "lora", "frozen")


@dataclass
class RunConfig:
    """``fedecho train`` uses ``mode`` (pretrain with ``ssl`` or fine-tune ``task``); federated runs
    use ``federation`` (pretrain phase with ``ssl``, then adapt phases for ``federation.tasks``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    mode: str = "finetune"
    """fedecho train: pretrain (self-supervised, ssl.method) | finetune (supervised task)."""
    encoder: str = "full"
    """How a task treats the encoder: full (train all) | lora (adapter; base frozen) | frozen (probe)."""
    init: str | None = None
    """A checkpoint (``fedecho train`` output, best.pt/last.pt) whose encoder weights start this run."""

    def __post_init__(self) -> None:
        if self.mode not in ("pretrain", "finetune"):
            raise ValueError(f"mode must be pretrain or finetune, got {self.mode!r}")
        if self.encoder not in _ENCODER_MODES:
            raise ValueError(f"encoder {self.encoder!r} is unknown; valid: {', '.join(_ENCODER_MODES)}")
        privacy = self.federation.privacy
        pretraining = self.mode == "pretrain" or self.federation.pretrain.rounds > 0
        coupled = self.ssl.batch_coupled_parts() if privacy.mode == "sample" and pretraining else []
        if coupled:
            fix = "ssl.koleo_weight=0 ssl.centering=softmax, " if self.ssl.method == "dinov2" else ""
            raise ValueError(
                f"privacy.mode=sample (DP-SGD) cannot protect {self.ssl.method} pretraining: its "
                f"{' and '.join(coupled)} couples the samples of a batch. Use federation.privacy.mode=site "
                f"(clipping and noise of site updates at the coordinator), or {fix}ssl.method=dino, or no "
                f"pretraining phase"
            )
        if privacy.mode == "sample" and self.model.norm == "batch" and self.model.name.startswith(("resnet", "r3d", "r2plus1d", "unet")):
            raise ValueError(
                "privacy.mode=sample (DP-SGD) with model.norm=batch: BatchNorm mixes samples; "
                "set model.norm=group"
            )
        aggregation = self.federation.lora_aggregation
        if aggregation not in LORA_AGGREGATIONS:
            raise ValueError(f"federation.lora_aggregation={aggregation!r} is unknown; valid: {', '.join(LORA_AGGREGATIONS)}")
        if aggregation != "fedavg" and self.encoder != "lora":
            raise ValueError(f"federation.lora_aggregation={aggregation} needs encoder=lora; set encoder=lora "
                             f"or federation.lora_aggregation=fedavg")

    def task_config(self, name: str) -> TaskConfig:
        """The task config for ``name``: ``task`` itself, or ``task``'s shared settings under another name."""
        if name == self.task.name:
            return self.task
        return dataclasses.replace(self.task, name=name, classes=None, num_classes=None, label_key=None)


def _dataclass_type(annotation: Any) -> type | None:
    if dataclasses.is_dataclass(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_dict(cls: type, values: Mapping[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from nested dicts; unknown keys are an error that lists valid ones."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s) {unknown}; valid: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        sub = _dataclass_type(hints[name])
        if sub is not None and isinstance(value, Mapping):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value) if "tuple" in str(hints[name]) else value
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (dicts only; lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value and key != "overrides":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1} -> {"train": {"lr": 1}}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config key {key!r} nests under a value")
        node[leaf] = value
    return out
