"""Synthetic echo generator: cohort, cardiac cycle, phantom geometry vs labels, learnable relations,
scanner styles, determinism and argument checks (no writers involved; see test_synthetic_roundtrip)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression

from fedecho.data.geometry import simpson_volume_ml
from fedecho.data.schema import AS_GRADES, VIEWS
from fedecho.data.synthetic import (
    SCANNER_STYLES,
    CardiacClock,
    Heart,
    acquire,
    assign_splits,
    generate_samples,
    make_cohort,
    make_patient,
    synthesize,
)
from fedecho.data.synthetic.anatomy import (
    BASE_CUT,
    contraction,
    lv_length_diameter,
    lv_volume_ml,
)
from fedecho.data.synthetic.styles import ScannerStyle, pick_style


@pytest.fixture(scope="module")
def camus() -> list:
    return list(generate_samples("camus", make_cohort(5, 3), seed=3))


def _by_patient(samples: list) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for s in samples:
        key = (
            (s.labels["view"], s.labels["phase"])
            if s.frames.ndim == 2
            else (s.labels["view"], "seq")
        )
        out.setdefault(s.patient_id, {})[key] = s
    return out


# --- anatomy and cohort ----------------------------------------------------------------------------
def test_truncated_ellipsoid_volume_matches_disk_integral():
    length, diameter = 90.0, 48.0
    semi = length / (1 + BASE_CUT)
    w = np.linspace(-semi, BASE_CUT * semi, 200_001)  # axial position from the ellipse centre
    disks = np.pi / 4 * diameter**2 * (1 - (w / semi) ** 2)
    expected_ml = float(np.sum((disks[1:] + disks[:-1]) / 2 * np.diff(w))) / 1000
    assert lv_volume_ml(length, diameter) == pytest.approx(expected_ml, rel=1e-6)
    # a full ellipsoid (cut at the end of the axis) is pi/6 L D^2: the formula's limiting case
    full = np.pi / 4 * diameter**2 * semi * (2 - 2 / 3) / 1000
    assert full == pytest.approx(np.pi / 6 * (2 * semi) * diameter**2 / 1000)
    back_l, back_d = lv_length_diameter(lv_volume_ml(length, diameter), diameter / length)
    assert (back_l, back_d) == pytest.approx((length, diameter))


def test_heart_from_volumes_reproduces_the_labels():
    heart = Heart.from_volumes(
        edv_ml=150.0,
        esv_ml=60.0,
        sphericity=0.55,
        a2c_ratio=1.03,
        ivs_ed=9.0,
        lvpw_ed=8.5,
        la_length=50.0,
        la_width=38.0,
        rv_scale=1.0,
        aortic_root=30.0,
        myo_echo=1.2,
        calcium=0.0,
        av_opening=1.0,
        systole=0.35,
    )
    assert heart.edv_ml() == pytest.approx(150.0) and heart.esv_ml() == pytest.approx(60.0)
    assert heart.lv_length_es < heart.lv_length_ed and heart.lv_diameter_es < heart.lv_diameter_ed
    assert heart.ivs_es > heart.ivs_ed and heart.lvpw_es > heart.lvpw_ed  # systolic thickening
    with pytest.raises(ValueError, match="ESV < EDV"):
        Heart.from_volumes(
            edv_ml=50.0, esv_ml=60.0, sphericity=0.5, a2c_ratio=1.0, ivs_ed=9.0, lvpw_ed=9.0
        )


def test_contraction_is_periodic_with_fast_ejection_and_slow_filling():
    systole = 0.35
    phase = np.linspace(0.0, 1.0, 1001)
    c = contraction(phase, systole)
    assert c[0] == pytest.approx(0.0) and c[-1] == pytest.approx(0.0, abs=1e-12)
    assert contraction(np.array([systole]), systole)[0] == pytest.approx(1.0)
    assert contraction(phase + 1.0, systole) == pytest.approx(c)
    ejection = c[phase <= systole]
    assert np.all(np.diff(ejection) >= 0)  # monotone ejection
    emptied = phase[np.argmax(c >= 0.95)]  # 95 % of the stroke ejected
    refilled = phase[phase > systole][np.argmax(c[phase > systole] <= 0.05)]  # 95 % refilled
    assert emptied < systole < 0.5 and refilled - systole > 1.5 * emptied  # fast out, slow in
    assert np.all(np.abs(np.diff(c)) < 0.01)  # smooth: no jumps between 1/1000 phases


def test_cardiac_clock_puts_ed_and_es_on_frames():
    clock = CardiacClock.make(fps=50.0, heart_rate=72.0, systole=0.36, ed_offset=7)
    assert clock.period == round(50 * 60 / 72)
    phases = clock.phases(120)
    for ed in clock.ed_frames(120):
        assert phases[ed] == pytest.approx(0.0)
    for es in clock.es_frames(120):
        assert phases[es] == pytest.approx(clock.systole)
    assert clock.ed_frames(120)[0] == 7


def test_cohort_ranges_and_label_relations():
    cohort = make_cohort(300, 11)
    ages = np.array([p.age for p in cohort])
    ef = np.array([p.ef for p in cohort])
    edv = np.array([p.edv for p in cohort])
    esv = np.array([p.esv for p in cohort])
    assert ages.min() >= 20 and ages.max() <= 90
    assert ef.min() >= 20 - 1e-9 and ef.max() <= 75 + 1e-9 and ef.std() > 8
    assert edv.min() >= 70 - 1e-9 and edv.max() <= 220 + 1e-9
    assert ef == pytest.approx(100 * (edv - esv) / edv)
    assert {p.sex for p in cohort} == {"M", "F"}
    assert {p.as_grade for p in cohort} == set(AS_GRADES)
    grade = np.array([AS_GRADES.index(p.as_grade) for p in cohort])
    assert ages[grade > 0].mean() > ages[grade == 0].mean() + 10  # stenosis is a disease of age
    assert spearmanr(grade, [p.heart.calcium for p in cohort])[0] > 0.9
    assert spearmanr(ages, [p.heart.myo_echo for p in cohort])[0] > 0.9
    assert spearmanr(ages, [p.heart.ivs_ed for p in cohort])[0] > 0.4
    assert make_patient(11, 7, "train") == make_patient(11, 7, "train")  # per-patient generator


def test_splits_are_patient_level_70_15_15_and_deterministic():
    splits = assign_splits(20, seed=5)
    assert sorted(splits.count(s) for s in ("train", "val", "test")) == [3, 3, 14]
    assert assign_splits(20, seed=5) == splits and assign_splits(20, seed=6) != splits
    assert assign_splits(1, seed=0) == ["train"]
    assert sorted(assign_splits(3, seed=0)) == ["test", "train", "val"]
    samples = list(generate_samples("tmed2", make_cohort(6, 2), seed=2, image_size=32))
    per_patient: dict[str, set] = {}
    for s in samples:
        per_patient.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in per_patient.values())


# --- phantom geometry vs labels --------------------------------------------------------------------
def _disks_volume_ml(mask: np.ndarray, spacing: float, n_disks: int = 40) -> float:
    """Independent single-plane method of disks: principal axis of the cavity pixels, disk width
    = cavity area of the slice / slice thickness (unbiased on pixelated masks)."""
    rows, cols = np.nonzero(mask == 1)
    points = np.stack([cols, rows], axis=1) * spacing
    centred = points - points.mean(axis=0)
    axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    along = centred @ axis
    edges = np.linspace(along.min() - spacing / 2, along.max() + spacing / 2, n_disks + 1)
    thickness = edges[1] - edges[0]
    widths = np.histogram(along, edges)[0] * spacing**2 / thickness
    return float(np.sum(np.pi / 4 * widths**2 * thickness)) / 1000


def test_simpson_on_masks_matches_volume_and_ef_labels(camus):
    for pid, items in _by_patient(camus).items():
        labels = items[("A4C", "ED")].labels
        volumes = {}
        for phase in ("ED", "ES"):
            a4c, a2c = items[("A4C", phase)], items[("A2C", phase)]
            single = simpson_volume_ml(a4c.labels["mask"], a4c.spacing)
            biplane = simpson_volume_ml(
                a4c.labels["mask"], a4c.spacing, a2c.labels["mask"], a2c.spacing
            )
            label = labels["edv" if phase == "ED" else "esv"]
            assert single == pytest.approx(label, rel=0.10), (pid, phase)
            independent = _disks_volume_ml(a4c.labels["mask"], a4c.spacing[0])
            assert independent == pytest.approx(label, rel=0.10), (pid, phase)
            assert biplane == pytest.approx(label, rel=0.03), (pid, phase)
            volumes[phase] = biplane
        ef = 100 * (volumes["ED"] - volumes["ES"]) / volumes["ED"]
        assert ef == pytest.approx(labels["ef"], abs=3.0), pid


def test_masks_labels_and_image_agree(camus):
    for s in camus:
        masks = s.labels["mask"] if s.frames.ndim == 3 else s.labels["mask"][None]
        frames = s.frames if s.frames.ndim == 3 else s.frames[None]
        assert masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1, 2, 3}
        for frame, mask in zip(frames, masks):
            cavity, myo = frame[mask == 1].mean(), frame[mask == 2].mean()
            assert myo > cavity + 20, s.item_id  # bright myocardium, dark blood pool
            assert frame[mask == 3].mean() < myo  # blood in the atrium


def test_masks_stay_inside_the_fan():
    patient = make_patient(0, 1, "train", "site_b")  # the narrowest sector
    for view in ("A4C", "A2C", "PLAX", "PSAX"):
        acq = acquire(patient, view, np.random.default_rng(1), size=96, num_frames=3, fps=30.0)
        assert acq.mask.any() and not acq.mask[:, ~acq.phantom.sector].any()
        assert not acq.frames[:, ~acq.phantom.sector].any()  # black outside the sector


def test_myocardium_surrounds_cavity_and_la_closes_the_base(camus):
    for s in camus:
        masks = s.labels["mask"] if s.frames.ndim == 3 else s.labels["mask"][None]
        for mask in masks:
            cavity = (mask == 1).astype(np.uint8)
            ring = (cv2.dilate(cavity, np.ones((3, 3), np.uint8)) - cavity).astype(bool)
            neighbours = mask[ring]
            assert set(np.unique(neighbours)) == {2, 3}, s.item_id
            assert np.mean(neighbours == 2) > 0.7  # mostly myocardium; the LA only at the base
            rows_la = np.nonzero((mask == 3).any(axis=1))[0]
            rows_lv = np.nonzero(cavity.any(axis=1))[0]
            assert rows_la.min() > rows_lv.min() + 0.5 * (rows_lv.max() - rows_lv.min())  # LA below


def test_half_sequence_runs_from_ed_to_es(camus):
    items = [v for v in _by_patient(camus).values() if ("A4C", "seq") in v]
    assert items, "some CAMUS patients must have half sequences"
    for v in items:
        seq = v[("A4C", "seq")]
        assert seq.labels["ed_frame"] == 0 and seq.labels["es_frame"] == len(seq.frames) - 1
        assert seq.labels["mask_frames"] == list(range(len(seq.frames)))
        np.testing.assert_array_equal(seq.frames[0], v[("A4C", "ED")].frames)
        np.testing.assert_array_equal(seq.labels["mask"][-1], v[("A4C", "ES")].labels["mask"])
        area = (seq.labels["mask"] == 1).sum(axis=(1, 2))
        assert np.all(np.diff(area) <= 0) and area[-1] < 0.8 * area[0]  # ejection


def test_echonet_dynamic_video_timing_and_traced_frames():
    cohort = make_cohort(3, 8)
    for patient, s in zip(cohort, generate_samples("echonet-dynamic", cohort, seed=8)):
        t, h, w = s.frames.shape
        assert (h, w) == (112, 112) and s.fps == 50.0 and 100 <= t <= 200
        ed, es = s.labels["mask_frames"]
        assert (ed, es) == (s.labels["ed_frame"], s.labels["es_frame"])
        mask = s.labels["mask"]
        assert mask.shape == (2, 112, 112) and set(np.unique(mask)) == {0, 1}
        single = [simpson_volume_ml(m, s.spacing) for m in mask]
        assert single == pytest.approx([s.labels["edv"], s.labels["esv"]], rel=0.1)
        period = round(50 * 60 / patient.heart_rate)
        assert (
            es - ed
            == CardiacClock.make(50, patient.heart_rate, patient.heart.systole, 0).systole_frames
        )
        # the LV blood pool (dark pixels in the cavity region) beats with the heart's period
        region = mask[0].astype(bool)
        dark = (s.frames[:, region] < 40).mean(axis=1)
        dark = dark - dark.mean()
        lags = np.arange(period // 2, min(2 * period, t // 2))
        corr = [np.dot(dark[:-lag], dark[lag:]) / (t - lag) for lag in lags]
        assert abs(int(lags[int(np.argmax(corr))]) - period) <= 2


def test_lvh_calipers_match_measurements_and_anatomy():
    cohort = make_cohort(4, 9)
    for patient, s in zip(cohort, generate_samples("echonet-lvh", cohort, seed=9, image_size=160)):
        marks, values, frames = (
            s.labels["landmarks"],
            s.labels["measurements"],
            s.labels["landmark_frames"],
        )
        assert (
            set(marks)
            == set(values)
            == set(frames)
            == {"IVSd", "LVIDd", "LVPWd", "IVSs", "LVIDs", "LVPWs"}
        )
        for calc, (x1, y1, x2, y2) in marks.items():
            assert np.hypot(x2 - x1, y2 - y1) * s.spacing[0] / 10 == pytest.approx(
                values[calc], abs=1e-3
            )
            assert frames[calc] == s.labels["ed_frame" if calc.endswith("d") else "es_frame"]
            assert 0 <= min(x1, y1, x2, y2) and max(x1, y1, x2, y2) <= 159
        assert values["IVSd"] == pytest.approx(patient.heart.ivs_ed / 10, abs=1e-3)
        assert values["LVIDs"] < values["LVIDd"] and values["IVSs"] > values["IVSd"]
        np.testing.assert_allclose(marks["IVSd"][2:], marks["LVIDd"][:2])  # shared endpoints
        np.testing.assert_allclose(marks["LVIDd"][2:], marks["LVPWd"][:2])
        frame = s.frames[frames["IVSd"]].astype(float)

        def along(calc: str, marks: dict = marks, frame: np.ndarray = frame) -> float:
            x1, y1, x2, y2 = marks[calc]
            t = np.linspace(0.2, 0.8, 25)
            return frame[
                np.round(y1 + t * (y2 - y1)).astype(int), np.round(x1 + t * (x2 - x1)).astype(int)
            ].mean()

        assert along("IVSd") > along("LVIDd") + 20 and along("LVPWd") > along("LVIDd") + 20


# --- learnable relations ---------------------------------------------------------------------------
def test_views_are_separable_on_held_out_patients():
    cohort = make_cohort(24, 5)
    samples = list(generate_samples("tmed2", cohort, seed=5, image_size=64))
    x = np.stack(
        [
            cv2.resize(s.frames, (24, 24), interpolation=cv2.INTER_AREA).ravel() / 255.0
            for s in samples
        ]
    )
    y = np.array([s.labels["view"] for s in samples])
    train = np.array([int(s.patient_id) < 1016 for s in samples])
    assert set(y) == {"A4C", "A2C", "PLAX", "PSAX"} and set(y) <= set(VIEWS)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[train], y[train])
    assert (clf.predict(x[~train]) == y[~train]).mean() > 0.7  # chance: 0.25


def test_as_grade_and_age_leave_learnable_traces():
    cohort = make_cohort(40, 3, "site_a")
    grade, valve, age, myo = [], [], [], []
    for p in cohort:
        rng = np.random.default_rng([3, p.index, 9])
        plax = acquire(p, "PLAX", rng, size=128, num_frames=1, fps=30.0, phases=np.array([0.6]))
        col, row = plax.phantom.points["aortic_valve"][0]
        rr, cc = np.ogrid[:128, :128]
        window = (rr - row) ** 2 + (cc - col) ** 2 < (10.0 / plax.spacing[0]) ** 2
        valve.append(np.percentile(plax.frames[0][window], 95))
        grade.append(AS_GRADES.index(p.as_grade))
        a4c = acquire(p, "A4C", rng, size=128, num_frames=1, fps=30.0)
        myo.append(np.median(a4c.frames[0][a4c.mask[0] == 2]))
        age.append(p.age)
    assert len(set(grade)) >= 3
    assert spearmanr(grade, valve)[0] > 0.5  # calcified, brighter aortic valve
    assert spearmanr(age, myo)[0] > 0.5  # brighter myocardium with age


# --- styles ----------------------------------------------------------------------------------------
def test_scanner_styles_registry_and_mixed():
    assert len(SCANNER_STYLES) >= 3
    rng = np.random.default_rng(0)
    assert {pick_style("mixed", rng).name for _ in range(40)} == set(SCANNER_STYLES)
    with pytest.raises(ValueError, match="valid styles: site_a"):
        pick_style("site_z", rng)
    with pytest.raises(ValueError, match="sector_deg"):
        dataclasses.replace(SCANNER_STYLES["site_a"], sector_deg=150.0)
    scanners = {
        s.labels["scanner"]
        for s in generate_samples("tmed2", make_cohort(12, 1, "mixed"), seed=1, image_size=32)
    }
    assert len(scanners) >= 2 and scanners <= set(SCANNER_STYLES)
    fixed = {
        s.labels["scanner"]
        for s in generate_samples("tmed2", make_cohort(4, 1, "site_b"), seed=1, image_size=32)
    }
    assert fixed == {"site_b"}


def test_styles_differ_measurably():
    stats: dict[str, tuple[float, float, float]] = {}
    for name, style in SCANNER_STYLES.items():
        angles, means, edges = [], [], []
        for p in make_cohort(4, 4, name):
            acq = acquire(
                p, "A4C", np.random.default_rng([4, p.index]), size=128, num_frames=1, fps=30.0
            )
            img, grid = acq.frames[0].astype(float), acq.phantom.grid
            row = int(0.4 * grid.height)
            cols = np.nonzero(img[row] > 0)[0]
            half_width = np.abs((cols + 0.5 - grid.width / 2) * grid.spacing).max()
            angles.append(np.degrees(np.arctan2(half_width, (row + 0.5) * grid.spacing)))
            inside = acq.phantom.sector
            means.append(img[inside].mean())
            edges.append(np.abs(np.diff(img, axis=1))[inside[:, 1:] & inside[:, :-1]].mean())
        stats[name] = (float(np.mean(angles)), float(np.mean(means)), float(np.mean(edges)))
        assert stats[name][0] == pytest.approx(style.sector_deg / 2, abs=2.5)
    names = sorted(stats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (angle_a, mean_a, edge_a), (angle_b, mean_b, edge_b) = stats[a], stats[b]
            assert abs(angle_a - angle_b) > 3.0 and (
                abs(mean_a - mean_b) > 5 or abs(edge_a - edge_b) > 3
            )


# --- determinism, formats, errors ------------------------------------------------------------------
def test_same_seed_same_arrays_other_seed_differs():
    def run(seed: int) -> list:
        return list(generate_samples("echonet-lvh", make_cohort(2, seed), seed=seed, image_size=64))

    a, b, c = run(4), run(4), run(5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frames, y.frames)
        assert x.labels["measurements"] == y.labels["measurements"] and x.item_id == y.item_id
    assert not np.array_equal(a[0].frames[:1], c[0].frames[:1])


@pytest.mark.parametrize(
    ("fmt", "shape", "keys"),
    [
        ("camus", (256, 256), {"view", "mask", "ef", "edv", "esv", "age", "sex", "image_quality"}),
        (
            "echonet-dynamic",
            (112, 112),
            {"ef", "edv", "esv", "mask", "mask_frames", "ed_frame", "es_frame"},
        ),
        ("echonet-lvh", (256, 256), {"measurements", "landmarks", "landmark_frames", "view"}),
        ("tmed2", (112, 112), {"view", "as_grade"}),
        ("dicom", (192, 192), {"view", "ef", "edv", "esv", "age", "sex", "as_grade"}),
    ],
)
def test_format_samples_follow_the_schema(fmt, shape, keys):
    samples = list(generate_samples(fmt, make_cohort(2, 6), seed=6))
    studies: dict[tuple[str, str], int] = {}
    for s in samples:
        assert s.source == fmt and s.frames.dtype == np.uint8 and s.frames.shape[-2:] == shape
        assert keys <= set(s.labels) and s.labels.get("view", "A4C") in VIEWS
        assert (
            s.split in ("train", "val", "test")
            and s.spacing[0] > 0
            and s.spacing == (s.spacing[0],) * 2
        )
        assert (s.fps is not None) == s.is_video
        assert fmt != "camus" or s.is_video or s.labels["phase"] in ("ED", "ES")
        studies[(s.patient_id, s.study_id)] = studies.get((s.patient_id, s.study_id), 0) + 1
    if fmt in ("camus", "tmed2", "dicom"):  # several items per study (multi-instance learning)
        assert min(studies.values()) >= 2


def test_synthesize_rejects_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="valid formats: camus, .*tmed2"):
        synthesize("nifti", tmp_path / "a")
    with pytest.raises(ValueError, match="valid styles"):
        synthesize("camus", tmp_path / "a", style="vendor_x")
    with pytest.raises(ValueError, match="positive integer"):
        synthesize("camus", tmp_path / "a", patients=0)
    with pytest.raises(ValueError, match="image_size"):
        synthesize("camus", tmp_path / "a", image_size=8)
    with pytest.raises(ValueError, match="not empty"):
        synthesize("tmed2", tmp_path / "full")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="16x16"):
        acquire(
            make_patient(0, 0, "train"),
            "A4C",
            np.random.default_rng(0),
            size=8,
            num_frames=1,
            fps=30.0,
        )
    with pytest.raises(ValueError, match="valid views"):
        acquire(
            make_patient(0, 0, "train"),
            "SUBCOSTAL",
            np.random.default_rng(0),
            size=64,
            num_frames=1,
            fps=30.0,
        )
    assert isinstance(SCANNER_STYLES["site_a"], ScannerStyle)
