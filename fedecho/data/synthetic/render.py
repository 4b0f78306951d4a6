"""B-mode rendering: echogenicity map -> speckled, attenuated, log-compressed uint8 fan image.

Per acquisition (all vectorised over (T, H, W)):

1. the echogenicity map is blurred by the scanner's point-spread function (``blur_mm``);
2. fully developed speckle multiplies it: the envelope of a complex Gaussian field smoothed over
   ``speckle_mm`` (laterally 1.6x longer than axially) and decorrelating over ~40 ms, i.e. a
   Rayleigh-distributed amplitude (Wagner et al., IEEE Trans. Sonics Ultrason. 30(3):156-163,
   1983); near-field reverberation clutter adds a speckled haze under the transducer;
3. depth attenuation left after time-gain compensation and the beam's lateral fall-off (dB),
   gain, log compression onto ``dynamic_range_db``, the scanner's grey map (gamma);
4. electronic noise grows with depth (more TGC), image-quality dropout of a lateral wedge,
   and everything outside the fan is black.
"""

from __future__ import annotations

import cv2
import numpy as np

from fedecho.data.synthetic.canvas import Grid
from fedecho.data.synthetic.styles import ScannerStyle

__all__ = ["QUALITY_EFFECTS", "render_bmode"]

#: image quality -> (clutter factor, noise factor, extra blur mm, gain dB, dropout strength 0..1)
QUALITY_EFFECTS: dict[str, tuple[float, float, float, float, float]] = {
    "Good": (0.5, 1.0, 0.0, 0.0, 0.0),
    "Medium": (1.0, 1.3, 0.3, -1.0, 0.45),
    "Poor": (1.8, 1.8, 0.6, -2.0, 0.75),
}

_REFERENCE_DB = 6.0  # an amplitude of 2 maps to white at 0 dB gain
_LUT_SIZE = 2048


def _smooth_field(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _blur_frames(frames: np.ndarray, sigma_axial: float, sigma_lateral: float) -> None:
    """In-place Gaussian blur of every (H, W) frame of frames (N, H, W) float32."""
    if max(sigma_axial, sigma_lateral) < 0.3:
        return
    for frame in frames:
        cv2.GaussianBlur(
            frame,
            (0, 0),
            sigmaX=max(sigma_lateral, 0.01),
            dst=frame,
            sigmaY=max(sigma_axial, 0.01),
            borderType=cv2.BORDER_REFLECT,
        )


def _speckle(
    shape: tuple[int, int, int],
    grid: Grid,
    style: ScannerStyle,
    fps: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Rayleigh speckle amplitude (T, H, W) float32 with mean square 1.

    The two quadratures start as uniform noise; the spatial (and temporal) smoothing sums many
    samples, which makes them Gaussian (central limit) at a fraction of the cost of normal draws.
    """
    num_frames, height, width = shape
    field = rng.random((2, *shape), dtype=np.float32)
    field -= 0.5
    sigma_axial = max(0.6, 0.5 * style.speckle_mm / grid.spacing)
    _blur_frames(field.reshape(2 * num_frames, height, width), sigma_axial, 1.6 * sigma_axial)
    if num_frames > 1:
        sigma_t = max(0.6, 0.04 * fps)  # speckle decorrelates over ~40 ms
        for quadrature in field:
            flat = quadrature.reshape(num_frames, height * width)
            cv2.GaussianBlur(
                flat, (1, 0), sigmaX=0.01, sigmaY=sigma_t, dst=flat, borderType=cv2.BORDER_REFLECT
            )
    intensity = field[0] * field[0]
    intensity += field[1] * field[1]
    intensity *= 1.0 / float(intensity.mean())
    return np.sqrt(intensity, out=intensity)


def _grey_lut(gamma: float) -> np.ndarray:
    levels = np.linspace(0.0, 1.0, _LUT_SIZE, dtype=np.float64)
    return (255.0 * levels**gamma).astype(np.float32)


def render_bmode(
    amp: np.ndarray,
    grid: Grid,
    sector: np.ndarray,
    style: ScannerStyle,
    quality: str,
    rng: np.random.Generator,
    fps: float = 30.0,
) -> np.ndarray:
    """Render echogenicity ``amp`` (T, H, W) float32 into B-mode frames (T, H, W) uint8."""
    if amp.ndim != 3:
        raise ValueError(f"render_bmode needs echogenicity (T, H, W), got shape {amp.shape}")
    try:
        clutter_k, noise_k, blur_extra, gain_q, dropout = QUALITY_EFFECTS[quality]
    except KeyError:
        raise ValueError(
            f"unknown image quality {quality!r}; valid: {', '.join(QUALITY_EFFECTS)}"
        ) from None
    num_frames, height, width = amp.shape
    blur = (style.blur_mm + blur_extra) / grid.spacing
    envelope = amp.copy()
    _blur_frames(envelope, blur, 1.5 * blur)  # point-spread function, wider laterally

    x, z = np.meshgrid(grid.x, grid.z)
    depth = grid.height * grid.spacing
    beam_angle = np.arctan2(x, z) / np.radians(style.sector_deg / 2.0)  # -1 .. 1 across the fan
    haze = style.clutter * clutter_k * 0.05 * np.abs(_smooth_field((height, width), 5, rng))
    envelope += haze * np.exp(-z / 35.0)
    if dropout > 0:  # a lateral wedge with weak echoes (poor acoustic window)
        centre = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7)
        wedge = np.exp(-(((beam_angle - centre) / 0.18) ** 2)) * (z > 0.3 * depth)
        envelope *= (1.0 - dropout * wedge).astype(np.float32)
    envelope *= _speckle((num_frames, height, width), grid, style, fps, rng)

    # decibels = 20 log10(envelope) + gain map, then onto the grey-map table
    gain_db = (
        style.gain_db
        + gain_q
        - _REFERENCE_DB
        - style.attenuation_db_per_cm * z / 10.0
        - 4.0 * beam_angle**4
    )
    scale = (_LUT_SIZE - 1) / style.dynamic_range_db
    offset = ((gain_db + style.dynamic_range_db) * scale).astype(np.float32)
    np.maximum(envelope, 1e-6, out=envelope)
    flat = envelope.reshape(-1, width)
    cv2.log(flat, dst=flat)
    envelope *= np.float32(20.0 / np.log(10.0) * scale)
    envelope += offset
    np.clip(envelope, 0, _LUT_SIZE - 1, out=envelope)
    grey = _grey_lut(style.grey_gamma)[envelope.astype(np.int32)]

    # electronic noise (uniform, same variance as the Gaussian it stands for), fan mask
    noise = rng.random(grey.shape, dtype=np.float32)
    noise -= 0.5
    noise *= (np.sqrt(12.0) * style.noise_level * noise_k * (0.5 + z / depth)).astype(np.float32)
    grey += noise
    grey *= sector
    np.clip(grey, 0.0, 255.0, out=grey)
    grey += 0.5
    return grey.astype(np.uint8)
