"""Segformer's Mix Transformer encoder (Xie et al. 2021, "SegFormer: Simple and Efficient Design
for Semantic Segmentation with Transformers") for grayscale echo, as in the Segformer + LoRA seed.

transformers' ``SegformerModel`` (the MiT encoder, no decode head) with ``num_channels=1``.
Four stages at strides (4, 8, 16, 32) give the feature maps (MiT-B0 channels 32, 64, 160, 256;
B2 64, 128, 320, 512); the embedding is the global average of the last map. A side that is not a
multiple of 32 gives maps of ceil(side / stride).

LoRA targets the attention projections ``q_proj, k_proj, v_proj, o_proj`` (the names transformers
5 uses; the seed's ``query``/``value``/``dense`` no longer exist). The Mix-FFN's depthwise
``dwconv`` cannot take LoRA (peft needs the rank divisible by the groups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from transformers import SegformerConfig, SegformerModel

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone
from fedecho.models.hf import checkpoint_renamer, hf_config

__all__ = ["SEGFORMER_VARIANTS", "SegformerBackbone"]

#: SegformerConfig fields per variant (MiT-B0 / B2 as in Xie et al. 2021, Table 6).
SEGFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "segformer-b0": {
        "hidden_sizes": [32, 64, 160, 256],
        "depths": [2, 2, 2, 2],
        "num_attention_heads": [1, 2, 5, 8],
        "decoder_hidden_size": 256,
    },
    "segformer-b2": {
        "hidden_sizes": [64, 128, 320, 512],
        "depths": [3, 4, 6, 3],
        "num_attention_heads": [1, 2, 5, 8],
        "decoder_hidden_size": 768,
    },
    "segformer-tiny": {
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 1, 1],
        "num_attention_heads": [1, 2, 2, 4],
        "mlp_ratios": [2, 2, 2, 2],
        "decoder_hidden_size": 32,
    },
}


class SegformerBackbone(Backbone):
    """MiT encoder over (B, in_channels, H, W); ``self.model`` is a ``SegformerModel``."""

    first_conv_key = "stages.0.patch_embeddings.proj.weight"
    head_weight_prefixes = ("decode_head.", "classifier.")

    def __init__(self, cfg: BackboneConfig, *, name: str) -> None:
        config = hf_config(
            name,
            SegformerConfig,
            {**SEGFORMER_VARIANTS[name], "num_channels": cfg.in_channels},
            cfg.overrides,
        )
        if not config.reshape_last_stage:
            raise ValueError(f"{name}: overrides['reshape_last_stage']=False is not supported; drop it")
        strides, total = [], 1
        for stride in config.strides:
            total *= stride
            strides.append(total)
        super().__init__(
            name=name,
            model=SegformerModel(config),
            input_kind="image",
            in_channels=cfg.in_channels,
            embed_dim=config.hidden_sizes[-1],
            feature_channels=tuple(config.hidden_sizes),
            feature_strides=tuple(strides),
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        )

    def _features(self, x: Tensor) -> list[Tensor]:
        # hidden_states: one (B, C_i, H_i, W_i) map per stage (stage outputs, after its LayerNorm)
        return list(self.model(pixel_values=x, output_hidden_states=True).hidden_states)

    def _embed(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).last_hidden_state.mean(dim=(2, 3))

    def checkpoint_key_renamer(self) -> Callable[[str], str]:
        return checkpoint_renamer(self.model)
