"""The beating-heart phantom of one acquisition: pose of the probe, anatomy per frame, masks.

:func:`sample_pose` draws where the sonographer put the probe for a view (with per-acquisition
jitter) and checks that the labelled structures stay inside the fan; :func:`draw_phantom` paints
the echogenicity map (T, H, W) and the label map (T, H, W) of that acquisition for the cardiac
phases of its frames. :mod:`fedecho.data.synthetic.render` then turns echogenicity into B-mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fedecho.data.synthetic.anatomy import Heart
from fedecho.data.synthetic.apical import apical_outline, draw_apical
from fedecho.data.synthetic.canvas import Canvas, Grid
from fedecho.data.synthetic.parasternal import draw_plax, draw_psax, plax_calipers
from fedecho.data.synthetic.styles import ScannerStyle
from fedecho.data.synthetic.tissue import TISSUE, to_probe

__all__ = ["PHANTOM_VIEWS", "Phantom", "Pose", "draw_phantom", "sample_pose"]

#: Views the phantom draws (FedEcho view names).
PHANTOM_VIEWS: tuple[str, ...] = ("A4C", "A2C", "PLAX", "PSAX")


@dataclass(frozen=True)
class Pose:
    """Probe placement of one acquisition: a reference point (mm, probe coordinates), the
    anatomy's rotation (radians), the imaging depth (mm) and, for PSAX, the level."""

    view: str
    origin: tuple[float, float]
    angle: float
    depth_mm: float
    level: str = ""


@dataclass
class Phantom:
    """One acquisition before rendering.

    ``amp`` (T, H, W) float32 echogenicity; ``mask`` (T, H, W) uint8 labels (0 bg, 1 LV cavity,
    2 myocardium, 3 LA), zero outside the fan; ``sector`` (H, W) bool; ``points`` name -> (T, 2)
    pixel ``(col, row)`` of salient structures; ``calipers`` (PLAX) name -> (T, 4) pixel
    ``(x1, y1, x2, y2)`` and ``name + "_mm"`` -> (T,) lengths in mm.
    """

    grid: Grid
    amp: np.ndarray
    mask: np.ndarray
    sector: np.ndarray
    points: dict[str, np.ndarray] = field(default_factory=dict)
    calipers: dict[str, np.ndarray] = field(default_factory=dict)


def _inside_fan(points: np.ndarray, half_angle_deg: float, margin_deg: float = 3.0) -> bool:
    angle = np.degrees(np.arctan2(np.abs(points[..., 0]), points[..., 1]))
    return bool(np.all((points[..., 1] > 4.0) & (angle < half_angle_deg - margin_deg)))


def _key_points(
    view: str, heart: Heart, origin: np.ndarray, angle: float, level: str
) -> np.ndarray:
    """Probe points (N, 2) mm that must lie inside the fan for this pose."""
    if view in ("A4C", "A2C"):
        outline = apical_outline(heart, two_chamber=view == "A2C")
        return to_probe(origin, angle, outline[:, 0], outline[:, 1])
    if view == "PLAX":
        calipers = plax_calipers(heart, np.zeros(1), origin, angle)
        return np.concatenate([calipers[k][0] for k in ("IVS", "LVID", "LVPW")], axis=0)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    r = 0.5 * heart.lv_diameter_ed + heart.ivs_ed if level == "mid" else 0.5 * heart.aortic_root + 3
    return origin + r * np.stack([np.sin(t), np.cos(t)], axis=1)


def sample_pose(view: str, heart: Heart, style: ScannerStyle, rng: np.random.Generator) -> Pose:
    """Draw a probe placement for ``view``; the LV (apical), calipers (PLAX) or the ring
    (PSAX) are moved towards the fan centre until they fit inside the sector."""
    if view not in PHANTOM_VIEWS:
        raise ValueError(f"unknown phantom view {view!r}; valid views: {', '.join(PHANTOM_VIEWS)}")
    half = style.sector_deg / 2.0
    chest = rng.uniform(8.0, 14.0)
    level = ""
    if view == "A4C":
        x, z, tilt = (
            rng.uniform(0.0, 8.0),
            rng.uniform(14.0, 24.0),
            np.radians(rng.uniform(8.0, 16.0)),
        )
    elif view == "A2C":
        x, z, tilt = (
            rng.uniform(-4.0, 4.0),
            rng.uniform(14.0, 24.0),
            np.radians(rng.uniform(-3.0, 7.0)),
        )
    elif view == "PLAX":
        x = rng.uniform(-10.0, 2.0)
        z = (
            chest
            + 24.0 * heart.rv_scale
            + heart.ivs_ed
            + 0.5 * heart.lvid_ed
            + 4.0
            + rng.uniform(-2, 2)
        )
        tilt = np.radians(rng.uniform(8.0, 20.0))
    else:
        level = "mid" if rng.random() < 0.6 else "aov"
        x = rng.uniform(-6.0, 8.0)
        if level == "mid":
            outer = 0.47 * heart.lv_diameter_ed + 0.5 * (heart.ivs_ed + heart.lvpw_ed)
            z = chest + 1.6 * outer * heart.rv_scale + 6.0
        else:
            z = chest + 0.5 * heart.aortic_root + 24.0
        tilt = np.radians(rng.uniform(-15.0, 15.0))
    angle = tilt - np.pi / 2 if view == "PLAX" else tilt
    for attempt in range(12):
        origin = np.array([x, z])
        points = _key_points(view, heart, origin, angle, level)
        if _inside_fan(points, half):
            break
        x, tilt = 0.6 * x, 0.6 * tilt
        angle = tilt - np.pi / 2 if view == "PLAX" else tilt
        if attempt >= 3:
            z += 5.0
    depth = style.depth_mm
    if view in ("A4C", "A2C"):
        depth = max(depth, float(points[:, 1].max()) + heart.la_length + 5.0)  # whole atrium
    else:
        depth = max(depth, float(points[:, 1].max()) + 25.0)
    return Pose(
        view=view, origin=(float(x), float(z)), angle=float(angle), depth_mm=depth, level=level
    )


def _texture(grid: Grid, cells: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random multiplicative texture (H, W) float32, ``cells`` blobs across the image."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    smooth = cv2.resize(coarse, (grid.width, grid.height), interpolation=cv2.INTER_CUBIC)
    return np.exp(strength * smooth).astype(np.float32)


def draw_phantom(
    heart: Heart,
    pose: Pose,
    phases: np.ndarray,
    size: tuple[int, int],
    style: ScannerStyle,
    rng: np.random.Generator,
) -> Phantom:
    """Paint the acquisition of ``pose`` for cardiac ``phases`` (T,) on a (H, W) = ``size`` grid."""
    height, width = size
    grid = Grid(height, width, pose.depth_mm / height)
    phases = np.asarray(phases, dtype=np.float64)
    canvas = Canvas(grid, len(phases), TISSUE * _texture(grid, 7, 0.4, rng))
    origin = np.asarray(pose.origin, dtype=np.float64)
    calipers: dict[str, np.ndarray] = {}
    if pose.view in ("A4C", "A2C"):
        points = draw_apical(
            canvas, heart, phases, origin, pose.angle, rng, two_chamber=pose.view == "A2C"
        )
    elif pose.view == "PLAX":
        points = draw_plax(canvas, heart, phases, origin, pose.angle, rng)
        for name, value in plax_calipers(heart, phases, origin, pose.angle).items():
            if name.endswith("_mm"):
                calipers[name] = np.asarray(value, dtype=np.float64)
            else:
                calipers[name] = grid.to_pixels(value).reshape(len(phases), 4)
    else:
        points = draw_psax(canvas, heart, phases, origin, pose.angle, pose.level, rng)
    canvas.amp *= _texture(grid, 16, 0.22, rng)  # tissue heterogeneity, also within walls
    sector = grid.sector(style.sector_deg / 2.0)
    canvas.mask *= sector
    return Phantom(
        grid=grid,
        amp=canvas.amp,
        mask=canvas.mask,
        sector=sector,
        points={name: grid.to_pixels(p) for name, p in points.items()},
        calipers=calipers,
    )
