"""LV geometry against closed forms: areas, polygons, Simpson volumes of ellipses and rectangles."""

from __future__ import annotations

import numpy as np
import pytest

from fedecho.data.geometry import (
    area_mm2,
    lv_disks,
    mask_from_tracings,
    simpson_volume_ml,
    tracings_from_mask,
)


def ellipse_mask(shape, centre_rc, half_long_mm, half_short_mm, angle_deg=0.0, spacing=(1.0, 1.0)):
    """Pixels whose centre lies in an ellipse; the long axis is vertical at angle 0 (all in mm)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    y = (rows - centre_rc[0]) * spacing[0]
    x = (cols - centre_rc[1]) * spacing[1]
    t = np.deg2rad(angle_deg)
    along = x * np.sin(t) + y * np.cos(t)
    across = x * np.cos(t) - y * np.sin(t)
    return ((along / half_long_mm) ** 2 + (across / half_short_mm) ** 2 <= 1).astype(np.uint8)


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("angle", [0.0, 25.0, 90.0, 143.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.3, 0.5)])
def test_single_plane_volume_of_ellipse_is_prolate_ellipsoid(angle, spacing):
    length, diameter = 80.0, 36.0  # mm
    shape = (int(120 / spacing[0]), int(120 / spacing[1]))
    mask = ellipse_mask(shape, (shape[0] / 2 + 0.3, shape[1] / 2 - 0.2), length / 2, diameter / 2, angle, spacing)
    expected_ml = np.pi / 6 * length * diameter**2 / 1000
    assert simpson_volume_ml(mask, spacing) == pytest.approx(expected_ml, rel=0.03)
    disks = lv_disks(mask, spacing)
    assert disks.length == pytest.approx(length, rel=0.02)
    assert disks.diameters.max() == pytest.approx(diameter, rel=0.03)


def test_biplane_volume_of_two_ellipses_uses_both_diameters_and_the_longer_axis():
    a4c = ellipse_mask((140, 120), (70, 60), 40, 20)  # L 80, D 40
    a2c = ellipse_mask((140, 120), (70, 60), 40, 14, angle_deg=10)  # L 80, D 28
    expected = np.pi / 6 * 80 * 40 * 28 / 1000
    assert simpson_volume_ml(a4c, (1, 1), a2c, (1, 1)) == pytest.approx(expected, rel=0.03)
    # a shorter 2CH axis: L is the longer (4CH) one, the 2CH diameters are spread over its disks
    short = ellipse_mask((140, 120), (70, 60), 30, 14)
    disks_4, disks_2 = lv_disks(a4c), lv_disks(short)
    by_hand = np.pi / 4 * np.sum(disks_4.diameters * disks_2.diameters) * disks_4.length / 20 / 1000
    assert simpson_volume_ml(a4c, (1, 1), short, (1, 1)) == pytest.approx(by_hand, rel=1e-12)
    assert simpson_volume_ml(short, (1, 1), a4c, (1, 1)) == pytest.approx(by_hand, rel=1e-12)


def test_rectangle_disks_are_exact_cylinder():
    mask = np.zeros((100, 80), np.uint8)
    mask[20:80, 30:50] = 1  # 60 rows x 20 columns
    spacing = (0.5, 0.25)  # 30 mm long, 5 mm wide
    disks = lv_disks(mask, spacing, n_disks=10)
    assert disks.length == pytest.approx(30.0, abs=1e-9)
    np.testing.assert_allclose(disks.diameters, 5.0, atol=0.02)
    assert simpson_volume_ml(mask, spacing) == pytest.approx(np.pi / 4 * 25 * 30 / 1000, rel=0.01)
    np.testing.assert_allclose(disks.apex, [39.5 * 0.25, 19.5 * 0.5], atol=1e-9)  # (x, y) mm
    np.testing.assert_allclose(disks.base, [39.5 * 0.25, 79.5 * 0.5], atol=1e-9)


def test_area_counts_only_the_label():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:6] = 1  # 12 pixels
    mask[6:8, 0:10] = 2  # 20 pixels of another label
    assert area_mm2(mask, (0.5, 0.2)) == pytest.approx(12 * 0.1)
    assert area_mm2(mask, (0.5, 0.2), label=2) == pytest.approx(20 * 0.1)


def test_mask_from_tracings_follows_the_echonet_polygon_order():
    # axis row, then chords at y=2 and y=8: polygon (2,2) (2,8) then X2 reversed: (8,8) (8,2)
    rows = np.array([[5, 2, 5, 8], [2, 2, 8, 2], [2, 8, 8, 8]], float)
    expected = np.zeros((12, 12), np.uint8)
    expected[2:9, 2:9] = 1  # the closed square, boundary pixels included
    # (a polygon without the reversal, (2,2) (2,8) (8,2) (8,8), is a bow-tie of about half this area)
    np.testing.assert_array_equal(mask_from_tracings(rows, (12, 12)), expected)


def test_tracings_round_trip_redraws_the_cavity():
    mask = ellipse_mask((112, 112), (55, 57), 38, 16, angle_deg=20)
    rows = tracings_from_mask(mask)
    assert rows.shape == (21, 4)
    assert np.hypot(rows[0, 2] - rows[0, 0], rows[0, 3] - rows[0, 1]) == pytest.approx(76, rel=0.03)
    assert dice(mask_from_tracings(rows, mask.shape), mask) > 0.95
    # the chords are the disks: their lengths give the same single-plane volume
    chords = np.hypot(rows[1:, 2] - rows[1:, 0], rows[1:, 3] - rows[1:, 1])
    length = np.hypot(rows[0, 2] - rows[0, 0], rows[0, 3] - rows[0, 1])
    assert np.pi / 4 * np.sum(chords**2) * length / 20 / 1000 == pytest.approx(
        simpson_volume_ml(mask, (1, 1)), rel=1e-9
    )


def test_tracings_from_a_multilabel_mask_use_the_cavity_only():
    mask = 2 * ellipse_mask((112, 112), (56, 56), 44, 24)  # myocardium
    mask[ellipse_mask((112, 112), (56, 56), 36, 16).astype(bool)] = 1  # cavity inside
    assert dice(mask_from_tracings(tracings_from_mask(mask), mask.shape), mask == 1) > 0.95


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="no pixel with label 1"):
        simpson_volume_ml(np.zeros((8, 8), np.uint8), (1, 1))
    with pytest.raises(ValueError, match="spacing must be positive"):
        area_mm2(np.ones((4, 4)), (0, 1))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        mask_from_tracings(np.zeros((5, 3)), (8, 8))
    with pytest.raises(ValueError, match="at least 2 chord rows"):
        mask_from_tracings(np.zeros((2, 4)), (8, 8))
    with pytest.raises(ValueError, match="needs its own spacing_a2c"):
        simpson_volume_ml(np.ones((4, 4)), (1, 1), np.ones((4, 4)))
