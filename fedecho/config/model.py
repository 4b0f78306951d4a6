"""Typed configuration of backbones (:class:`BackboneConfig`) and LoRA adapters (:class:`LoraConfig`).

Both validate themselves in ``__post_init__``; every error names the field and the fix.
:func:`fedecho.models.build_backbone` builds a backbone from a :class:`BackboneConfig`;
:func:`fedecho.adapters.apply_lora` takes a :class:`LoraConfig`. This module imports nothing heavier
than the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BACKBONE_NAMES",
    "NORM_KINDS",
    "WEIGHT_SUFFIXES",
    "LORA_AGGREGATIONS",
    "BackboneConfig",
    "LoraConfig",
]

#: Names :data:`fedecho.models.BACKBONES` registers (a test keeps the two equal). The ``*-tiny``
#: variants run the same code with small sizes, for tests and the demo.
BACKBONE_NAMES: tuple[str, ...] = (
    "segformer-b0",
    "segformer-b2",
    "segformer-tiny",
    "resnet18",
    "r3d18",
    "r3d-tiny",
    "r2plus1d18",
    "r2plus1d-tiny",
    "vit-s16",
    "vit-tiny",
    "unet",
    "unet-tiny",
)

#: Normalisation layers a CNN backbone can use. "group" (or "instance" / "layer") normalises each
#: sample on its own, as DP-SGD needs; "batch" mixes the samples of a batch in training mode.
NORM_KINDS: tuple[str, ...] = ("batch", "group", "instance", "layer")

#: ``federation.lora_aggregation``: how sites federate a LoRA adapter (fedecho.adapters.lora).
LORA_AGGREGATIONS: tuple[str, ...] = ("fedavg", "ffa", "fedsa")

#: File suffixes :func:`fedecho.models.weights.read_state_dict` reads.
WEIGHT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".safetensors")

_PATCH_SIZE = {"vit-s16": 16, "vit-tiny": 16}


@dataclass
class BackboneConfig:
    """Which backbone to build, for which input, with which norms and (optionally) weights."""

    name: str = "resnet18"
    """Registry name, one of :data:`BACKBONE_NAMES`."""
    in_channels: int = 1
    """Input channels; echo is grayscale (1). Weights files with an RGB first convolution are
    mapped to 1 channel by summing their three input-channel kernels."""
    image_size: int = 112
    """Nominal input side in pixels (EchoNet's 112). The ViT sizes its position embeddings for it
    and interpolates them for other inputs (sides must be multiples of 16); CNNs and Segformer
    take any size."""
    norm: str = "batch"
    """CNN normalisation layers, one of :data:`NORM_KINDS`; use "group" with DP-SGD. Transformer
    backbones (Segformer, ViT) only have LayerNorm, which is already per sample: any value leaves
    them unchanged."""
    weights: str | None = None
    """Local weights file (.pt / .pth / .safetensors), or None for random initialisation.
    Never a hub name: nothing is downloaded."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Size overrides: transformers config fields for Segformer / ViT (e.g. ``{"depths": [1, 1,
    1, 1]}``), ``{"layers": [2, 2, 2, 2]}`` (blocks per stage) for the ResNets, ``{"width": 32, "depth": 4}``
    for the U-Net."""
    seed: int = 0
    """Seed of the random initialisation (the global torch generator is left untouched)."""

    def __post_init__(self) -> None:
        if self.name not in BACKBONE_NAMES:
            raise ValueError(
                f"BackboneConfig.name={self.name!r} is unknown; choose one of {', '.join(BACKBONE_NAMES)}"
            )
        if (
            isinstance(self.in_channels, bool)
            or not isinstance(self.in_channels, int)
            or self.in_channels < 1
        ):
            raise ValueError(
                f"BackboneConfig.in_channels={self.in_channels!r} must be a positive integer "
                f"(1 for grayscale echo)"
            )
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"BackboneConfig.image_size={self.image_size!r} must be a positive integer")
        patch = _PATCH_SIZE.get(self.name)
        if patch is not None and self.image_size % patch:
            raise ValueError(
                f"BackboneConfig.image_size={self.image_size} is not a multiple of {self.name}'s patch "
                f"size {patch}; use e.g. {max(patch, round(self.image_size / patch) * patch)}"
            )
        if self.norm not in NORM_KINDS:
            raise ValueError(
                f"BackboneConfig.norm={self.norm!r} is unknown; choose one of {', '.join(NORM_KINDS)} "
                f"('group' for DP-SGD)"
            )
        if self.weights is not None:
            if not isinstance(self.weights, str) or not self.weights:
                raise ValueError(f"BackboneConfig.weights={self.weights!r} must be a local file path or None")
            if Path(self.weights).suffix.lower() not in WEIGHT_SUFFIXES:
                raise ValueError(
                    f"BackboneConfig.weights={self.weights!r} is not a weights file; give a local "
                    f"{' / '.join(WEIGHT_SUFFIXES)} file (hub names are not downloaded)"
                )
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) for k in self.overrides):
            raise ValueError(
                f"BackboneConfig.overrides={self.overrides!r} must be a dict with string keys, "
                f"e.g. {{'depths': [1, 1, 1, 1]}}"
            )
        self.overrides = dict(self.overrides)
        _check_seed("BackboneConfig", self.seed)


@dataclass
class LoraConfig:
    """A LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    The update of a frozen weight W is ``(alpha / rank) * B @ A`` with ``A`` (rank, in) and
    ``B`` (out, rank); ``B`` starts at zero so a new adapter leaves the backbone's outputs unchanged.
    """

    rank: int = 8
    """Rank r of the update (the Segformer seed used 2)."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / rank (the Segformer seed used 8)."""
    dropout: float = 0.0
    """Dropout on the adapter's input, in [0, 1)."""
    target_modules: tuple[str, ...] | None = None
    """peft target names (module-name suffixes); None = the backbone's ``lora_targets``
    (attention projections for transformers, convolutions for CNNs)."""
    seed: int = 0
    """Seed of the adapter's random initialisation (the global torch generator is left untouched)."""

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraConfig.rank={self.rank!r} must be a positive integer (e.g. 8)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoraConfig.alpha={self.alpha!r} must be a positive number (e.g. 2 * rank)")
        self.alpha = float(self.alpha)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not (0.0 <= self.dropout < 1.0)
        ):
            raise ValueError(f"LoraConfig.dropout={self.dropout!r} must lie in [0, 1); use 0 for none")
        self.dropout = float(self.dropout)
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                raise ValueError(
                    f"LoraConfig.target_modules={self.target_modules!r} must be a list of module "
                    f"names, e.g. [{self.target_modules!r}]"
                )
            targets = tuple(self.target_modules)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    f"LoraConfig.target_modules={self.target_modules!r} must be a non-empty list of "
                    f"non-empty names (e.g. ['q_proj', 'v_proj']), or None for the backbone's default"
                )
            self.target_modules = targets
        _check_seed("LoraConfig", self.seed)


def _check_seed(owner: str, seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{owner}.seed={seed!r} must be a non-negative integer")
