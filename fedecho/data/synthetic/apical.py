"""Apical 4- and 2-chamber views of the phantom heart.

Local frame: origin at the endocardial LV apex, ``u`` along the LV long axis towards the mitral
plane (down the image, tilted by the pose angle), ``v`` across it (towards the image right; the
septum is at ``v < 0`` in A4C). The cavity is the truncated ellipse of
:mod:`fedecho.data.synthetic.anatomy`; the myocardium is the band between it and an outer ellipse
shifted so that the septal / lateral walls have their own thickness at mid-cavity, open at the
base; the left atrium sits below the mitral plane. A4C adds the right ventricle (sharing the
septum) and right atrium, and tricuspid leaflets; A2C shows only the left heart.

Labels: 1 LV cavity, 2 LV myocardium, 3 left atrium (CAMUS convention); the right heart,
pericardium and valves are drawn but not labelled.
"""

from __future__ import annotations

import numpy as np

from fedecho.data.synthetic.anatomy import BASE_CUT, Heart, contraction, valve_opening
from fedecho.data.synthetic.canvas import Canvas, Local, ellipse, per_frame
from fedecho.data.synthetic.tissue import (
    BLOOD,
    CHEST_WALL,
    MYOCARDIUM,
    PERICARDIUM,
    TISSUE,
    VALVE,
    draw_leaflet,
    lerp,
    to_probe,
    wobble,
)

__all__ = ["apical_outline", "draw_apical", "leaflet_angle"]

_OPEN_BASE = float(np.sqrt(1.0 - BASE_CUT**2))  # half-width of the mitral opening / (D / 2)


def _lv_sizes(heart: Heart, c: np.ndarray, two_chamber: bool) -> dict[str, np.ndarray]:
    """Per-frame LV sizes (T,) in mm for contraction ``c`` (T,)."""
    ratio = heart.a2c_ratio if two_chamber else 1.0
    length = lerp(heart.lv_length_ed, heart.lv_length_es, c)
    half_d = 0.5 * ratio * lerp(heart.lv_diameter_ed, heart.lv_diameter_es, c)
    ivs = lerp(heart.ivs_ed, heart.ivs_es, c)
    lvpw = lerp(heart.lvpw_ed, heart.lvpw_es, c)
    if two_chamber:
        ivs = lvpw = 0.5 * (ivs + lvpw)
    return {
        "length": length,
        "semi_long": length / (1.0 + BASE_CUT),
        "half_d": half_d,
        "half_open": half_d * _OPEN_BASE,
        "wall_left": ivs,
        "wall_right": lvpw,
    }


def apical_outline(heart: Heart, two_chamber: bool, num_points: int = 64) -> np.ndarray:
    """Local (u, v) points (N, 2) of the end-diastolic epicardial outline, to fit the pose."""
    s = {k: float(v[0]) for k, v in _lv_sizes(heart, np.zeros(1), two_chamber).items()}
    wall = 0.5 * (s["wall_left"] + s["wall_right"])
    shift = 0.5 * (s["wall_right"] - s["wall_left"])
    t = np.linspace(0.0, 2.0 * np.pi, num_points, endpoint=False)
    u = s["semi_long"] + (s["semi_long"] + 0.8 * wall) * np.cos(t)
    v = shift + (s["half_d"] + wall) * np.sin(t)
    keep = u <= s["length"] + 0.5 * wall
    return np.stack([u[keep], v[keep]], axis=1)


def draw_apical(
    canvas: Canvas,
    heart: Heart,
    phases: np.ndarray,
    apex: np.ndarray,
    angle: float,
    rng: np.random.Generator,
    *,
    two_chamber: bool,
) -> dict[str, np.ndarray]:
    """Paint an apical view; returns salient points (T, 2) mm (``lv_apex``, ``mitral_center``).

    ``rng`` draws the irregularity of the epicardial border (the cavity stays the exact truncated
    ellipse whose volume is the label)."""
    c = contraction(phases, heart.systole)
    opening = valve_opening(phases, heart.systole, outflow=False)
    s = _lv_sizes(heart, c, two_chamber)
    length, semi_long, half_d = s["length"], s["semi_long"], s["half_d"]
    wall_l, wall_r = s["wall_left"], s["wall_right"]
    wall = 0.5 * (wall_l + wall_r)
    shift = 0.5 * (wall_r - wall_l)
    leg = 0.5 * wall
    la_len = heart.la_length * (1.0 + 0.1 * c)
    la_center_v = -0.1 * heart.lv_diameter_ed
    # wide enough that the atrium covers the whole mitral opening (no cavity pixel touches bg)
    la_half_w = np.maximum(
        0.5 * heart.la_width * (1.0 + 0.08 * c),
        (s["half_open"] + abs(la_center_v) + 1.5) / np.sqrt(0.75),
    )

    reach = heart.lv_length_ed + 1.3 * heart.la_length + 2.0 * heart.lv_diameter_ed
    axis = np.array([np.sin(angle), np.cos(angle)])
    loc = canvas.local(apex, axis, reach)
    L = per_frame(length)

    # near field: chest wall above the apex
    canvas.paint(loc, loc.u < -0.8 * heart.ivs_ed - 8.0, CHEST_WALL)

    if not two_chamber:
        _draw_right_heart(
            canvas,
            loc,
            heart,
            phases,
            c,
            s,
            np.asarray(apex, np.float64),
            angle,
            la_center_v,
            la_half_w,
        )

    # left atrium: wall, then blood below the mitral plane
    la_cu = length + 0.25 * la_len
    box = loc.crop(la_cu, la_center_v, max(la_len.max() / 2, la_half_w.max()) + 4.0)
    wall_la = ellipse(box, la_cu, la_center_v, 0.5 * la_len + 2.5, la_half_w + 2.5)
    canvas.paint(box, wall_la & (box.u > L - 1.0), CHEST_WALL)
    canvas.paint(
        box, ellipse(box, la_cu, la_center_v, 0.5 * la_len, la_half_w) & (box.u > L), BLOOD, 3
    )

    # pericardium around the lateral wall and apex (thin fat gap), myocardium open at the base,
    # then the cavity
    myo_amp = MYOCARDIUM * heart.myo_echo
    box = loc.crop(semi_long, shift, float((semi_long + wall).max()) + 6.0)
    u, v = box.u, box.v
    above_base = u < per_frame(length + leg)
    lateral = v > per_frame(-0.3 * half_d)
    rough = wobble(u, 0.15 * float(wall.mean()), rng)
    for extra, amp in ((4.5, PERICARDIUM), (1.3, TISSUE)):
        peri = ellipse(
            box,
            semi_long,
            shift,
            semi_long + 0.8 * wall + extra,
            per_frame(half_d + wall + extra) + rough,
        )
        canvas.paint(box, peri & above_base & lateral, amp)
    outer = ellipse(box, semi_long, shift, semi_long + 0.8 * wall, per_frame(half_d + wall) + rough)
    channel = (u >= L) & (np.abs(v) < per_frame(s["half_open"]))
    canvas.paint(box, outer & above_base & ~channel, myo_amp, 2)
    canvas.paint(box, ellipse(box, semi_long, 0.0, semi_long, half_d) & (u < L), BLOOD, 1)

    # mitral leaflets: anterior (septal side) and posterior, hinged at the annulus
    origin = np.asarray(apex, dtype=np.float64)
    for side, share in ((-1.0, 0.45), (1.0, 0.32)):
        hinge = to_probe(origin, angle, length, side * s["half_open"])
        draw_leaflet(
            canvas,
            hinge,
            leaflet_angle(angle, side, opening),
            share * 2 * s["half_open"],
            1.6,
            VALVE,
        )
    return {
        "lv_apex": np.broadcast_to(origin, (len(c), 2)).copy(),
        "mitral_center": to_probe(origin, angle, length, np.zeros_like(length)),
    }


def leaflet_angle(axis_angle: float, side: float, opening: np.ndarray) -> np.ndarray:
    """Direction (T,) of an inflow leaflet hinged at ``v = side * r``: closed (0) across the
    annulus, bowing a little into the atrium; open (1) into the ventricle, towards the apex."""
    closed = axis_angle - side * (np.pi / 2 - 0.2)
    return closed - side * 0.95 * (np.pi / 2 + 0.2) * opening


def _draw_right_heart(
    canvas: Canvas,
    loc: Local,
    heart: Heart,
    phases: np.ndarray,
    c: np.ndarray,
    s: dict[str, np.ndarray],
    origin: np.ndarray,
    angle: float,
    la_center_v: float,
    la_half_w: np.ndarray,
) -> None:
    """RV (sharing the septum, painted first so the LV overrides the overlap) and RA of A4C."""
    rv_apex = 0.3 * heart.lv_length_ed
    rv_base = s["length"] - 6.0
    rv_semi = (rv_base - rv_apex) / 1.5
    rv_half_w = 0.42 * heart.lv_diameter_ed * heart.rv_scale * (1.0 - 0.2 * c)
    rv_v = -(s["half_d"] + s["wall_left"]) - 0.7 * rv_half_w
    box = loc.crop(rv_apex + rv_semi, rv_v, max(rv_semi.max(), rv_half_w.max()) + 5.0)
    below = box.u < per_frame(rv_base + 1.0)
    rv_wall = ellipse(box, rv_apex + rv_semi, rv_v, rv_semi + 3.5, rv_half_w + 3.5)
    canvas.paint(box, rv_wall & below, MYOCARDIUM * heart.myo_echo * 0.9)
    rv = ellipse(box, rv_apex + rv_semi, rv_v, rv_semi, rv_half_w)
    canvas.paint(box, rv & (box.u < per_frame(rv_base)), BLOOD)

    ra_len = 0.9 * heart.la_length * (1.0 + 0.08 * c)
    ra_half_w = 0.45 * heart.la_width
    ra_v = la_center_v - la_half_w - 3.0 - ra_half_w
    ra_cu = rv_base + 0.3 * ra_len
    box = loc.crop(ra_cu, ra_v, max(ra_len.max() / 2, ra_half_w) + 4.0)
    ra_wall = ellipse(box, ra_cu, ra_v, 0.5 * ra_len + 2.5, ra_half_w + 2.5)
    canvas.paint(box, ra_wall & (box.u > per_frame(rv_base - 1.0)), CHEST_WALL)
    ra = ellipse(box, ra_cu, ra_v, 0.5 * ra_len, ra_half_w)
    canvas.paint(box, ra & (box.u > per_frame(rv_base)), BLOOD)

    # tricuspid leaflets, hinged at the RV base, moving with the mitral ones
    opening = valve_opening(phases, heart.systole, outflow=False)
    for side, share in ((-1.0, 0.4), (1.0, 0.35)):
        hinge = to_probe(origin, angle, rv_base, rv_v + side * 0.85 * rv_half_w)
        draw_leaflet(
            canvas,
            hinge,
            leaflet_angle(angle, side, opening),
            share * 2 * 0.85 * rv_half_w,
            1.4,
            VALVE,
        )
