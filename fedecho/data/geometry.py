"""Echo LV geometry: masks <-> EchoNet tracings, LV area, Simpson volumes (method of disks).

Coordinates follow the EchoNet tracings: ``x`` is the column and ``y`` the row, in pixels, with
pixel centres at integer positions; physical lengths use ``spacing = (row_mm, col_mm)``.

The long axis of a cavity mask is its principal axis (largest eigenvector of the second moments
of its pixels, in millimetres), oriented from the top of the image (the apex in the standard
apical orientation of CAMUS and EchoNet) to the base. Its length ``L`` is the mask's extent along
that axis; ``n_disks`` perpendicular chords sit at the disk centres ``(i + 0.5) L / n``, each as
long as the mask is wide there. Volumes (Folland et al., Circulation 60(4):760-766, 1979; Lang et
al., ASE/EACVI chamber quantification, J Am Soc Echocardiogr 28:1-39, 2015):

- single plane: ``V = pi/4 * sum_i d_i**2 * L / n``
- biplane:      ``V = pi/4 * sum_i a_i * b_i * L / n`` with ``L`` the longer of the two long axes.

The CAMUS challenge script finds the mitral plane as the longest straight contour stretch instead
of the principal axis; both agree on bullet-shaped cavities, and the principal axis also works for
masks without a flat base (ellipses, EchoNet polygons) at a fraction of the cost.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "LVDisks",
    "area_mm2",
    "lv_disks",
    "mask_from_tracings",
    "polygon_from_tracings",
    "simpson_volume_ml",
    "tracings_from_mask",
]

_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision: 1/16 pixel


class LVDisks(NamedTuple):
    """Method-of-disks geometry of one cavity mask; points are (x, y) in millimetres.

    ``apex`` and ``base`` (2,) end the long axis; ``chords`` (n, 2, 2) holds each disk's two
    chord endpoints; ``diameters`` (n,) their lengths in mm; ``length`` the long axis in mm.
    """

    apex: np.ndarray
    base: np.ndarray
    chords: np.ndarray
    diameters: np.ndarray
    length: float


def polygon_from_tracings(rows: np.ndarray) -> np.ndarray:
    """The LV polygon (2 (N - 1), 2) of EchoNet tracing rows (N, 4) ``(X1, Y1, X2, Y2)``.

    Row 0 is the long axis and is not part of the outline; the polygon is (X1, Y1) of rows 1..N-1
    followed by (X2, Y2) of the same rows in reverse order, exactly as EchoNet-Dynamic draws it.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError(f"tracing rows must be an (N, 4) array (X1, Y1, X2, Y2), got {rows.shape}")
    if rows.shape[0] < 3:
        raise ValueError(
            f"tracings need a long-axis row and at least 2 chord rows, got {rows.shape[0]} rows"
        )
    if not np.isfinite(rows).all():
        raise ValueError("tracing rows contain NaN or infinite coordinates")
    return np.concatenate([rows[1:, 0:2], rows[1:, 2:4][::-1]], axis=0)


def mask_from_tracings(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill the EchoNet tracing polygon of rows (N, 4) into a uint8 (H, W) mask of 0 and 1."""
    height, width = (int(s) for s in shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"mask shape must be positive (H, W), got {shape}")
    polygon = polygon_from_tracings(rows)
    mask = np.zeros((height, width), np.uint8)
    points = np.round(polygon * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask


def tracings_from_mask(mask: np.ndarray, n_disks: int = 20, label: int = 1) -> np.ndarray:
    """EchoNet-style tracing rows (n_disks + 1, 4) ``(X1, Y1, X2, Y2)`` in pixels for a mask (H, W).

    Row 0 is the long axis from apex to base; rows 1.. are the disk chords, apex first, so that
    :func:`mask_from_tracings` redraws the cavity (Dice > 0.9 for convex cavities).
    """
    disks = lv_disks(mask, (1.0, 1.0), label=label, n_disks=n_disks)
    axis = np.concatenate([disks.apex, disks.base])[None, :]
    chords = disks.chords.reshape(n_disks, 4)
    return np.concatenate([axis, chords], axis=0)


def area_mm2(mask: np.ndarray, spacing: tuple[float, float], label: int = 1) -> float:
    """Area in mm² of the pixels of ``mask`` (H, W) equal to ``label``."""
    row_mm, col_mm = _check_spacing(spacing)
    mask = _check_mask(mask)
    return float(np.count_nonzero(mask == label)) * row_mm * col_mm


def lv_disks(
    mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), label: int = 1, n_disks: int = 20
) -> LVDisks:
    """Long axis and ``n_disks`` perpendicular chords of the largest ``label`` region of (H, W)."""
    if n_disks < 1:
        raise ValueError(f"n_disks must be >= 1, got {n_disks}")
    row_mm, col_mm = _check_spacing(spacing)
    selected = _check_mask(mask) == label
    rows_any, cols_any = np.flatnonzero(selected.any(axis=1)), np.flatnonzero(selected.any(axis=0))
    if rows_any.size == 0:
        raise ValueError(f"mask has no pixel with label {label}; cannot measure the long axis")
    top, left = int(rows_any[0]), int(cols_any[0])  # work on the bounding box, offset kept in mm
    region = _largest_component(selected[top : rows_any[-1] + 1, left : cols_any[-1] + 1])
    rows, cols = np.nonzero(region)
    points = np.stack([(cols + left) * col_mm, (rows + top) * row_mm], axis=1).astype(np.float64)
    centre = points.mean(axis=0)
    axis_dir = _principal_direction(points - centre)
    normal = np.array([-axis_dir[1], axis_dir[0]])

    half_pixel_along = 0.5 * (abs(axis_dir[0]) * col_mm + abs(axis_dir[1]) * row_mm)
    along = (points - centre) @ axis_dir
    start = along.min() - half_pixel_along
    length = float(along.max() + half_pixel_along - start)
    apex = centre + start * axis_dir
    base = apex + length * axis_dir

    centres = apex[None, :] + ((np.arange(n_disks) + 0.5) * length / n_disks)[:, None] * axis_dir
    step = 0.1 * min(row_mm, col_mm)  # chord ends are exact to +-0.05 pixel
    across = (points - centre) @ normal
    margin = 2 * max(row_mm, col_mm)
    offsets = np.arange(across.min() - margin, across.max() + margin + step, step)
    samples = centres[:, None, :] + offsets[None, :, None] * normal  # (n, S, 2) mm
    sample_cols = np.floor(samples[..., 0] / col_mm + 0.5).astype(np.int64) - left
    sample_rows = np.floor(samples[..., 1] / row_mm + 0.5).astype(np.int64) - top
    height, width = region.shape
    valid = (sample_rows >= 0) & (sample_rows < height) & (sample_cols >= 0) & (sample_cols < width)
    inside = np.zeros(valid.shape, bool)
    inside[valid] = region[sample_rows[valid], sample_cols[valid]]

    chords = np.repeat(centres[:, None, :], 2, axis=1)
    diameters = np.zeros(n_disks)
    hit = inside.any(axis=1)
    first = np.argmax(inside, axis=1)
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    lo = offsets[first] - step / 2
    hi = offsets[last] + step / 2
    chords[hit, 0] = centres[hit] + lo[hit, None] * normal
    chords[hit, 1] = centres[hit] + hi[hit, None] * normal
    diameters[hit] = hi[hit] - lo[hit]
    return LVDisks(apex, base, chords, diameters, length)


def simpson_volume_ml(
    mask_a4c: np.ndarray,
    spacing_a4c: tuple[float, float],
    mask_a2c: np.ndarray | None = None,
    spacing_a2c: tuple[float, float] | None = None,
    label: int = 1,
    n_disks: int = 20,
) -> float:
    """LV volume in mL by Simpson's method of disks: single plane from the apical 4-chamber mask
    (H, W), or biplane when the orthogonal 2-chamber mask (H', W') is given too."""
    a4c = lv_disks(mask_a4c, spacing_a4c, label=label, n_disks=n_disks)
    if mask_a2c is None:
        if spacing_a2c is not None:
            raise ValueError("spacing_a2c was given without mask_a2c")
        volume_mm3 = np.pi / 4 * np.sum(a4c.diameters**2) * a4c.length / n_disks
    else:
        if spacing_a2c is None:
            raise ValueError("mask_a2c needs its own spacing_a2c (row_mm, col_mm)")
        a2c = lv_disks(mask_a2c, spacing_a2c, label=label, n_disks=n_disks)
        length = max(a4c.length, a2c.length)
        volume_mm3 = np.pi / 4 * np.sum(a4c.diameters * a2c.diameters) * length / n_disks
    return float(volume_mm3) / 1000.0


def _principal_direction(centred: np.ndarray) -> np.ndarray:
    """Unit eigenvector (x, y) of the largest second moment, pointing down the image (+y)."""
    if len(centred) < 2:
        return np.array([0.0, 1.0])
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    direction = eigenvectors[:, int(np.argmax(eigenvalues))]
    if direction[1] < -1e-12 or (abs(direction[1]) <= 1e-12 and direction[0] < 0):
        direction = -direction
    return direction / np.linalg.norm(direction)


def _largest_component(region: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    if count <= 2:
        return region
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected one (H, W) mask, got shape {mask.shape}")
    return mask


def _check_spacing(spacing: tuple[float, float]) -> tuple[float, float]:
    if spacing is None or len(spacing) != 2:
        raise ValueError(f"spacing must be (row_mm, col_mm), got {spacing!r}")
    row_mm, col_mm = float(spacing[0]), float(spacing[1])
    if not (row_mm > 0 and col_mm > 0 and np.isfinite(row_mm) and np.isfinite(col_mm)):
        raise ValueError(f"spacing must be positive and finite (row_mm, col_mm), got {spacing!r}")
    return row_mm, col_mm
