"""Dict-level transform machinery: example checks, the transform base classes, composition.

An *example* is a dict with some of these keys (the FedEcho data contract); other keys (labels,
ids) pass through untouched:

==========  ==========================================================================
``image``   float (C, H, W), intensities in [0, 1] before normalisation
``clip``    float (C, T, H, W)
``mask``    integer (H, W) label map (any leading dims allowed: (..., H, W))
``points``  float (K, 2) pixel coordinates (x, y); integer coordinates are pixel centres
==========  ==========================================================================

Values may be numpy arrays or torch tensors; a transform returns each key in the type it was
given. Random transforms (:class:`ParamTransform` subclasses) split *sampling* their parameters
from a passed generator (``sample``) from *applying* them (``apply``), so the same parameters can
be replayed, logged or tested (MONAI's ``Randomizable`` idea).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedecho.transforms.sampling import RandomGenerator, bernoulli, check_generator

__all__ = [
    "INTENSITY_KEYS",
    "SPATIAL_KEYS",
    "Compose",
    "Example",
    "ParamTransform",
    "RandomApply",
    "Transform",
    "check_example",
    "spatial_size",
]

Example = dict[str, Any]

#: Keys that carry pixel intensities (intensity transforms touch only these).
INTENSITY_KEYS: tuple[str, ...] = ("image", "clip")
#: Keys that geometric transforms move together.
SPATIAL_KEYS: tuple[str, ...] = ("image", "clip", "mask", "points")

_EXPECTED_NDIM = {"image": 3, "clip": 4}


def _where(example: Mapping[str, Any]) -> str:
    item = example.get("item_id")
    return f"example {item!r}" if item is not None else "example"


def check_example(example: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key and the fix if the example breaks the contract."""
    where = _where(example)
    sizes: dict[str, tuple[int, int]] = {}
    for key, ndim in _EXPECTED_NDIM.items():
        if key not in example:
            continue
        value = example[key]
        if value.ndim != ndim or not _is_float(value):
            layout = "(C, H, W)" if key == "image" else "(C, T, H, W)"
            raise ValueError(
                f"{where}: {key!r} must be a float array {layout} with values in [0, 1]; got "
                f"dtype {value.dtype} shape {tuple(value.shape)} (divide uint8 frames by 255 and "
                f"add the channel axis)"
            )
        sizes[key] = tuple(value.shape[-2:])
    if "mask" in example:
        mask = example["mask"]
        if mask.ndim < 2 or _is_float(mask) or mask.dtype in (np.bool_, torch.bool):
            raise ValueError(
                f"{where}: 'mask' must be an integer label map (H, W); got dtype {mask.dtype} "
                f"shape {tuple(mask.shape)}"
            )
        sizes["mask"] = tuple(mask.shape[-2:])
    if "points" in example:
        points = example["points"]
        if points.ndim != 2 or points.shape[-1] != 2 or not _is_float(points):
            raise ValueError(
                f"{where}: 'points' must be float (K, 2) pixel (x, y); got dtype {points.dtype} "
                f"shape {tuple(points.shape)}"
            )
        if not sizes:
            raise ValueError(f"{where}: 'points' need an 'image', 'clip' or 'mask' to give the canvas")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{where}: spatial sizes differ between keys {sizes}; resize them to one (H, W)")


def _is_float(value: np.ndarray | torch.Tensor) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return np.issubdtype(value.dtype, np.floating)


def spatial_size(example: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) of the example's image, clip or mask."""
    for key in ("image", "clip", "mask"):
        if key in example:
            return int(example[key].shape[-2]), int(example[key].shape[-1])
    raise ValueError(f"{_where(example)} has no 'image', 'clip' or 'mask' key; nothing to transform")


def _to_torch(example: Mapping[str, Any]) -> tuple[Example, set[str]]:
    out = dict(example)
    numpy_keys = set()
    for key in SPATIAL_KEYS:
        if isinstance(out.get(key), np.ndarray):
            out[key] = torch.from_numpy(np.ascontiguousarray(out[key]))
            numpy_keys.add(key)
    return out, numpy_keys


class Transform(ABC):
    """A dict-level transform: ``transform(example, generator) -> new example``.

    Subclasses implement :meth:`run` on torch tensors; ``__call__`` checks the example once,
    converts numpy values to tensors and back, and never modifies the input dict.
    """

    @abstractmethod
    def run(self, example: Example, generator: RandomGenerator | None) -> Example:
        """Transform an already-checked example whose spatial values are torch tensors."""

    def __call__(self, example: Mapping[str, Any], generator: RandomGenerator | None = None) -> Example:
        check_example(example)
        tensors, numpy_keys = _to_torch(example)
        out = self.run(tensors, generator)
        for key in numpy_keys & out.keys():
            out[key] = out[key].numpy()
        return out


class ParamTransform(Transform):
    """A transform whose randomness is a parameter object drawn by :meth:`sample`.

    Deterministic subclasses keep the default ``sample`` (returns ``None``, needs no generator).
    """

    def sample(self, example: Example, generator: RandomGenerator | None) -> Any:
        """Draw this transform's parameters for ``example`` from ``generator``."""
        return None

    @abstractmethod
    def apply(self, example: Example, params: Any) -> Example:
        """Apply the transform with fixed ``params`` (as returned by :meth:`sample`)."""

    def run(self, example: Example, generator: RandomGenerator | None) -> Example:
        return self.apply(example, self.sample(example, generator))

    def _generator(self, generator: RandomGenerator | None) -> RandomGenerator:
        return check_generator(generator, type(self).__name__)


class Compose(Transform):
    """Apply transforms in order, each drawing from the same generator.

    Parameters are drawn lazily, step by step, because a step's parameters may depend on the
    output size of the previous one (e.g. a crop after a pad).
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Compose takes Transform objects, got {type(t).__name__}")
        self.transforms = list(transforms)

    def run(self, example: Example, generator: RandomGenerator | None) -> Example:
        for t in self.transforms:
            example = t.run(example, generator)
        return example

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose(\n  {inner}\n)"


class RandomApply(ParamTransform):
    """Apply ``transform`` with probability ``p``. Params: ``None`` (skipped) or the inner params."""

    def __init__(self, transform: ParamTransform, p: float) -> None:
        if not isinstance(transform, ParamTransform):
            raise TypeError("RandomApply wraps a ParamTransform (use Compose inside a ParamTransform)")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomApply probability p={p}; use a value in [0, 1]")
        self.transform = transform
        self.p = p

    def sample(self, example: Example, generator: RandomGenerator | None) -> Any:
        if self.p == 0.0 or not bernoulli(self._generator(generator), self.p):
            return None
        return (self.transform.sample(example, generator),)

    def apply(self, example: Example, params: Any) -> Example:
        return example if params is None else self.transform.apply(example, params[0])

    def __repr__(self) -> str:
        return f"RandomApply({self.transform!r}, p={self.p})"
