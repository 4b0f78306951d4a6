"""ViT-S/16 (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"; small size from Touvron et
al. 2021, DeiT) for grayscale echo, the encoder of EchoApex-style DINO (Caron et al. 2021).

transformers' ``ViTModel`` (no pooler) with ``num_channels=1``: hidden 384, 12 layers, 6 heads,
MLP 1536, patch 16. Position embeddings are sized for ``BackboneConfig.image_size`` and
interpolated (bicubic) for any other input whose sides are multiples of 16.

- ``forward_embed``: the CLS token after the final LayerNorm, (B, hidden).
- ``forward_features``: the patch tokens of 4 evenly spaced layers (layers 3, 6, 9, 12 of 12, as
  DPT / ViTDet-style necks take them), each reshaped to (B, hidden, H / 16, W / 16).

LoRA targets the attention projections ``q_proj, k_proj, v_proj, o_proj`` (transformers 5 names).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from transformers import ViTConfig, ViTModel

from fedecho.config.model import BackboneConfig
from fedecho.models.base import Backbone
from fedecho.models.hf import checkpoint_renamer, hf_config

__all__ = ["VIT_VARIANTS", "ViTBackbone", "feature_layers"]

#: ViTConfig fields per variant.
VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "vit-s16": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
    "vit-tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
}
_POSITION_KEY = "embeddings.position_embeddings"


def feature_layers(num_layers: int, count: int = 4) -> tuple[int, ...]:
    """``count`` evenly spaced layer numbers (1-based, last one included): 12 -> (3, 6, 9, 12)."""
    if num_layers < count:
        raise ValueError(f"a ViT needs at least {count} layers for {count} feature maps; got {num_layers}")
    return tuple(round(num_layers * (k + 1) / count) for k in range(count))


class ViTBackbone(Backbone):
    """ViT over (B, in_channels, H, W), H and W multiples of the patch size; ``self.model`` is a
    ``ViTModel``."""

    first_conv_key = "embeddings.patch_embeddings.projection.weight"
    head_weight_prefixes = ("pooler.", "classifier.")

    def __init__(self, cfg: BackboneConfig, *, name: str) -> None:
        base = {
            **VIT_VARIANTS[name],
            "patch_size": 16,
            "num_channels": cfg.in_channels,
            "image_size": cfg.image_size,
        }
        config = hf_config(name, ViTConfig, base, cfg.overrides)
        if cfg.image_size % config.patch_size:
            raise ValueError(
                f"{name}: image_size={cfg.image_size} is not a multiple of the patch size {config.patch_size}"
            )
        layers = feature_layers(config.num_hidden_layers)
        super().__init__(
            name=name,
            model=ViTModel(config, add_pooling_layer=False),
            input_kind="image",
            in_channels=cfg.in_channels,
            embed_dim=config.hidden_size,
            feature_channels=(config.hidden_size,) * len(layers),
            feature_strides=(config.patch_size,) * len(layers),
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        )
        self.patch_size: int = config.patch_size
        self.layers: tuple[int, ...] = layers

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{self.name} needs input sides that are multiples of {self.patch_size}; "
                f"got {height}x{width} "
                f"(resize or pad, e.g. to {math.ceil(height / self.patch_size) * self.patch_size}x"
                f"{math.ceil(width / self.patch_size) * self.patch_size})"
            )

    def _run(self, x: Tensor, hidden_states: bool):
        return self.model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=hidden_states)

    def _embed(self, x: Tensor) -> Tensor:
        return self._run(x, hidden_states=False).last_hidden_state[:, 0]

    def _features(self, x: Tensor) -> list[Tensor]:
        batch = x.shape[0]
        rows, cols = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        states = self._run(x, hidden_states=True).hidden_states  # embeddings + one per layer
        # drop the CLS token; (B, rows * cols, D) -> (B, D, rows, cols)
        return [
            states[layer][:, 1:].transpose(1, 2).reshape(batch, self.embed_dim, rows, cols)
            for layer in self.layers
        ]

    def checkpoint_key_renamer(self) -> Callable[[str], str]:
        return checkpoint_renamer(self.model)

    def adapt_weight(self, key: str, value: Tensor, target: Tensor) -> Tensor | None:
        """Adds to the base rule: position embeddings of another square grid are resized
        (bicubic, as transformers interpolates them at run time)."""
        if key == _POSITION_KEY and value.dim() == 3 and value.shape[-1] == target.shape[-1]:
            source_side, target_side = math.isqrt(value.shape[1] - 1), math.isqrt(target.shape[1] - 1)
            if source_side**2 == value.shape[1] - 1 and target_side**2 == target.shape[1] - 1:
                dim = value.shape[-1]
                grid = value[:, 1:].reshape(1, source_side, source_side, dim).permute(0, 3, 1, 2)
                grid = nn.functional.interpolate(
                    grid.float(), size=(target_side, target_side), mode="bicubic", align_corners=False
                )
                grid = grid.permute(0, 2, 3, 1).reshape(1, target_side * target_side, dim).to(value.dtype)
                return torch.cat([value[:, :1], grid], dim=1)
            return None
        return super().adapt_weight(key, value, target)
