"""The phantom heart's dimensions and how they change over one cardiac cycle.

The LV cavity is a *truncated prolate ellipsoid*: an ellipsoid of revolution with semi-axes
``A`` (long) and ``D/2`` whose basal end is cut by the mitral plane at ``BASE_CUT * A`` beyond the
centre. In an apical plane it is the matching truncated ellipse, so Simpson's method of disks
(Folland et al., Circulation 60(4):760-766, 1979) on the drawn mask integrates exactly the
volume used for the labels::

    L = A * (1 + BASE_CUT)                          apex -> mitral plane (mm)
    V = pi/4 * D**2 * A * ((1 + c) - (1 + c**3) / 3)  c = BASE_CUT   (full ellipsoid, c = 1:
                                                                       V = pi/6 * L * D**2)

The two apical planes see diameters ``D`` (4-chamber) and ``r * D`` (2-chamber); the labelled
volume is the biplane one, ``r * V(L, D)``, so a single-plane estimate is off by at most ``|1-r|``.

Motion: :func:`contraction` maps cardiac phase to 0 (end-diastole) .. 1 (end-systole) with a fast
ejection and a slower two-step filling (early rapid filling, diastasis, atrial kick); every size
interpolates between its ED and ES value with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BASE_CUT",
    "CardiacClock",
    "Heart",
    "contraction",
    "lv_length_diameter",
    "lv_volume_ml",
    "valve_opening",
]

#: Where the mitral plane cuts the cavity ellipse, as a fraction of the long semi-axis.
BASE_CUT = 0.6
_SHAPE = (1.0 + BASE_CUT) - (1.0 + BASE_CUT**3) / 3.0


def lv_volume_ml(length_mm: float | np.ndarray, diameter_mm: float | np.ndarray) -> np.ndarray:
    """Single-plane volume (mL) of the truncated-ellipsoid cavity of long axis L and diameter D."""
    semi_long = np.asarray(length_mm) / (1.0 + BASE_CUT)
    return np.pi / 4.0 * np.asarray(diameter_mm) ** 2 * semi_long * _SHAPE / 1000.0


def lv_length_diameter(volume_ml: float, sphericity: float) -> tuple[float, float]:
    """Long axis L and diameter D (mm) of a cavity of ``volume_ml`` with ``D = sphericity * L``."""
    if volume_ml <= 0 or sphericity <= 0:
        raise ValueError(f"volume ({volume_ml}) and sphericity ({sphericity}) must be positive")
    length = (4.0 * volume_ml * 1000.0 * (1.0 + BASE_CUT) / (np.pi * sphericity**2 * _SHAPE)) ** (
        1 / 3
    )
    return float(length), float(sphericity * length)


def _diameter_for(volume_ml: float, length_mm: float) -> float:
    semi_long = length_mm / (1.0 + BASE_CUT)
    return float(np.sqrt(volume_ml * 1000.0 / (np.pi / 4.0 * semi_long * _SHAPE)))


@dataclass(frozen=True)
class Heart:
    """One patient's heart; sizes in mm, ``_ed`` / ``_es`` at end-diastole / end-systole.

    ``lv_length`` apex->mitral plane and ``lv_diameter`` (4-chamber plane) fix the apical cavity;
    ``a2c_ratio`` scales the 2-chamber diameter; ``ivs``/``lvpw``/``lvid`` are the parasternal
    long-axis septum, posterior wall and internal diameter. ``myo_echo`` multiplies myocardial
    brightness (grows with age), ``calcium`` (0..1) is the aortic-valve calcification and
    ``av_opening`` (0..1) its systolic opening; ``systole`` is the ejection share of the cycle.
    """

    lv_length_ed: float
    lv_length_es: float
    lv_diameter_ed: float
    lv_diameter_es: float
    a2c_ratio: float
    ivs_ed: float
    ivs_es: float
    lvpw_ed: float
    lvpw_es: float
    lvid_ed: float
    lvid_es: float
    la_length: float
    la_width: float
    rv_scale: float
    aortic_root: float
    myo_echo: float
    calcium: float
    av_opening: float
    systole: float

    @classmethod
    def from_volumes(
        cls,
        *,
        edv_ml: float,
        esv_ml: float,
        sphericity: float,
        a2c_ratio: float,
        ivs_ed: float,
        lvpw_ed: float,
        **rest: float,
    ) -> Heart:
        """Build the heart whose biplane ED/ES volumes are exactly ``edv_ml`` / ``esv_ml``."""
        if not 0 < esv_ml < edv_ml:
            raise ValueError(f"need 0 < ESV < EDV, got ESV {esv_ml} and EDV {edv_ml}")
        length_ed, diameter_ed = lv_length_diameter(edv_ml / a2c_ratio, sphericity)
        ef = 1.0 - esv_ml / edv_ml
        long_shortening = 0.04 + 0.16 * ef  # MAPSE-like: ~14 % at EF 60 %, ~7 % at EF 20 %
        length_es = length_ed * (1.0 - long_shortening)
        diameter_es = _diameter_for(esv_ml / a2c_ratio, length_es)
        shortening = 1.0 - diameter_es / diameter_ed  # fractional shortening
        lvid_ed = 0.93 * diameter_ed
        return cls(
            lv_length_ed=length_ed,
            lv_length_es=length_es,
            lv_diameter_ed=diameter_ed,
            lv_diameter_es=diameter_es,
            a2c_ratio=a2c_ratio,
            ivs_ed=ivs_ed,
            ivs_es=ivs_ed * (1.0 + 1.2 * shortening),
            lvpw_ed=lvpw_ed,
            lvpw_es=lvpw_ed * (1.0 + 1.5 * shortening),
            lvid_ed=lvid_ed,
            lvid_es=lvid_ed * (1.0 - shortening),
            **rest,
        )

    def edv_ml(self) -> float:
        """Biplane end-diastolic volume of the drawn cavity (mL)."""
        return float(self.a2c_ratio * lv_volume_ml(self.lv_length_ed, self.lv_diameter_ed))

    def esv_ml(self) -> float:
        """Biplane end-systolic volume of the drawn cavity (mL)."""
        return float(self.a2c_ratio * lv_volume_ml(self.lv_length_es, self.lv_diameter_es))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def contraction(phase: np.ndarray, systole: float) -> np.ndarray:
    """Contraction state (same shape as ``phase``): 0 at end-diastole (phase 0), 1 at end-systole
    (phase ``systole``); cosine ejection, then 75 % rapid filling and a 25 % atrial kick."""
    phase = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
    ejecting = phase < systole
    ejection = 0.5 * (1.0 - np.cos(np.pi * phase / systole))
    u = (phase - systole) / (1.0 - systole)
    filling = 0.75 * _smoothstep(u / 0.4) + 0.25 * _smoothstep((u - 0.78) / 0.22)
    return np.where(ejecting, ejection, 1.0 - filling)


def valve_opening(phase: np.ndarray, systole: float, *, outflow: bool) -> np.ndarray:
    """Leaflet opening 0..1: inflow (mitral/tricuspid) valves open in diastole with E and A waves;
    outflow (aortic) valves open during ejection."""
    phase = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
    if outflow:
        x = np.clip(phase / systole, 0.0, 1.0)
        return np.where(phase < systole, np.sin(np.pi * x) ** 0.5, 0.0)
    u = np.clip((phase - systole) / (1.0 - systole), 0.0, 1.0)
    early = np.sin(np.pi * np.clip(u / 0.45, 0.0, 1.0)) ** 0.6
    atrial = 0.8 * np.sin(np.pi * np.clip((u - 0.72) / 0.28, 0.0, 1.0)) ** 0.6
    return np.where(phase >= systole, np.maximum(early, atrial), 0.0)


@dataclass(frozen=True)
class CardiacClock:
    """Frame timing of one cine: the cycle and the ejection last a whole number of frames, so
    end-diastole and end-systole fall exactly on frames (their masks match the labels).

    ``ed_offset`` is the first end-diastolic frame; ED frames are ``ed_offset + k * period``.
    """

    fps: float
    period: int
    systole_frames: int
    ed_offset: int

    @classmethod
    def make(cls, fps: float, heart_rate: float, systole: float, ed_offset: int) -> CardiacClock:
        period = max(8, round(fps * 60.0 / heart_rate))
        systole_frames = int(np.clip(round(systole * period), 3, period - 4))
        return cls(
            fps=float(fps), period=period, systole_frames=systole_frames, ed_offset=ed_offset
        )

    @property
    def systole(self) -> float:
        """The ejection share of the cycle after rounding to frames."""
        return self.systole_frames / self.period

    def phases(self, num_frames: int) -> np.ndarray:
        """Cardiac phase in [0, 1) of each frame (num_frames,), 0 = end-diastole."""
        return np.mod((np.arange(num_frames) - self.ed_offset) / self.period, 1.0)

    def ed_frames(self, num_frames: int) -> list[int]:
        return [f for f in range(num_frames) if (f - self.ed_offset) % self.period == 0]

    def es_frames(self, num_frames: int) -> list[int]:
        return [
            f
            for f in range(num_frames)
            if (f - self.ed_offset - self.systole_frames) % self.period == 0
        ]
