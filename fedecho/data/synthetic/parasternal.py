"""Parasternal long-axis (PLAX) and short-axis (PSAX) views of the phantom heart.

PLAX local frame: origin at the LV cavity centre, ``u`` along the LV long axis from the base
(image right) to the apex (image left, slightly down), ``v`` towards the posterior wall (down).
From the transducer down: chest wall, right-ventricular outflow, interventricular septum, LV
cavity, posterior wall and pericardium; on the right the aortic root (sinus bulge, two cusps that
calcify and stiffen with aortic stenosis) with the left atrium behind it, the mitral leaflets
between LV and LA, and the descending aorta. The EchoNet-LVH calipers (IVS, LVID, LVPW) lie on
the line ``u = 0`` across the cavity, so the drawn walls measure exactly the labels.

PSAX: ``level="mid"`` is the papillary-muscle level (round LV cavity, myocardial ring, papillary
muscles, right-ventricular crescent); ``level="aov"`` the aortic-valve level (three-cusp valve with
its "Mercedes" closure line, left and right atria, right-ventricular outflow and pulmonary artery).
"""

from __future__ import annotations

import numpy as np

from fedecho.data.synthetic.anatomy import Heart, contraction, valve_opening
from fedecho.data.synthetic.apical import leaflet_angle
from fedecho.data.synthetic.canvas import Canvas, ellipse, per_frame
from fedecho.data.synthetic.tissue import (
    BLOOD,
    CALCIUM,
    CHEST_WALL,
    MYOCARDIUM,
    PERICARDIUM,
    TISSUE,
    VALVE,
    VESSEL_WALL,
    draw_blob,
    draw_leaflet,
    frame_vectors,
    lerp,
    to_probe,
    wobble,
)

__all__ = ["PLAX_SEMI_LONG", "draw_plax", "draw_psax", "plax_calipers"]

#: PLAX cavity: semi-long axis as a share of the apical LV length, and base cut (share of it).
PLAX_SEMI_LONG = 0.72
_PLAX_CUT = 0.35
_AORTIC_TILT = np.radians(25.0)


def _plax_sizes(heart: Heart, c: np.ndarray) -> dict[str, np.ndarray]:
    semi_long = PLAX_SEMI_LONG * lerp(heart.lv_length_ed, heart.lv_length_es, c)
    half_d = 0.5 * lerp(heart.lvid_ed, heart.lvid_es, c)
    return {
        "semi_long": semi_long,
        "half_d": half_d,
        "base": _PLAX_CUT * semi_long,
        "half_open": half_d * np.sqrt(1.0 - _PLAX_CUT**2),
        "ivs": lerp(heart.ivs_ed, heart.ivs_es, c),
        "lvpw": lerp(heart.lvpw_ed, heart.lvpw_es, c),
        "rv_depth": 24.0 * heart.rv_scale * (1.0 - 0.15 * c),
    }


def plax_calipers(
    heart: Heart, phases: np.ndarray, center: np.ndarray, angle: float
) -> dict[str, np.ndarray]:
    """Caliper endpoints (T, 2, 2) mm (two (x, z) points) and lengths (T,) mm of IVS, LVID, LVPW."""
    s = _plax_sizes(heart, contraction(phases, heart.systole))
    v_points = [-(s["half_d"] + s["ivs"]), -s["half_d"], s["half_d"], s["half_d"] + s["lvpw"]]
    points = [to_probe(center, angle, np.zeros_like(vp), vp) for vp in v_points]
    out: dict[str, np.ndarray] = {}
    for k, name in enumerate(("IVS", "LVID", "LVPW")):
        out[name] = np.stack([points[k], points[k + 1]], axis=1)
        out[name + "_mm"] = v_points[k + 1] - v_points[k]
    return out


def draw_plax(
    canvas: Canvas,
    heart: Heart,
    phases: np.ndarray,
    center: np.ndarray,
    angle: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Paint a PLAX view; returns salient points (T, 2) mm (``aortic_valve``, ``lv_center``).

    ``rng`` draws the irregularity of the epicardial border, which vanishes at the caliper line
    so that the drawn septum and posterior wall measure exactly their labels."""
    c = contraction(phases, heart.systole)
    s = _plax_sizes(heart, c)
    semi_long, half_d, base = s["semi_long"], s["half_d"], s["base"]
    ivs, lvpw = s["ivs"], s["lvpw"]
    wall, shift = 0.5 * (ivs + lvpw), 0.5 * (lvpw - ivs)
    origin = np.asarray(center, dtype=np.float64)
    eu, _ = frame_vectors(angle)
    loc = canvas.local(origin, eu, 2.2 * float(semi_long.max()) + 60.0)
    myo_amp = MYOCARDIUM * heart.myo_echo

    # chest wall, right-ventricular outflow (under the septum and the aortic root)
    rv_top = -(half_d + ivs) - s["rv_depth"]
    canvas.paint(loc, loc.v < per_frame(rv_top - 4.0), CHEST_WALL)
    rv_v = -(half_d + ivs) - 0.5 * s["rv_depth"] + 1.0
    rv_u = -0.2 * semi_long
    box = loc.crop(rv_u, rv_v, 1.4 * float(semi_long.max()) + 5.0)
    canvas.paint(
        box, ellipse(box, rv_u, rv_v, 1.4 * semi_long + 4, 0.5 * s["rv_depth"] + 4), myo_amp * 0.9
    )
    canvas.paint(box, ellipse(box, rv_u, rv_v, 1.4 * semi_long, 0.5 * s["rv_depth"]), BLOOD)

    # aortic root: a tube from the LVOT up and to the right, sinus of Valsalva bulge
    r_annulus = 0.4 * heart.aortic_root
    annulus = to_probe(origin, angle, -base - 1.0, -s["half_open"] + r_annulus)  # (T, 2)
    ao_angle = angle + np.pi + _AORTIC_TILT
    ao_axis, _ = frame_vectors(ao_angle)
    ao = canvas.local(to_probe(annulus, ao_angle, 40.0, 0.0), ao_axis, 44.0 + 1.4 * r_annulus)
    along = ao.u + 40.0  # distance from the annulus
    radius = r_annulus * (
        1.0 + 0.28 * np.exp(-(((along - 11.0) / 8.0) ** 2)) + 0.08 * np.clip(along / 30.0, 0, 1)
    )
    canvas.paint(ao, (np.abs(ao.v) < radius + 2.5) & (along > -2.0), VESSEL_WALL)
    canvas.paint(ao, (np.abs(ao.v) < radius) & (along > -3.0), BLOOD)

    # left atrium behind the aortic root, descending aorta behind the AV groove
    la_r = 0.5 * heart.la_width * (1.0 + 0.1 * c)
    la_center = to_probe(annulus, ao_angle, 14.0, -(r_annulus + 3.0 + la_r))
    la = canvas.local(la_center, ao_axis, 1.2 * float(la_r.max()) + 4.0)
    canvas.paint(la, ellipse(la, 0.0, 0.0, 1.15 * la_r + 2.5, la_r + 2.5), CHEST_WALL)
    canvas.paint(la, ellipse(la, 0.0, 0.0, 1.15 * la_r, la_r), BLOOD, 3)
    dao_v = half_d + lvpw + 15.0
    box = loc.crop(-base + 4.0, dao_v, 13.0)
    canvas.paint(box, ellipse(box, -base + 4.0, dao_v, 11.0, 11.0), VESSEL_WALL)
    canvas.paint(box, ellipse(box, -base + 4.0, dao_v, 9.0, 9.0), BLOOD)

    # pericardium under the posterior wall, myocardium (septum + posterior wall), cavity
    leg = 0.5 * wall
    box = loc.crop(0.0, shift, float((semi_long + wall).max()) + 6.0)
    u, v = box.u, box.v
    posterior = v > per_frame(0.3 * half_d)
    after_base = u > per_frame(-base - leg)
    rough = wobble(u, 0.15 * float(wall.mean()), rng) * (1.0 - np.exp(-((u / 8.0) ** 2)))
    for extra, amp in ((4.5, PERICARDIUM), (1.3, TISSUE)):
        peri = ellipse(
            box,
            0.0,
            shift,
            semi_long + 0.8 * wall + extra,
            per_frame(half_d + wall + extra) + rough,
        )
        canvas.paint(box, peri & posterior & (u > per_frame(-base - 6.0)), amp)
    outer = ellipse(box, 0.0, shift, semi_long + 0.8 * wall, per_frame(half_d + wall) + rough)
    channel = (u <= per_frame(-base)) & (np.abs(v) < per_frame(s["half_open"]))
    canvas.paint(box, outer & after_base & ~channel, myo_amp, 2)
    canvas.paint(box, ellipse(box, 0.0, 0.0, semi_long, half_d) & (u > per_frame(-base)), BLOOD, 1)

    # mitral leaflets: anterior from the aortic root, posterior from the AV groove; open to the apex
    opening = valve_opening(phases, heart.systole, outflow=False)
    ant_v = -s["half_open"] + 2.0 * r_annulus + 2.0
    post_v = s["half_open"]
    width = post_v - ant_v
    for v_hinge, side, share in ((ant_v, 1.0, 0.6), (post_v, -1.0, 0.45)):
        hinge = to_probe(origin, angle, -base, v_hinge)
        draw_leaflet(
            canvas, hinge, leaflet_angle(angle + np.pi, side, opening), share * width, 1.6, VALVE
        )

    valve_center = _draw_aortic_cusps(canvas, heart, phases, annulus, ao_angle, r_annulus)
    return {"aortic_valve": valve_center, "lv_center": np.broadcast_to(origin, (len(c), 2)).copy()}


def _draw_aortic_cusps(
    canvas: Canvas,
    heart: Heart,
    phases: np.ndarray,
    annulus: np.ndarray,
    ao_angle: np.ndarray,
    r_annulus: float,
) -> np.ndarray:
    """Right-coronary and non-coronary cusps in PLAX; calcified nodules with aortic stenosis."""
    opening = valve_opening(phases, heart.systole, outflow=True) * heart.av_opening
    thickness = 1.2 + 1.5 * heart.calcium
    for side in (1.0, -1.0):
        hinge = to_probe(annulus, ao_angle, 2.0, side * r_annulus)
        direction = ao_angle - side * (np.pi / 2 + 0.2) + side * (np.pi / 2 + 0.25) * opening
        draw_leaflet(
            canvas, hinge, direction, 0.95 * r_annulus, thickness, VALVE * (1 + 1.5 * heart.calcium)
        )
        if heart.calcium > 0:
            nodule = hinge + 0.45 * r_annulus * np.stack(
                [np.sin(direction), np.cos(direction)], axis=-1
            )
            draw_blob(
                canvas, nodule, 1.0 + 3.0 * heart.calcium, CALCIUM * (1.0 + 3.0 * heart.calcium)
            )
    return to_probe(annulus, ao_angle, 2.0 + 0.5 * r_annulus, 0.0 * ao_angle)


def draw_psax(
    canvas: Canvas,
    heart: Heart,
    phases: np.ndarray,
    center: np.ndarray,
    angle: float,
    level: str,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Paint a PSAX view at ``level`` ``"mid"`` or ``"aov"``; returns points (T, 2) mm."""
    if level == "mid":
        return _psax_mid(canvas, heart, phases, center, angle, rng)
    if level == "aov":
        return _psax_aov(canvas, heart, phases, center, angle)
    raise ValueError(f"unknown PSAX level {level!r}; valid levels: aov, mid")


def _psax_mid(
    canvas: Canvas,
    heart: Heart,
    phases: np.ndarray,
    center: np.ndarray,
    angle: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    c = contraction(phases, heart.systole)
    radius = 0.47 * lerp(heart.lv_diameter_ed, heart.lv_diameter_es, c)
    wall = 0.5 * (lerp(heart.ivs_ed, heart.ivs_es, c) + lerp(heart.lvpw_ed, heart.lvpw_es, c))
    outer = radius + wall
    origin = np.asarray(center, dtype=np.float64)
    eu, _ = frame_vectors(angle)
    r_max = float(outer.max())
    loc = canvas.local(origin, eu, 3.2 * r_max + 20.0)
    u = loc.u
    myo_amp = MYOCARDIUM * heart.myo_echo

    canvas.paint(loc, u < per_frame(-1.9 * outer * heart.rv_scale - 6.0), CHEST_WALL)
    for extra, amp in ((4.5, PERICARDIUM), (1.3, TISSUE)):
        canvas.paint(
            loc,
            ellipse(loc, 0.0, 0.0, outer + extra, outer + extra) & (u > per_frame(-0.2 * radius)),
            amp,
        )
    rv_u, rv_v = -0.45 * outer, -0.6 * outer
    rv_a, rv_b = (
        outer * heart.rv_scale * (1.0 - 0.2 * c),
        1.3 * outer * heart.rv_scale * (1.0 - 0.2 * c),
    )
    canvas.paint(loc, ellipse(loc, rv_u, rv_v, rv_a + 3.5, rv_b + 3.5), myo_amp * 0.9)
    canvas.paint(loc, ellipse(loc, rv_u, rv_v, rv_a, rv_b), BLOOD)
    arc = np.arctan2(loc.v, loc.u) * np.float32(0.5 * heart.lv_diameter_ed)  # mm along the ring
    rough = wobble(arc, 0.15 * float(wall.mean()), rng)
    ring = ellipse(
        loc,
        0.0,
        0.0,
        per_frame(0.96 * radius + wall) + rough,
        per_frame(1.04 * radius + wall) + rough,
    )
    canvas.paint(loc, ring, myo_amp, 2)
    canvas.paint(loc, ellipse(loc, 0.0, 0.0, 0.96 * radius, 1.04 * radius), BLOOD, 1)
    for side in (-1.0, 1.0):  # papillary muscles (part of the cavity label, as in CAMUS)
        canvas.paint(
            loc,
            ellipse(loc, 0.5 * radius, side * 0.45 * radius, 0.2 * radius, 0.17 * radius),
            myo_amp * 0.9,
        )
    return {"lv_center": np.broadcast_to(origin, (len(c), 2)).copy()}


def _psax_aov(
    canvas: Canvas, heart: Heart, phases: np.ndarray, center: np.ndarray, angle: float
) -> dict[str, np.ndarray]:
    c = contraction(phases, heart.systole)
    radius = 0.5 * heart.aortic_root * (1.0 + 0.04 * np.sin(2 * np.pi * phases))
    origin = np.asarray(center, dtype=np.float64)
    down = np.array([0.0, 1.0])
    r0 = 0.5 * heart.aortic_root
    loc = canvas.local(origin, down, 4.0 * r0 + 50.0)
    u, v = loc.u, loc.v  # u = depth below the valve centre, v = lateral

    canvas.paint(loc, u < -r0 - 24.0, CHEST_WALL)
    theta = np.arctan2(v, -u)  # 0 straight up, positive to the right
    ring = np.hypot(u, v)
    rvot = (ring > r0 + 4.0) & (ring < r0 + 19.0) & (theta > -1.9) & (theta < 1.0)
    canvas.paint(loc, rvot, BLOOD)
    canvas.paint(loc, ellipse(loc, 6.0, r0 + 16.0, 18.0, 11.0), VESSEL_WALL)  # pulmonary artery
    canvas.paint(loc, ellipse(loc, 6.0, r0 + 16.0, 16.0, 9.0), BLOOD)
    la_a = 0.4 * heart.la_length * (1.0 + 0.1 * c)
    la_b = 0.55 * heart.la_width * (1.0 + 0.08 * c)
    la_u = r0 + 5.0 + la_a
    canvas.paint(loc, ellipse(loc, la_u, 0.0, la_a + 2.5, la_b + 2.5), CHEST_WALL)
    canvas.paint(loc, ellipse(loc, la_u, 0.0, la_a, la_b), BLOOD, 3)
    ra_scale = 1.0 + 0.08 * c
    canvas.paint(
        loc, ellipse(loc, 0.5 * r0 + 12.0, -(r0 + 20.0), 13.0 * ra_scale, 15.0 * ra_scale), BLOOD
    )
    canvas.paint(loc, ellipse(loc, 0.0, 0.0, radius + 2.5, radius + 2.5), VESSEL_WALL)
    canvas.paint(loc, ellipse(loc, 0.0, 0.0, radius, radius), BLOOD)

    # three cusps: closure lines from the wall to the centre, retracting to the wall when open
    opening = valve_opening(phases, heart.systole, outflow=True) * heart.av_opening
    thickness = 1.2 + 1.5 * heart.calcium
    for k in range(3):
        to_wall = angle + np.pi + k * 2.0 * np.pi / 3.0  # direction from the centre to the wall
        wall_dir = np.array([np.sin(to_wall), np.cos(to_wall)])
        hinge = origin + radius[:, None] * wall_dir
        length = radius * (1.0 - 0.85 * opening)
        draw_leaflet(
            canvas,
            hinge,
            np.full_like(c, to_wall + np.pi),
            length,
            thickness,
            VALVE * (1 + 1.5 * heart.calcium),
        )
        if heart.calcium > 0:
            nodule = origin + (0.55 * radius)[:, None] * wall_dir
            draw_blob(
                canvas, nodule, 1.0 + 3.0 * heart.calcium, CALCIUM * (1.0 + 3.0 * heart.calcium)
            )
    return {"aortic_valve": np.broadcast_to(origin, (len(c), 2)).copy()}
