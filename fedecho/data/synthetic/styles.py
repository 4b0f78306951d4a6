"""Scanner styles: how one site's machine and presets turn the same heart into a different image.

A :class:`ScannerStyle` holds the acquisition and post-processing settings that differ between
vendors and sites (depth, sector width, gain, dynamic range, noise, speckle size, blur, time-gain
compensation, grey map). Federated simulations give each virtual site one style, so sites differ
in the way real hospitals do (feature / domain shift) while the anatomy and labels stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = ["SCANNER_STYLES", "STYLE_CHOICES", "ScannerStyle", "pick_style"]


@dataclass(frozen=True)
class ScannerStyle:
    """Acquisition settings of one scanner / site (all physical sizes in mm).

    depth_mm: imaging depth of apical views (the sonographer adds depth for big hearts).
    sector_deg: full opening angle of the fan.
    gain_db: overall receive gain added before log compression.
    dynamic_range_db: decibels mapped onto the 0..255 grey scale.
    noise_level: standard deviation of electronic noise, in grey levels (0..255 scale).
    speckle_mm: correlation length of the speckle pattern (transducer point-spread size).
    blur_mm: extra Gaussian blur of the tissue map (lower lateral resolution).
    attenuation_db_per_cm: depth attenuation left after time-gain compensation.
    clutter: amplitude of near-field reverberation haze (multiplies the quality clutter).
    grey_gamma: exponent of the post-processing grey map (>1 darkens mid-greys).
    frame_rate: cine frame rate of this machine's default preset (frames per second).
    """

    name: str
    depth_mm: float
    sector_deg: float
    gain_db: float
    dynamic_range_db: float
    noise_level: float
    speckle_mm: float
    blur_mm: float
    attenuation_db_per_cm: float
    clutter: float
    grey_gamma: float
    frame_rate: float

    def __post_init__(self) -> None:
        if not 40.0 <= self.sector_deg <= 110.0:
            raise ValueError(f"style {self.name!r}: sector_deg {self.sector_deg} outside 40..110")
        if self.depth_mm < 100.0:
            raise ValueError(
                f"style {self.name!r}: depth_mm {self.depth_mm} < 100 cannot hold a heart"
            )
        if self.dynamic_range_db <= 10.0:
            raise ValueError(f"style {self.name!r}: dynamic_range_db must be > 10 dB")
        for field_name in (
            "noise_level",
            "speckle_mm",
            "blur_mm",
            "clutter",
            "frame_rate",
            "grey_gamma",
        ):
            if getattr(self, field_name) < 0:
                raise ValueError(f"style {self.name!r}: {field_name} must be >= 0")


#: The named styles: three sites with clearly different machines.
SCANNER_STYLES: MappingProxyType[str, ScannerStyle] = MappingProxyType(
    {
        # high-end cart: wide sector, fine speckle, little noise, moderate gain
        "site_a": ScannerStyle(
            name="site_a",
            depth_mm=150.0,
            sector_deg=90.0,
            gain_db=4.0,
            dynamic_range_db=50.0,
            noise_level=3.0,
            speckle_mm=0.9,
            blur_mm=0.6,
            attenuation_db_per_cm=0.3,
            clutter=0.6,
            grey_gamma=1.25,
            frame_rate=50.0,
        ),
        # older machine: narrow sector, coarse speckle, blurry, bright and noisy, deep preset
        "site_b": ScannerStyle(
            name="site_b",
            depth_mm=170.0,
            sector_deg=72.0,
            gain_db=5.0,
            dynamic_range_db=42.0,
            noise_level=9.0,
            speckle_mm=1.7,
            blur_mm=1.4,
            attenuation_db_per_cm=0.6,
            clutter=1.2,
            grey_gamma=1.0,
            frame_rate=30.0,
        ),
        # portable probe: medium sector, dark grey map, strong attenuation, shallow preset
        "site_c": ScannerStyle(
            name="site_c",
            depth_mm=140.0,
            sector_deg=80.0,
            gain_db=2.0,
            dynamic_range_db=58.0,
            noise_level=5.0,
            speckle_mm=1.25,
            blur_mm=0.9,
            attenuation_db_per_cm=1.1,
            clutter=0.9,
            grey_gamma=1.45,
            frame_rate=40.0,
        ),
    }
)

#: Every value ``synthesize(style=...)`` accepts.
STYLE_CHOICES: tuple[str, ...] = (*SCANNER_STYLES, "mixed")


def pick_style(style: str, rng: np.random.Generator) -> ScannerStyle:
    """The named style, or one drawn uniformly from :data:`SCANNER_STYLES` when ``"mixed"``."""
    if style == "mixed":
        names = sorted(SCANNER_STYLES)
        return SCANNER_STYLES[names[int(rng.integers(len(names)))]]
    try:
        return SCANNER_STYLES[style]
    except KeyError:
        raise ValueError(
            f"unknown scanner style {style!r}; valid styles: {', '.join(STYLE_CHOICES)}"
        ) from None
