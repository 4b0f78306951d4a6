"""Benchmark 2: bytes a site sends per round in an adapter phase vs sending the full encoder.

Sizes are the serialized Flower ``ArrayRecord`` (what goes on the wire, each way). Per backbone:
the rank-8 LoRA adapter on its default targets (attention q/k/v/o for transformers, every
convolution for CNNs) and, for transformers, on q/v only (the LoRA paper's choice). Per task
(ViT-S view, Segformer-B0 LV segmentation): everything the phase declares (adapter + head), which
is what a site really sends. Sizes are exact, so each row holds one value.
"""

from __future__ import annotations

from fedecho.bench.common import BenchOptions, Goal, Row, summarize

__all__ = ["ADAPTER_SHARE_GOAL", "adapter_bytes", "run"]

#: Issue #7: an adapter round costs at most 1 % of sending the encoder.
ADAPTER_SHARE_GOAL = Goal("<=", 0.01)

_BACKBONES = ("segformer-b0", "segformer-b2", "resnet18", "r3d18", "r2plus1d18", "vit-s16")
_QUICK_BACKBONES = ("resnet18", "segformer-b0")
_TASKS = (("vit-s16", 224, "view"), ("segformer-b0", 256, "lv_seg"))


def adapter_bytes(name: str, targets: tuple[str, ...] | None = None) -> dict[str, int]:
    """Serialized bytes of backbone ``name``'s encoder and of its rank-8 LoRA adapter."""
    from fedecho.adapters import apply_lora, lora_state_dict
    from fedecho.config.model import BackboneConfig, LoraConfig
    from fedecho.federation.arrays import to_arrayrecord
    from fedecho.models import build_backbone

    backbone = build_backbone(BackboneConfig(name=name, image_size=224 if name.startswith("vit") else 112))
    encoder = to_arrayrecord(backbone.state_dict()).count_bytes()
    apply_lora(backbone, LoraConfig(rank=8, target_modules=targets), "bench")
    adapter = to_arrayrecord(lora_state_dict(backbone, "bench")).count_bytes()
    return {"encoder_bytes": encoder, "adapter_bytes": adapter,
            "targets": ",".join(targets or backbone.lora_targets)}


def _row(case: str, sizes: dict, sent_key: str, what: str) -> Row:
    share = sizes[sent_key] / sizes["encoder_bytes"]
    return Row(case, f"{what} / encoder bytes", "fraction", summarize([share]), ADAPTER_SHARE_GOAL,
               details={k: v for k, v in sizes.items()},
               note=f"{sizes[sent_key] / 1e6:.3f} MB vs {sizes['encoder_bytes'] / 1e6:.1f} MB")


def _task_sizes(model: str, size: int, task: str) -> dict[str, int]:
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_task_learner
    from fedecho.federation.arrays import to_arrayrecord

    cfg = compose_run_config([f"model={model}", f"model.image_size={size}", f"task={task}",
                              f"task.image_size=[{size},{size}]", "encoder=lora", "lora.rank=8"])
    learner = build_task_learner(cfg)
    encoder = {k: v for k, v in learner.backbone.state_dict().items() if "lora_" not in k}
    return {"encoder_bytes": to_arrayrecord(encoder).count_bytes(),
            "declared_bytes": to_arrayrecord(learner.shared_state_dict()).count_bytes()}


def run(options: BenchOptions) -> list[Row]:
    rows = []
    for name in _QUICK_BACKBONES if options.quick else _BACKBONES:
        rows.append(_row(name, adapter_bytes(name), "adapter_bytes", "LoRA r8 (default targets)"))
        if name.startswith(("vit", "segformer")) and not options.quick:
            rows.append(_row(name, adapter_bytes(name, ("q_proj", "v_proj")), "adapter_bytes", "LoRA r8 q/v"))
    if not options.quick:
        for model, size, task in _TASKS:
            rows.append(_row(f"{model} {task}", _task_sizes(model, size, task), "declared_bytes",
                             "adapter phase (LoRA + head)"))
    return rows
