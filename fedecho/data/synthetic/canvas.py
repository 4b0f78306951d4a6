"""Drawing surface of the phantom: a pixel grid in probe coordinates and painting in local frames.

Coordinates: the transducer (fan apex) sits at the top centre; ``x`` (mm) points to the image
right, ``z`` (mm) down into the body. Pixel ``(row, col)`` has its centre at
``x = (col + 0.5 - W/2) * s`` and ``z = (row + 0.5) * s`` for spacing ``s`` mm/pixel; landmark
pixel coordinates follow the EchoNet convention (pixel centres at integer positions).

Shapes are painted in a *local frame* (origin, unit axis ``u`` and its normal ``v``) that may move
every frame; only the bounding box a shape can reach is evaluated, so small moving parts (valve
leaflets) cost little. Per-frame parameters are arrays (T,) broadcast as (T, 1, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Canvas", "Grid", "Local", "ellipse", "per_frame"]


def per_frame(value: float | np.ndarray) -> np.ndarray:
    """A scalar or (T,) parameter as a float32 array broadcastable against (T, h, w); arrays
    that already have pixel axes ((T or 1, h, w)) pass through."""
    array = np.asarray(value, dtype=np.float32)
    return array.reshape(-1, 1, 1) if array.ndim == 1 else array


@dataclass(frozen=True)
class Grid:
    """An image of ``height`` x ``width`` pixels of ``spacing`` mm, fan apex at the top centre."""

    height: int
    width: int
    spacing: float

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(
                f"image size must be at least 16x16 pixels, got {self.height}x{self.width}"
            )
        if not self.spacing > 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @property
    def x(self) -> np.ndarray:
        """Lateral coordinate (mm) of each column, (W,)."""
        return ((np.arange(self.width) + 0.5 - self.width / 2) * self.spacing).astype(np.float32)

    @property
    def z(self) -> np.ndarray:
        """Depth (mm) of each row, (H,)."""
        return ((np.arange(self.height) + 0.5) * self.spacing).astype(np.float32)

    def to_pixels(self, points_mm: np.ndarray) -> np.ndarray:
        """(..., 2) points ``(x, z)`` in mm -> (..., 2) pixel ``(col, row)`` (centres at integers)."""
        points_mm = np.asarray(points_mm, dtype=np.float64)
        col = points_mm[..., 0] / self.spacing + self.width / 2 - 0.5
        row = points_mm[..., 1] / self.spacing - 0.5
        return np.stack([col, row], axis=-1)

    def sector(self, half_angle_deg: float, near_mm: float = 2.0) -> np.ndarray:
        """Boolean (H, W): inside the fan of the given half angle, between ``near_mm`` and the depth."""
        x, z = np.meshgrid(self.x, self.z)
        radius = np.hypot(x, z)
        angle = np.degrees(np.arctan2(np.abs(x), z))
        return (
            (angle <= half_angle_deg) & (radius >= near_mm) & (radius <= self.height * self.spacing)
        )


@dataclass
class Local:
    """Coordinates of a pixel box in a local frame: ``u``, ``v`` (T or 1, h, w) in mm.

    ``origin`` / ``axis`` (T or 1, 2) define the frame; :meth:`crop` narrows the box to the
    pixels near one shape (array views, nothing recomputed).
    """

    rows: slice
    cols: slice
    u: np.ndarray
    v: np.ndarray
    origin: np.ndarray
    axis: np.ndarray
    grid: Grid

    @property
    def empty(self) -> bool:
        return self.u.size == 0

    def crop(self, cu: float | np.ndarray, cv: float | np.ndarray, reach: float) -> Local:
        """The part of this box within ``reach`` mm of the local point(s) (cu, cv) (scalars or (T,))."""
        cu = np.asarray(cu, dtype=np.float64).reshape(-1, 1)
        cv = np.asarray(cv, dtype=np.float64).reshape(-1, 1)
        normal = np.stack([self.axis[:, 1], -self.axis[:, 0]], axis=1)
        centres = self.origin + cu * self.axis + cv * normal
        r0, r1, c0, c1 = _pixel_box(self.grid, centres, reach)
        r0, r1 = max(r0, self.rows.start), min(r1, self.rows.stop)
        c0, c1 = max(c0, self.cols.start), min(c1, self.cols.stop)
        r1, c1 = max(r1, r0), max(c1, c0)
        box = (
            slice(None),
            slice(r0 - self.rows.start, r1 - self.rows.start),
            slice(c0 - self.cols.start, c1 - self.cols.start),
        )
        return Local(
            slice(r0, r1),
            slice(c0, c1),
            self.u[box],
            self.v[box],
            self.origin,
            self.axis,
            self.grid,
        )


def _pixel_box(grid: Grid, centres: np.ndarray, reach: float) -> tuple[int, int, int, int]:
    """Row and column ranges (r0, r1, c0, c1) of the pixels within ``reach`` of any centre (N, 2)."""
    s = grid.spacing
    lo = centres.min(axis=0) - reach
    hi = centres.max(axis=0) + reach
    c0 = int(np.clip(np.floor(lo[0] / s + grid.width / 2 - 0.5), 0, grid.width))
    c1 = int(np.clip(np.ceil(hi[0] / s + grid.width / 2 - 0.5) + 1, 0, grid.width))
    r0 = int(np.clip(np.floor(lo[1] / s - 0.5), 0, grid.height))
    r1 = int(np.clip(np.ceil(hi[1] / s - 0.5) + 1, 0, grid.height))
    return r0, r1, c0, c1


class Canvas:
    """Echogenicity ``amp`` (T, H, W) float32 and label map ``mask`` (T, H, W) uint8 being painted."""

    def __init__(self, grid: Grid, num_frames: int, background: float | np.ndarray) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.grid = grid
        self.num_frames = num_frames
        self.amp = np.empty((num_frames, grid.height, grid.width), np.float32)
        self.amp[:] = background
        self.mask = np.zeros((num_frames, grid.height, grid.width), np.uint8)
        self._x = grid.x
        self._z = grid.z

    def local(self, origin: np.ndarray, axis: np.ndarray, reach: float) -> Local:
        """Frame with ``origin`` (2,) or (T, 2) mm and unit ``axis`` (2,) or (T, 2) (the ``u``
        direction; ``v`` is ``u`` turned 90 degrees clockwise on screen, i.e. ``(uz, -ux)``),
        evaluated on the pixels within ``reach`` mm of any origin."""
        origin = np.atleast_2d(np.asarray(origin, dtype=np.float64))
        axis = np.atleast_2d(np.asarray(axis, dtype=np.float64))
        r0, r1, c0, c1 = _pixel_box(self.grid, origin, reach)
        o32 = origin.astype(np.float32)
        dx = self._x[None, None, c0:c1] - o32[:, 0, None, None]
        dz = self._z[None, r0:r1, None] - o32[:, 1, None, None]
        ux = axis[:, 0, None, None].astype(np.float32)
        uz = axis[:, 1, None, None].astype(np.float32)
        return Local(
            slice(r0, r1),
            slice(c0, c1),
            dx * ux + dz * uz,
            dx * uz - dz * ux,
            origin,
            axis,
            self.grid,
        )

    def paint(
        self,
        local: Local,
        where: np.ndarray,
        amp: float | np.ndarray | None,
        label: int | None = None,
        *,
        brighten: bool = False,
    ) -> None:
        """Set ``amp`` (or raise it to at least ``amp`` when ``brighten``) and ``label`` where
        ``where`` (broadcastable to (T, h, w)) holds, inside the local frame's box."""
        if local.empty:
            return
        box = (slice(None), local.rows, local.cols)
        where = np.broadcast_to(where, self.amp[box].shape)
        if amp is not None:
            value = np.broadcast_to(np.asarray(amp, dtype=np.float32), self.amp[box].shape)
            if brighten:
                value = np.maximum(self.amp[box], value)
            np.copyto(self.amp[box], value, where=where)
        if label is not None:
            np.copyto(self.mask[box], np.uint8(label), where=where)


def ellipse(
    local: Local,
    cu: float | np.ndarray,
    cv: float | np.ndarray,
    au: float | np.ndarray,
    av: float | np.ndarray,
) -> np.ndarray:
    """Inside test (T, h, w) of the ellipse centred at (cu, cv) with semi-axes au (along u), av."""
    du = (local.u - per_frame(cu)) * (1.0 / per_frame(au))
    np.square(du, out=du)
    dv = (local.v - per_frame(cv)) * (1.0 / per_frame(av))
    np.square(dv, out=dv)
    if du.shape == np.broadcast_shapes(du.shape, dv.shape):
        du += dv
    else:
        du = du + dv
    return du < 1.0
