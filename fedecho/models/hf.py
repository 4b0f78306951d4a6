"""Glue for the transformers backbones: checked config overrides and legacy checkpoint keys.

transformers 5 renamed the attention and MLP layers of Segformer and ViT (``q_proj, k_proj,
v_proj, o_proj, fc1, fc2`` instead of ``attention.self.query``, ``output.dense``, ...).
Checkpoints published before (e.g. MiT-B0, DINO ViT-S/16) use the old keys; transformers' own
conversion table (the one ``from_pretrained`` applies) maps them, and :func:`checkpoint_renamer`
reuses it for local weights files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["checkpoint_renamer", "hf_config"]

#: Config fields a backbone sets from BackboneConfig itself (never via overrides).
_OWNED = {"num_channels": "in_channels", "image_size": "image_size"}


def hf_config(
    name: str, config_cls: type[PretrainedConfig], base: dict[str, Any], overrides: dict[str, Any]
) -> PretrainedConfig:
    """``config_cls(**base, **overrides)`` after checking every override is a field of it.

    transformers configs accept unknown keyword arguments silently; a typo would build the
    default size without a word, so unknown keys raise here, listing the valid ones.
    """
    defaults = config_cls().to_dict()
    for key in overrides:
        if key in _OWNED:
            raise ValueError(
                f"{name}: overrides[{key!r}] is set by BackboneConfig.{_OWNED[key]}; set that instead"
            )
        if key not in defaults:
            valid = ", ".join(sorted(k for k in defaults if not k.startswith("_")))
            raise ValueError(f"{name}: unknown override {key!r}; {config_cls.__name__} fields: {valid}")
    return config_cls(**{**base, **overrides})


def checkpoint_renamer(model: PreTrainedModel) -> Callable[[str], str]:
    """A function mapping a checkpoint key of ``model``'s family to its current name."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # an older transformers: keys are already current
        return lambda key: key
    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]

    def rename(key: str) -> str:
        for renaming in renamings:
            key, _ = renaming.rename_source_key(key)
        return key

    return rename
