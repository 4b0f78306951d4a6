"""Concrete learners: a task head on a backbone (full fine-tuning, LoRA adapter, or frozen probe),
and a self-supervised pretraining method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fedecho.engine.learner import Learner

__all__ = ["ENCODER_MODES", "PretrainLearner", "TaskLearner", "is_norm_layer"]

#: How a task treats the encoder: train it all, train a LoRA adapter on it, or keep it frozen.
ENCODER_MODES = ("full", "lora", "frozen")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def is_norm_layer(module: nn.Module) -> bool:
    return isinstance(module, _NORMS)


def _norm_names(module: nn.Module, prefix: str) -> set[str]:
    """State-dict names of every normalisation layer's tensors under ``module``."""
    names = set()
    for name, sub in module.named_modules():
        if is_norm_layer(sub):
            names.update(f"{prefix}{name}.{k}" for k in sub.state_dict())
    return names


class TaskLearner(Learner):
    """A task (fedecho.tasks) with its head on a backbone.

    ``encoder``: ``full`` trains and shares the whole backbone and head; ``lora`` expects LoRA
    already injected into the backbone (base frozen) and shares the adapter tensors and the head;
    ``frozen`` trains and shares only the head (a linear probe when the head is linear).
    With a frozen base, the backbone's normalisation layers are kept in eval mode: BatchNorm in
    train mode would update running statistics that mix samples (and break DP-SGD's guarantee).
    ``local_norms`` (FedBN, Li et al. 2021) keeps normalisation tensors on the site.
    """

    def __init__(self, backbone: nn.Module, task: Any, head: nn.Module, *, encoder: str = "full",
                 local_norms: bool = False) -> None:
        super().__init__()
        if encoder not in ENCODER_MODES:
            raise ValueError(f"encoder mode {encoder!r} is unknown; valid: {', '.join(ENCODER_MODES)}")
        task.check_backbone(backbone)
        self.backbone = backbone
        self.head = head
        self.task = task
        self.encoder = encoder
        if encoder == "frozen":
            for p in backbone.parameters():
                p.requires_grad_(False)
        elif encoder == "lora":
            lora = [n for n, p in backbone.named_parameters() if "lora_" in n]
            if not lora:
                raise ValueError("encoder=lora but the backbone has no LoRA parameters; apply the adapter first")
            stray = [n for n, p in backbone.named_parameters() if p.requires_grad and "lora_" not in n]
            if stray:
                raise ValueError(f"encoder=lora but base weights are trainable: {stray[:5]}; freeze the base")
        self._local = _norm_names(self, "") if local_norms else set()
        self.selection = (task.primary_metric, task.metric_directions[task.primary_metric])

    def train(self, mode: bool = True) -> TaskLearner:
        super().train(mode)
        if mode and self.encoder != "full":
            for module in self.backbone.modules():
                if is_norm_layer(module):
                    module.eval()
        return self

    def is_shared(self, name: str) -> bool:
        if name in self._local:
            return False
        if name.startswith("head."):
            return True
        if not name.startswith("backbone."):
            return False
        if self.encoder == "full":
            return True
        if self.encoder == "lora":
            return "lora_" in name
        return False

    def _kept_local(self, name: str) -> bool:
        # a frozen (or LoRA-adapted) encoder comes from the coordinator's setup message: only its
        # FedBN norms are the site's own
        return self.encoder == "full" or not name.startswith("backbone.") or name in self._local

    def predict(self, batch: Mapping[str, Any]) -> Tensor:
        return self.task.forward(self.backbone, self.head, batch)

    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        outputs = self.predict(batch)
        return self.task.loss(outputs, batch), {}

    def metrics(self, outputs: Tensor, batch: Mapping[str, Any]) -> dict[str, float]:
        return self.task.metrics(outputs, batch)


class PretrainLearner(Learner):
    """A self-supervised method (fedecho.ssl) whose encoder (student) is federated.

    What travels: the method's :meth:`~fedecho.ssl.methods.PretrainMethod.shared_parameter_names`
    and the buffers of the same modules (BatchNorm running statistics travel with their weights, so
    the aggregated encoder is usable as is). Everything else (DINO teacher, centre) is local.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method
        self._shared = {f"method.{n}" for n in method.shared_parameter_names()}
        self._shared_prefixes = tuple(n.rsplit(".", 1)[0] + "." for n in self._shared)

    def is_shared(self, name: str) -> bool:
        if name in self._shared:
            return True
        # buffers (e.g. BatchNorm running stats) of shared modules travel with their weights
        return not name.endswith(("weight", "bias")) and name.startswith(self._shared_prefixes)

    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        return self.method.loss(batch)

    def after_optimizer_step(self) -> None:
        self.method.after_optimizer_step()

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        groups = getattr(self.method, "optimizer_groups", None)
        return groups(lr, weight_decay) if groups is not None else None

    def before_optimizer_step(self, optimizer: Any) -> None:
        hook = getattr(self.method, "before_optimizer_step", None)
        if hook is not None:
            hook(optimizer)
