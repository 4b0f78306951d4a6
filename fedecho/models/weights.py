"""Load a local weights file (.pt / .pth / .safetensors) into a backbone, strictly.

Accepted layouts (keys relative to ``backbone.model``, the torchvision / transformers network):

- a plain state dict, or one wrapped under "state_dict" / "model_state_dict" / "model" /
  "teacher" (training checkpoints, DINO);
- keys with extra prefixes such as ``module.`` (DistributedDataParallel), ``model.`` (a FedEcho
  backbone's own ``state_dict()``), ``backbone.``, ``encoder.`` or the transformers base prefix
  (``segformer.``, ``vit.``): a prefix is stripped when that makes more keys match;
- transformers checkpoints of older releases (``attention.self.query`` ...), renamed through
  transformers' own conversion table.

Adaptations: an RGB first convolution becomes grayscale by summing its input-channel kernels;
ViT position embeddings of another grid are interpolated. Keys of classification heads the
backbone drops (e.g. ResNet ``fc.*``) are skipped. Anything else that does not fit — a missing
key, an unexpected key, a shape that cannot be adapted — fails with one
:class:`WeightsFileError` naming the file and listing every problem.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fedecho.config.model import WEIGHT_SUFFIXES
from fedecho.models.base import Backbone

__all__ = [
    "WeightsFileError",
    "WeightsReport",
    "apply_weights",
    "has_batch_norm_statistics",
    "load_weights",
    "read_state_dict",
]

log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model_state_dict", "model", "teacher")
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "_orig_mod.")
_OPTIONAL = ("num_batches_tracked",)  # older torchvision checkpoints lack BatchNorm's counter
_MAX_LISTED = 20


class WeightsFileError(ValueError):
    """A weights file that cannot be read or does not fit the backbone; names the file."""


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`apply_weights` did: keys loaded, adapted (subset of loaded) and skipped."""

    source: str
    loaded: tuple[str, ...]
    adapted: tuple[str, ...]
    ignored: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors ({len(self.adapted)} adapted: "
            f"{', '.join(self.adapted) or 'none'}; {len(self.ignored)} head tensors skipped)"
        )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` mapping stored in a local weights file (on CPU)."""
    path = Path(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise WeightsFileError(
            f"{path}: unsupported weights file type {path.suffix!r}; use {', '.join(WEIGHT_SUFFIXES)}"
        )
    if not path.is_file():
        raise WeightsFileError(f"{path}: weights file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear error
        raise WeightsFileError(
            f"{path}: not a readable weights file ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            f"save weights with torch.save(model.state_dict(), path) or safetensors"
        ) from err
    return _flatten(raw, path)


def _flatten(raw: object, path: Path) -> dict[str, Tensor]:
    for _ in range(4):  # unwrap at most a few levels of {"model": {"state_dict": ...}}
        if not isinstance(raw, Mapping):
            raise WeightsFileError(f"{path}: holds a {type(raw).__name__}, not a state dict (name -> tensor)")
        if raw and all(isinstance(v, Tensor) for v in raw.values()):
            return {str(k): v for k, v in raw.items()}
        wrapper = next((k for k in _WRAPPERS if isinstance(raw.get(k), Mapping)), None)
        if wrapper is None:
            break
        raw = raw[wrapper]
    keys = ", ".join(map(str, list(raw)[:10])) if isinstance(raw, Mapping) else ""
    raise WeightsFileError(
        f"{path}: no state dict found (top-level keys: {keys or 'none'}); expected name -> tensor, "
        f"possibly under one of {', '.join(_WRAPPERS)}"
    )


def has_batch_norm_statistics(state: Mapping[str, Tensor]) -> bool:
    """True if ``state`` carries BatchNorm running statistics (a BatchNorm-trained network)."""
    return any(key.endswith("running_mean") for key in state)


def _match_prefixes(
    state: dict[str, Tensor], targets: set[str], rename: Callable[[str], str], prefixes: tuple[str, ...]
) -> dict[str, Tensor]:
    """Rename keys, stripping whichever prefixes increase the number of keys found in ``targets``."""

    def renamed(candidate: dict[str, Tensor]) -> dict[str, Tensor]:
        return {rename(k): v for k, v in candidate.items()}

    def strip(candidate: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in candidate.items()}

    current, best = state, renamed(state)
    score = len(targets & best.keys())
    improved = True
    while improved:
        improved = False
        for prefix in prefixes:
            if not any(k.startswith(prefix) for k in current):
                continue
            stripped = strip(current, prefix)
            candidate = renamed(stripped)
            if len(targets & candidate.keys()) > score:
                current, best, score, improved = stripped, candidate, len(targets & candidate.keys()), True
    return best


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  - {label} ({len(items)}): {shown}{more}"


def apply_weights(backbone: Backbone, state: Mapping[str, Tensor], source: str) -> WeightsReport:
    """Copy ``state`` into ``backbone.model`` strictly (see the module docstring)."""
    target = backbone.model.state_dict()
    base_prefix = getattr(backbone.model, "base_model_prefix", "")
    prefixes = _PREFIXES + ((base_prefix + ".",) if base_prefix else ())
    matched = _match_prefixes(dict(state), set(target), backbone.checkpoint_key_renamer(), prefixes)

    ignored = sorted(k for k in matched if k not in target and k.startswith(backbone.head_weight_prefixes))
    unexpected = sorted(k for k in matched if k not in target and k not in ignored)
    missing = sorted(k for k in target if k not in matched and not k.endswith(_OPTIONAL))
    mismatched, adapted, values = [], [], {}
    for key in sorted(k for k in matched if k in target):
        value, wanted = matched[key], target[key]
        if value.shape != wanted.shape:
            changed = backbone.adapt_weight(key, value, wanted)
            if changed is None or changed.shape != wanted.shape:
                mismatched.append(f"{key} {tuple(value.shape)} (model: {tuple(wanted.shape)})")
                continue
            value = changed
            adapted.append(key)
        if value.is_floating_point() != wanted.is_floating_point():
            mismatched.append(f"{key} dtype {value.dtype} (model: {wanted.dtype})")
            continue
        values[key] = value
    problems = []
    if missing:
        problems.append(_listing("missing from the file", missing))
    if unexpected:
        problems.append(_listing("unexpected in the file", unexpected))
    if mismatched:
        problems.append(_listing("shapes that do not fit", mismatched))
    if problems:
        raise WeightsFileError(
            f"{source}: does not fit backbone {backbone.name!r} "
            f"(in_channels={backbone.in_channels}):\n" + "\n".join(problems)
        )
    with torch.no_grad():
        for key, value in values.items():
            target[key].copy_(value.to(dtype=target[key].dtype))
    report = WeightsReport(source, tuple(sorted(values)), tuple(adapted), tuple(ignored))
    log.info("%s", report)
    return report


def load_weights(backbone: Backbone, path: str | Path) -> WeightsReport:
    """Read ``path`` (:func:`read_state_dict`) and load it into ``backbone`` (:func:`apply_weights`)."""
    return apply_weights(backbone, read_state_dict(path), str(path))
