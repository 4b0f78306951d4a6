"""Build what a site trains from the run configuration: a task learner (full, LoRA adapter or
frozen probe) or a pretraining learner. The coordinator builds the same learners to know each
phase's declared tensors and their initial values, so both sides must agree: everything here is a
pure function of the configuration (seeded initialisation)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from fedecho.config.run import RunConfig
from fedecho.engine.learners import PretrainLearner, TaskLearner

__all__ = ["build_pretrain_learner", "build_task_learner", "encoder_state_from_checkpoint", "load_encoder",
           "plain_encoder_state"]

log = logging.getLogger(__name__)


def _backbone(cfg: RunConfig):
    from fedecho.models import build_backbone

    return build_backbone(cfg.model)


def load_encoder(backbone: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load encoder (backbone) weights strictly: every key and shape must match."""
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"encoder weights do not fit {type(backbone).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong[:5]} (were they saved with another model.name?)"
        )
    backbone.load_state_dict(dict(state))


def plain_encoder_state(learner_state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The encoder (backbone) weights under ``prefix`` of a learner's state dict, without LoRA, in
    the plain backbone's key names (the one place encoder keys are renamed)."""
    state = {k[len(prefix):]: v for k, v in learner_state.items() if k.startswith(prefix) and "lora_" not in k}
    # peft wraps adapted layers as <layer>.base_layer.<param>; the plain backbone has <layer>.<param>
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def encoder_state_from_checkpoint(path: str) -> dict[str, Tensor]:
    """The backbone weights inside a ``fedecho train`` checkpoint (task or pretraining learner)."""
    from fedecho.engine.checkpoint import load_checkpoint

    learner_state = load_checkpoint(path)["learner"]
    for prefix in ("backbone.", "method.backbone."):
        state = plain_encoder_state(learner_state, prefix)
        if state:
            return state
    raise ValueError(f"checkpoint {path} holds no encoder (no backbone.* tensors)")


def build_task_learner(
    cfg: RunConfig,
    task_name: str | None = None,
    *,
    encoder_state: Mapping[str, Tensor] | None = None,
) -> TaskLearner:
    """Backbone (+ encoder weights) (+ LoRA adapter named after the task) + the task's head."""
    from fedecho.tasks import build_task

    task = build_task(cfg.task_config(task_name or cfg.task.name))
    backbone = _backbone(cfg)
    task.check_backbone(backbone)
    if encoder_state is not None:
        load_encoder(backbone, encoder_state)
    if cfg.encoder == "lora":
        from fedecho.adapters import apply_lora

        apply_lora(backbone, cfg.lora, task.name)
    with torch.random.fork_rng():  # the head's initialisation: the same on every site
        torch.manual_seed(cfg.model.seed + 1)
        head = task.build_head(backbone)
    learner = TaskLearner(backbone, task, head, encoder=cfg.encoder,
                          local_norms=cfg.federation.strategy.local_norms)
    if cfg.encoder == "lora":  # which LoRA factors travel (fedecho.adapters.lora)
        from fedecho.adapters.lora import configure_lora_aggregation

        configure_lora_aggregation(learner, cfg.federation.lora_aggregation)
    return learner


def build_pretrain_learner(cfg: RunConfig) -> PretrainLearner:
    from fedecho.ssl import build_method

    backbone = _backbone(cfg)
    with torch.random.fork_rng():  # projection / DINO heads: the same on every site
        torch.manual_seed(cfg.model.seed + 2)
        return PretrainLearner(build_method(backbone, cfg.ssl))
