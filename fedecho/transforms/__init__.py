"""Echo augmentations on images, clips, masks and points, seeded by an explicit generator.

Two levels:

- array level (torch tensors): :mod:`~fedecho.transforms.geometry` (crops, resize, flip,
  rotation for images, nearest-neighbour masks and pixel points) and
  :mod:`~fedecho.transforms.intensity` (brightness, contrast, blur, grayscale);
- dict level: transforms called as ``transform(example, generator) -> example`` on FedEcho
  example dicts (keys ``image``, ``clip``, ``mask``, ``points``; see
  :mod:`~fedecho.transforms.compose`), drawing parameters with ``sample`` and applying them with
  ``apply``; named pipelines in :mod:`~fedecho.transforms.presets` (``build_transform``).
"""

from fedecho.transforms.compose import (
    INTENSITY_KEYS,
    SPATIAL_KEYS,
    Compose,
    Example,
    ParamTransform,
    RandomApply,
    Transform,
    check_example,
    spatial_size,
)
from fedecho.transforms.geometry import (
    CropBox,
    PadToSquare,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
)
from fedecho.transforms.intensity import (
    Normalize,
    RandomColorJitter,
    RandomGaussianBlur,
    RandomGrayscale,
)
from fedecho.transforms.presets import PRESETS, build_transform
from fedecho.transforms.sampling import RandomGenerator

__all__ = [
    "INTENSITY_KEYS",
    "PRESETS",
    "SPATIAL_KEYS",
    "Compose",
    "CropBox",
    "Example",
    "Normalize",
    "PadToSquare",
    "ParamTransform",
    "RandomApply",
    "RandomColorJitter",
    "RandomGaussianBlur",
    "RandomGenerator",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomRotation",
    "Resize",
    "Transform",
    "build_transform",
    "check_example",
    "spatial_size",
]
