"""From decoded frames to fixed-size example arrays: intensity scaling, frame/clip picking, resizing.

Deterministic given the generator: randomness (which frame, where a clip starts) is drawn from the
``np.random.Generator`` passed in. Coordinates use the pixel-centre convention (pixel ``i`` covers
``[i - 0.5, i + 0.5]``), the one OpenCV's resize uses, so image, mask and points stay aligned.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import cv2
import numpy as np

from fedecho.data.errors import EchoDataError
from fedecho.data.schema import Sample

__all__ = [
    "clip_array",
    "clip_indices",
    "frame_index",
    "get_frame",
    "keep_uint8",
    "resize_image",
    "resize_mask",
    "scale_points",
    "to_unit_float",
]


_KEEP_UINT8: contextvars.ContextVar[bool] = contextvars.ContextVar("fedecho_keep_uint8", default=False)


@contextlib.contextmanager
def keep_uint8() -> Iterator[None]:
    """Within this block uint8 frames stay uint8 (grey levels 0..255, meaning ``value / 255``):
    :func:`to_unit_float` returns them as they are and :func:`resize_image` resizes them as uint8.
    The device-side augmentation path uses it to ship compact uint8 batches (see
    :mod:`fedecho.transforms.batched`)."""
    token = _KEEP_UINT8.set(True)
    try:
        yield
    finally:
        _KEEP_UINT8.reset(token)


def to_unit_float(frames: np.ndarray, path: str = "") -> np.ndarray:
    """Frames as float32 in [0, 1]: uint8 / 255, uint16 / 65535; floats already in [0, 1] kept,
    floats in [0, 255] divided by 255. Anything else raises :class:`EchoDataError` naming ``path``.
    Inside :func:`keep_uint8`, uint8 frames are returned unchanged."""
    if frames.dtype == np.uint8:
        if _KEEP_UINT8.get():
            return frames
        return frames.astype(np.float32) / 255.0
    if frames.dtype == np.uint16:
        return frames.astype(np.float32) / 65535.0
    if np.issubdtype(frames.dtype, np.floating):
        lo, hi = float(np.min(frames)), float(np.max(frames))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0:
            raise EchoDataError.at(path, f"frames hold values in [{lo}, {hi}]; expected intensities >= 0")
        if hi <= 1.0:
            return frames.astype(np.float32)
        if hi <= 255.0:
            return frames.astype(np.float32) / 255.0
        raise EchoDataError.at(path, f"float frames reach {hi}; expected [0, 1] or [0, 255]")
    raise EchoDataError.at(path, f"frames have dtype {frames.dtype}; expected uint8, uint16 or float")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float32 (H, W) to ``size`` = (H', W'): area averaging when shrinking, bilinear else.
    A uint8 image (inside :func:`keep_uint8`) is resized as uint8."""
    if image.dtype == np.uint8 and _KEEP_UINT8.get():
        if image.shape == tuple(size):
            return image
        shrinking = size[0] * size[1] < image.shape[0] * image.shape[1]
        return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if image.shape == tuple(size):
        return image.astype(np.float32, copy=False)
    shrinking = size[0] * size[1] < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(image.astype(np.float32, copy=False), (size[1], size[0]), interpolation=interpolation)
    return np.clip(out, 0.0, 1.0)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an integer label map (H, W) to ``size`` by nearest neighbour (labels never blend)."""
    h, w = mask.shape
    if (h, w) == tuple(size):  # the identity (e.g. read from the decoded cache at this size)
        return np.ascontiguousarray(mask, dtype=np.int64)
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return np.ascontiguousarray(mask[rows[:, None], cols[None, :]]).astype(np.int64)


def scale_points(points: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Map pixel (x, y) points (K, 2) from an image of (H, W) ``from_size`` to ``to_size``."""
    sx = to_size[1] / from_size[1]
    sy = to_size[0] / from_size[0]
    scale = np.array([sx, sy], dtype=np.float64)
    return ((np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def frame_index(num_frames: int, policy: str, rng: np.random.Generator) -> int:
    """A frame of a video: drawn uniformly (``"random"``) or the middle one (``"center"``)."""
    if policy == "random":
        return int(rng.integers(num_frames))
    if policy == "center":
        return num_frames // 2
    raise ValueError(f"frame policy must be 'random' or 'center', got {policy!r}")


def clip_indices(num_frames: int, length: int, stride: int, policy: str, rng: np.random.Generator) -> np.ndarray:
    """``length`` frame indices ``start + stride·i`` (int64). The start is drawn uniformly among the
    positions where the clip fits (``"random"``) or centres the clip (``"center"``). A video too
    short for the span repeats its last frame (the clip keeps its length, so batches stack)."""
    span = (length - 1) * stride + 1
    room = max(num_frames - span, 0)
    if policy == "random":
        start = int(rng.integers(room + 1))
    elif policy == "center":
        start = room // 2
    else:
        raise ValueError(f"clip policy must be 'random' or 'center', got {policy!r}")
    return np.minimum(start + stride * np.arange(length), num_frames - 1).astype(np.int64)


def clip_array(
    sample: Sample,
    length: int,
    stride: int,
    policy: str,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """A clip of a video sample as float32 (1, T, H, W) in [0, 1]: ``T = length`` frames
    ``stride`` apart placed by :func:`clip_indices` (``policy``, ``rng``), each resized to ``size``.

    A single-image sample raises :class:`EchoDataError` naming its file (callers that can say
    more about the fix check ``sample.is_video`` first)."""
    if not sample.is_video:
        raise EchoDataError.at(sample.path, f"{sample.item_id} is a single image (H, W); a clip needs a video")
    index = clip_indices(len(sample.frames), length, stride, policy, rng)
    frames = to_unit_float(sample.frames[index], sample.path)
    return np.stack([resize_image(frame, size) for frame in frames])[None]


def get_frame(sample: Sample, index: int | None, what: str) -> np.ndarray:
    """Frame ``index`` of a video sample, or the image of a single-image sample (index ignored).

    ``what`` says why the frame is needed, for the error when the index is out of range.
    """
    if not sample.is_video:
        return sample.frames
    if index is None:
        raise EchoDataError.at(sample.path, f"{sample.item_id} is a video but no frame was chosen for {what}")
    if not 0 <= int(index) < len(sample.frames):
        raise EchoDataError.at(
            sample.path, f"{what} is at frame {index} but {sample.item_id} has {len(sample.frames)} frames"
        )
    return sample.frames[int(index)]
