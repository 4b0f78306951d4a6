"""Parameter counts and LoRA adapter sizes of the full-size backbones.

For each backbone: total parameters (frozen base + adapter), trainable parameters after
``apply_lora`` with the backbone's default targets, the adapter's raw bytes (float32 tensors, what a
site sends per round) and its safetensors file size.

    .venv/bin/python benchmarks/adapter_sizes.py [--rank 8] [--alpha 16] [--mlp]

``--mlp`` adds the transformers' MLP layers (``fc1, fc2``) to their attention targets.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace

import peft
import torch
from safetensors.torch import save

from fedecho.adapters import apply_lora, lora_state_dict
from fedecho.config.model import BackboneConfig, LoraConfig
from fedecho.models import build_backbone

BACKBONES = ("segformer-b0", "segformer-b2", "resnet18", "r3d18", "r2plus1d18", "vit-s16")


def measure(name: str, lora: LoraConfig, mlp: bool = False) -> dict[str, object]:
    backbone = build_backbone(BackboneConfig(name=name, image_size=224 if name.startswith("vit") else 112))
    base = sum(p.numel() for p in backbone.parameters())
    if mlp and "q_proj" in backbone.lora_targets:
        lora = replace(lora, target_modules=(*backbone.lora_targets, "fc1", "fc2"))
    apply_lora(backbone, lora, "bench")
    state = lora_state_dict(backbone, "bench")
    return {
        "backbone": name,
        "targets": ",".join(lora.target_modules or backbone.lora_targets),
        "base_params": base,
        "total_params": sum(p.numel() for p in backbone.parameters()),
        "trainable": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
        "adapter_tensors": len(state),
        "adapter_bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "file_bytes": len(save(state)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--mlp", action="store_true", help="also adapt fc1/fc2 of the transformers")
    args = parser.parse_args()
    lora = LoraConfig(rank=args.rank, alpha=args.alpha)
    print(
        f"$ {' '.join(sys.argv)}  ({platform.platform()}, torch {torch.__version__}, peft {peft.__version__})"
    )
    targets = "default targets + fc1/fc2 on transformers" if args.mlp else "default targets"
    print(f"LoRA rank {lora.rank}, alpha {lora.alpha:g}, {targets}, float32")
    header = (
        f"{'backbone':<14} {'base params':>12} {'trainable':>10} {'trainable %':>11} {'tensors':>7} "
        f"{'adapter MB':>10} {'file MB':>8}  targets"
    )
    print(header)
    print("-" * len(header))
    for name in BACKBONES:
        row = measure(name, lora, mlp=args.mlp)
        share = 100.0 * row["trainable"] / row["total_params"]
        print(
            f"{row['backbone']:<14} {row['base_params']:>12,} {row['trainable']:>10,} {share:>10.2f}% "
            f"{row['adapter_tensors']:>7} {row['adapter_bytes'] / 1e6:>10.3f} "
            f"{row['file_bytes'] / 1e6:>8.3f}  {row['targets']}"
        )


if __name__ == "__main__":
    main()
