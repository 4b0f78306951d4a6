"""Per-format sample builders: what each dataset holds for one synthetic patient.

Each builder yields :class:`~fedecho.data.schema.Sample` s with the ids, frames and label keys of
the real dataset (canonical keys of :mod:`fedecho.data.schema`), so the format writers can lay
them out exactly like the release:

- ``camus``: A4C and A2C end-diastolic / end-systolic images (256 x 256) with 4-class masks, plus
  ED->ES half sequences with a mask per frame for about half of the patients.
- ``echonet-dynamic``: one A4C cine per patient (112 x 112, 50 fps, 2-4 s) with the LV cavity
  traced on one ED and the following ES frame; EchoNet has one video per patient.
- ``echonet-lvh``: one PLAX cine per patient (256 x 256) with the six calipers (cm) and their
  pixel endpoints on the ED (``*d``) and ES (``*s``) frames; one video per patient as released.
- ``tmed2``: 1-2 studies per patient, each with 6-10 still 112 x 112 images of all four views,
  view and AS-grade labels (the grade is the study's diagnosis).
- ``dicom``: 1-2 studies per patient, each with 2-3 cines (one cycle) of different views and one
  single frame; labels view, EF, volumes, age, sex and AS grade for the CSV.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fedecho.data.schema import Sample
from fedecho.data.synthetic.acquisition import Acquisition, acquire
from fedecho.data.synthetic.anatomy import CardiacClock
from fedecho.data.synthetic.cohort import Patient
from fedecho.data.synthetic.phantom import PHANTOM_VIEWS

__all__ = ["DEFAULT_IMAGE_SIZES", "LVH_CALCS", "SAMPLE_BUILDERS"]

#: Default (square) image size per format, in pixels.
DEFAULT_IMAGE_SIZES: dict[str, int] = {
    "camus": 256,
    "echonet-dynamic": 112,
    "echonet-lvh": 256,
    "tmed2": 112,
    "dicom": 192,
}

#: EchoNet-LVH caliper names: phantom caliper -> (diastolic Calc, systolic Calc).
LVH_CALCS: dict[str, tuple[str, str]] = {
    "IVS": ("IVSd", "IVSs"),
    "LVID": ("LVIDd", "LVIDs"),
    "LVPW": ("LVPWd", "LVPWs"),
}

_CAMUS_VIEWS = {"4CH": "A4C", "2CH": "A2C"}


def _hashed_name(salt: str, seed: int, index: int) -> str:
    """An EchoNet-style hashed file name, e.g. ``0X1A2B3C4D5E6F7081`` (deterministic)."""
    digest = hashlib.sha1(f"{salt}:{seed}:{index}".encode()).hexdigest()[:16].upper()
    return f"0X{digest}"


def _period(patient: Patient, fps: float) -> int:
    """Frames per cardiac cycle of ``patient`` at ``fps`` (as the acquisition's clock counts)."""
    return CardiacClock.make(fps, patient.heart_rate, patient.heart.systole, 0).period


def _patient_labels(patient: Patient) -> dict[str, Any]:
    return {
        "age": float(round(patient.age)),
        "sex": patient.sex,
        "ef": round(patient.ef, 2),
        "edv": round(patient.edv, 2),
        "esv": round(patient.esv, 2),
        "scanner": patient.style.name,
    }


def _sample(
    source: str,
    pid: str,
    sid: str,
    iid: str,
    frames: np.ndarray,
    acq: Acquisition,
    patient: Patient,
    labels: dict[str, Any],
    video: bool,
) -> Sample:
    return Sample(
        source=source,
        patient_id=pid,
        study_id=sid,
        item_id=iid,
        frames=frames,
        spacing=acq.spacing,
        fps=acq.fps if video else None,
        labels=labels,
        split=patient.split,
    )


def camus_samples(
    patient: Patient, rng: np.random.Generator, size: int, seed: int
) -> Iterator[Sample]:
    pid = f"patient{patient.index + 1:04d}"
    with_sequence = bool(rng.random() < 0.5)
    fps = float(rng.integers(30, 51))  # CAMUS frame rates are whole numbers
    for tag, view in _CAMUS_VIEWS.items():
        systole = CardiacClock.make(
            fps, patient.heart_rate, patient.heart.systole, 0
        ).systole_frames
        acq = acquire(patient, view, rng, size=size, num_frames=systole + 1, fps=fps)
        base = {"view": view, **_patient_labels(patient), "image_quality": patient.image_quality}
        for phase, frame in (("ED", 0), ("ES", systole)):
            labels = {**base, "phase": phase, "mask": acq.mask[frame].copy()}
            yield _sample(
                "camus",
                pid,
                pid,
                f"{pid}_{tag}_{phase}",
                acq.frames[frame].copy(),
                acq,
                patient,
                labels,
                video=False,
            )
        if with_sequence:
            labels = {
                **base,
                "ed_frame": 0,
                "es_frame": systole,
                "mask": acq.mask,
                "mask_frames": list(range(systole + 1)),
            }
            yield _sample(
                "camus",
                pid,
                pid,
                f"{pid}_{tag}_half_sequence",
                acq.frames,
                acq,
                patient,
                labels,
                video=True,
            )


def echonet_dynamic_samples(
    patient: Patient, rng: np.random.Generator, size: int, seed: int
) -> Iterator[Sample]:
    name = _hashed_name("echonet-dynamic", seed, patient.index)
    fps = 50.0
    num_frames = round(rng.uniform(2.0, 4.0) * fps)
    period = _period(patient, fps)
    acq = acquire(
        patient,
        "A4C",
        rng,
        size=size,
        num_frames=num_frames,
        fps=fps,
        ed_offset=int(rng.integers(0, period)),
    )
    ed = acq.clock.ed_frames(num_frames)[0]
    es = ed + acq.clock.systole_frames
    labels = {
        "view": "A4C",
        **{
            k: v
            for k, v in _patient_labels(patient).items()
            if k in ("ef", "edv", "esv", "scanner")
        },
        "ed_frame": ed,
        "es_frame": es,
        "mask": (acq.mask[[ed, es]] == 1).astype(np.uint8),
        "mask_frames": [ed, es],
    }
    yield _sample("echonet-dynamic", name, name, name, acq.frames, acq, patient, labels, video=True)


def echonet_lvh_samples(
    patient: Patient, rng: np.random.Generator, size: int, seed: int
) -> Iterator[Sample]:
    name = _hashed_name("echonet-lvh", seed, patient.index)
    fps = patient.style.frame_rate
    period = _period(patient, fps)
    ed_offset = int(rng.integers(0, max(1, period // 3)))
    num_frames = ed_offset + period + int(rng.integers(2, max(3, period // 2)))
    acq = acquire(
        patient, "PLAX", rng, size=size, num_frames=num_frames, fps=fps, ed_offset=ed_offset
    )
    ed, es = ed_offset, ed_offset + acq.clock.systole_frames
    calipers = acq.phantom.calipers
    measurements, landmarks, frames_of = {}, {}, {}
    for caliper, (diastolic, systolic) in LVH_CALCS.items():
        for calc, frame in ((diastolic, ed), (systolic, es)):
            measurements[calc] = round(float(calipers[caliper + "_mm"][frame]) / 10.0, 4)
            landmarks[calc] = calipers[caliper][frame].astype(np.float64)
            frames_of[calc] = frame
    labels = {
        "view": "PLAX",
        "scanner": patient.style.name,
        "ed_frame": ed,
        "es_frame": es,
        "measurements": measurements,
        "landmarks": landmarks,
        "landmark_frames": frames_of,
    }
    yield _sample("echonet-lvh", name, name, name, acq.frames, acq, patient, labels, video=True)


def _study_views(rng: np.random.Generator, count: int) -> list[str]:
    """Every view once, then random views, shuffled."""
    views = list(PHANTOM_VIEWS) + list(rng.choice(PHANTOM_VIEWS, size=max(0, count - 4)))
    rng.shuffle(views)
    return [str(v) for v in views]


def tmed2_samples(
    patient: Patient, rng: np.random.Generator, size: int, seed: int
) -> Iterator[Sample]:
    pid = str(1000 + patient.index)
    for study in range(1, 2 + int(rng.random() < 0.3)):
        sid = f"{pid}s{study}"
        for idx, view in enumerate(_study_views(rng, int(rng.integers(6, 11)))):
            acq = acquire(
                patient,
                view,
                rng,
                size=size,
                num_frames=1,
                fps=30.0,
                phases=np.array([rng.random()]),
            )
            labels = {"view": view, "as_grade": patient.as_grade, "scanner": patient.style.name}
            yield _sample(
                "tmed2", pid, sid, f"{sid}_{idx}", acq.frames[0], acq, patient, labels, video=False
            )


def dicom_samples(
    patient: Patient, rng: np.random.Generator, size: int, seed: int
) -> Iterator[Sample]:
    pid = f"SYN{patient.index + 1:05d}"
    fps = patient.style.frame_rate
    period = _period(patient, fps)
    base = {**_patient_labels(patient), "as_grade": patient.as_grade}
    for study in range(1, 2 + int(rng.random() < 0.4)):
        sid = f"{pid}-S{study}"
        cines = ["A4C"] + [
            str(v)
            for v in rng.choice(PHANTOM_VIEWS[1:], size=int(rng.integers(1, 3)), replace=False)
        ]
        stills = [str(rng.choice(PHANTOM_VIEWS))]
        for n, view in enumerate(cines + stills):
            video = n < len(cines)
            num_frames = period + 2 if video else 1
            acq = acquire(
                patient,
                view,
                rng,
                size=size,
                num_frames=num_frames,
                fps=fps,
                ed_offset=int(rng.integers(0, period)),
            )
            labels = {**base, "view": view}
            frames = acq.frames if video else acq.frames[0]
            yield _sample("dicom", pid, sid, f"{sid}-{n + 1}", frames, acq, patient, labels, video)


#: format name -> builder(patient, rng, image_size, seed) yielding that patient's Samples.
SAMPLE_BUILDERS: dict[str, Callable[[Patient, np.random.Generator, int, int], Iterator[Sample]]] = {
    "camus": camus_samples,
    "echonet-dynamic": echonet_dynamic_samples,
    "echonet-lvh": echonet_lvh_samples,
    "tmed2": tmed2_samples,
    "dicom": dicom_samples,
}
