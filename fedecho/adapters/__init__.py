"""peft LoRA glue: inject adapters into backbones in place, move adapter state (one named adapter per
task; the adapt phase builds a TaskLearner through :func:`apply_lora`).

>>> from fedecho.config.model import BackboneConfig, LoraConfig
>>> from fedecho.models import build_backbone
>>> backbone = apply_lora(build_backbone(BackboneConfig(name="vit-tiny")), LoraConfig(rank=4), "view")
>>> sorted(lora_state_dict(backbone, "view"))[0]
'model.layers.0.attention.k_proj.lora_A.weight'
"""

from fedecho.adapters.lora import (
    AdapterStateError,
    adapter_names,
    apply_lora,
    check_lora_targets,
    compare_state_dicts,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    set_active_adapter,
)

__all__ = [
    "AdapterStateError",
    "adapter_names",
    "apply_lora",
    "check_lora_targets",
    "compare_state_dicts",
    "load_lora_state_dict",
    "lora_parameters",
    "lora_state_dict",
    "set_active_adapter",
]
