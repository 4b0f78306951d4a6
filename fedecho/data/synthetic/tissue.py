"""Tissue echogenicities and small drawing helpers shared by the view drawings.

Echogenicity is the mean backscatter amplitude of a tissue, before speckle, attenuation and log
compression (see :mod:`fedecho.data.synthetic.render`): blood is nearly anechoic, myocardium
mid-grey, pericardium, valves and calcium bright. The values are tuned so that after rendering
blood pools sit near black, myocardium mid-grey and the pericardium near white, as on B-mode.
"""

from __future__ import annotations

import numpy as np

from fedecho.data.synthetic.canvas import Canvas, ellipse

__all__ = [
    "BLOOD",
    "CALCIUM",
    "CHEST_WALL",
    "MYOCARDIUM",
    "PERICARDIUM",
    "TISSUE",
    "VALVE",
    "VESSEL_WALL",
    "draw_blob",
    "draw_leaflet",
    "frame_vectors",
    "lerp",
    "to_probe",
    "wobble",
]

BLOOD = 0.022
TISSUE = 0.075
CHEST_WALL = 0.16
MYOCARDIUM = 0.3  # times Heart.myo_echo (grows with age)
VESSEL_WALL = 0.55
VALVE = 0.6
PERICARDIUM = 1.2
CALCIUM = 1.2  # times (1 + 3 * Heart.calcium)


def lerp(ed: float, es: float, contraction: np.ndarray) -> np.ndarray:
    """Size at each frame (T,) between its end-diastolic and end-systolic value."""
    return ed + (es - ed) * contraction


def frame_vectors(angle: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit axis ``u`` = (sin a, cos a) (angle from straight down, towards the right) and its
    normal ``v`` = (cos a, -sin a), each (..., 2) in probe (x, z) coordinates."""
    angle = np.asarray(angle, dtype=np.float64)
    u = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    v = np.stack([np.cos(angle), -np.sin(angle)], axis=-1)
    return u, v


def to_probe(origin: np.ndarray, angle: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Local coordinates ``u``, ``v`` (any broadcastable shape) -> probe points (..., 2) mm."""
    eu, ev = frame_vectors(angle)
    u = np.asarray(u, dtype=np.float64)[..., None]
    v = np.asarray(v, dtype=np.float64)[..., None]
    return np.asarray(origin, dtype=np.float64) + u * eu + v * ev


def draw_leaflet(
    canvas: Canvas,
    hinge: np.ndarray,
    direction_angle: np.ndarray,
    length: float | np.ndarray,
    thickness: float,
    amp: float,
) -> None:
    """A valve leaflet: a thin bright ellipse from ``hinge`` (T, 2) mm pointing along
    ``direction_angle`` (T,) (see :func:`frame_vectors`), ``length`` mm long."""
    axis, _ = frame_vectors(direction_angle)
    length = np.broadcast_to(np.asarray(length, dtype=np.float64), direction_angle.shape)
    local = canvas.local(hinge, axis, float(length.max()) + thickness)
    inside = ellipse(local, length / 2.0, 0.0, length / 2.0 + 0.3, thickness / 2.0)
    canvas.paint(local, inside, amp, brighten=True)


def draw_blob(canvas: Canvas, center: np.ndarray, radius: float | np.ndarray, amp: float) -> None:
    """A round bright nodule (calcium) of ``radius`` mm at ``center`` (T, 2) mm."""
    center = np.asarray(center, dtype=np.float64)
    radius_max = float(np.max(radius))
    local = canvas.local(center, np.array([0.0, 1.0]), radius_max + 1.0)
    canvas.paint(local, ellipse(local, 0.0, 0.0, radius, radius), amp, brighten=True)


def wobble(coordinate: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random boundary offset (mm), same shape as ``coordinate`` (mm along a wall): three
    sinusoids of 12-40 mm wavelength, RMS ``amplitude``; makes walls irregular, not drawn by
    compass. Static over the cine (a wall keeps its shape)."""
    wavelengths = rng.uniform(12.0, 40.0, size=3)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
    weights = rng.uniform(0.5, 1.0, size=3)
    weights *= amplitude * np.sqrt(2.0 / np.sum(weights**2))
    out = np.zeros(coordinate.shape, np.float32)
    for wavelength, phase, weight in zip(wavelengths, phases, weights, strict=True):
        out += np.float32(weight) * np.sin(
            coordinate * np.float32(2 * np.pi / wavelength) + np.float32(phase)
        )
    return out
