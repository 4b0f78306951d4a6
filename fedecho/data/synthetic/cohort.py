"""Synthetic patients: demographics, labels and the heart that produces them.

Each patient is drawn from its own generator (``default_rng([seed, index, stream])``), so patient
``i`` is the same whatever the cohort size or output format. The relations a model can learn:

- age (20-90 y): myocardial echogenicity (+0.8 %/year), wall thickness (+0.035 mm/year), left
  atrium and aortic root grow; EF drifts down after 50; aortic stenosis becomes likely after ~60.
- aortic-stenosis grade: valve calcification (brightness and size in PLAX / PSAX) and restricted
  opening grow with grade; the walls thicken (+0.5 mm per grade).
- LV hypertrophy: IVSd / LVPWd thickened in a subgroup; LVID from the LV size.
- EF / volumes: low EF comes with a dilated, more spherical LV.
- image quality (Good / Medium / Poor): more clutter, noise and wall dropout when poorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedecho.data.schema import AS_GRADES
from fedecho.data.synthetic.anatomy import Heart
from fedecho.data.synthetic.styles import ScannerStyle, pick_style

__all__ = [
    "IMAGE_QUALITIES",
    "Patient",
    "assign_splits",
    "heart_ef",
    "make_cohort",
    "make_patient",
]

IMAGE_QUALITIES: tuple[str, ...] = ("Good", "Medium", "Poor")

# per AS grade (no_AS .. severe_AS): calcification, systolic opening, extra wall thickness (mm)
_AS_CALCIUM = (0.0, 0.3, 0.5, 0.72, 1.0)
_AS_OPENING = (1.0, 0.75, 0.6, 0.45, 0.3)
_AS_WALL_MM = (0.0, 0.5, 1.0, 1.5, 2.0)

# independent random streams of one patient
_ANATOMY, _STYLE = 0, 1


@dataclass(frozen=True)
class Patient:
    """One synthetic patient: labels (age y, EF %, volumes mL), scanner and heart."""

    index: int
    age: float
    sex: str
    ef: float
    edv: float
    esv: float
    as_grade: str
    image_quality: str
    heart_rate: float
    style: ScannerStyle
    heart: Heart
    split: str

    def measurements_cm(self, *, systole: bool) -> dict[str, float]:
        """PLAX calipers in cm: ``IVSd, LVIDd, LVPWd`` (or ``IVSs, LVIDs, LVPWs``)."""
        h = self.heart
        if systole:
            return {"IVSs": h.ivs_es / 10, "LVIDs": h.lvid_es / 10, "LVPWs": h.lvpw_es / 10}
        return {"IVSd": h.ivs_ed / 10, "LVIDd": h.lvid_ed / 10, "LVPWd": h.lvpw_ed / 10}


def _as_grade(age: float, rng: np.random.Generator) -> int:
    """AS grade index: prevalence rises with age (logistic around 62 y, at most 80 %)."""
    p_stenosis = 0.8 / (1.0 + np.exp(-(age - 62.0) / 8.0))
    if rng.random() >= p_stenosis:
        return 0
    return int(rng.integers(1, len(AS_GRADES)))


def make_patient(seed: int, index: int, split: str, style: str = "mixed") -> Patient:
    """Draw patient ``index`` of the cohort of ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, index, _ANATOMY])
    age = float(rng.uniform(20.0, 90.0))
    sex = "M" if rng.random() < 0.5 else "F"
    male = sex == "M"
    grade = _as_grade(age, rng)

    if rng.random() < 0.3:  # reduced ejection fraction
        ef = rng.uniform(20.0, 50.0)
    else:
        ef = rng.normal(61.0, 5.0)
    ef = float(np.clip(ef - 0.06 * max(0.0, age - 50.0), 20.0, 75.0))
    dilation = max(0.0, 55.0 - ef) / 35.0  # 0 for normal EF, 1 at EF 20 %
    edv = (122.0 if male else 100.0) * np.exp(rng.normal(0.0, 0.12)) * (1.0 + 0.9 * dilation)
    edv = float(np.clip(edv, 70.0, 220.0))
    esv = edv * (1.0 - ef / 100.0)

    hypertrophy = rng.uniform(3.0, 7.0) if rng.random() < 0.15 + 0.1 * (age > 60) else 0.0
    ivs_ed = (
        7.0
        + 0.035 * (age - 20.0)
        + 0.8 * male
        + _AS_WALL_MM[grade]
        + hypertrophy
        + rng.normal(0.0, 0.5)
    )
    ivs_ed = float(np.clip(ivs_ed, 5.5, 20.0))
    calcium = float(np.clip(_AS_CALCIUM[grade] + rng.normal(0.0, 0.05), 0.0, 1.0)) if grade else 0.0
    heart_rate = float(rng.uniform(55.0, 95.0))
    heart = Heart.from_volumes(
        edv_ml=edv,
        esv_ml=esv,
        sphericity=float(np.clip(0.5 + 0.12 * dilation + rng.normal(0.0, 0.03), 0.42, 0.72)),
        a2c_ratio=float(rng.uniform(0.95, 1.05)),
        ivs_ed=ivs_ed,
        lvpw_ed=float(ivs_ed * rng.uniform(0.85, 1.0)),
        la_length=float(44.0 + 0.12 * (age - 20.0) + rng.normal(0.0, 3.0)),
        la_width=float(36.0 + 0.08 * (age - 20.0) + rng.normal(0.0, 2.5)),
        rv_scale=float(rng.normal(1.0, 0.08)),
        aortic_root=float(25.0 + 0.07 * (age - 20.0) + 2.0 * male + rng.normal(0.0, 1.5)),
        myo_echo=float(1.0 + 0.015 * (age - 20.0) + rng.normal(0.0, 0.05)),
        calcium=calcium,
        av_opening=_AS_OPENING[grade],
        systole=0.3 + 0.1 * (heart_rate - 55.0) / 40.0,
    )
    quality = IMAGE_QUALITIES[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    return Patient(
        index=index,
        age=round(age, 1),
        sex=sex,
        ef=heart_ef(heart),
        edv=heart.edv_ml(),
        esv=heart.esv_ml(),
        as_grade=AS_GRADES[grade],
        image_quality=quality,
        heart_rate=heart_rate,
        style=pick_style(style, np.random.default_rng([seed, index, _STYLE])),
        heart=heart,
        split=split,
    )


def heart_ef(heart: Heart) -> float:
    """Ejection fraction (%) of the drawn cavity."""
    edv, esv = heart.edv_ml(), heart.esv_ml()
    return 100.0 * (edv - esv) / edv


def assign_splits(num_patients: int, seed: int) -> list[str]:
    """Patient-level split (70 / 15 / 15 % train / val / test), deterministic for the seed.

    Validation and test get ``round(0.15 n)`` patients each, at least one from 3 patients on (so
    small demo cohorts can still be evaluated); the rest is training.
    """
    if num_patients < 1:
        raise ValueError(f"need at least one patient, got {num_patients}")
    n_val = n_test = max(round(0.15 * num_patients), 1 if num_patients >= 3 else 0)
    splits = np.array(["train"] * num_patients, dtype=object)
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_patients)
    splits[order[:n_val]] = "val"
    splits[order[n_val : n_val + n_test]] = "test"
    return [str(s) for s in splits]


def make_cohort(num_patients: int, seed: int, style: str = "mixed") -> list[Patient]:
    """``num_patients`` patients with their splits (see :func:`make_patient`)."""
    splits = assign_splits(num_patients, seed)
    return [make_patient(seed, i, splits[i], style) for i in range(num_patients)]
