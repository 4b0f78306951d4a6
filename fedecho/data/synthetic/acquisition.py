"""One synthetic acquisition: probe pose, cardiac timing, phantom and rendered B-mode frames."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fedecho.data.synthetic.anatomy import CardiacClock
from fedecho.data.synthetic.cohort import Patient
from fedecho.data.synthetic.phantom import Phantom, Pose, draw_phantom, sample_pose
from fedecho.data.synthetic.render import render_bmode

__all__ = ["Acquisition", "acquire"]


@dataclass
class Acquisition:
    """Rendered frames (T, H, W) uint8 with their label maps (T, H, W) uint8 and geometry.

    ``clock`` gives the end-diastolic / end-systolic frames; ``phantom`` keeps the fan
    (``sector``), salient points and PLAX calipers in pixels (its float echogenicity map is
    released once rendered); ``spacing`` is (row_mm, col_mm).
    """

    view: str
    frames: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float]
    fps: float
    clock: CardiacClock
    pose: Pose
    phantom: Phantom


def acquire(
    patient: Patient,
    view: str,
    rng: np.random.Generator,
    *,
    size: int,
    num_frames: int,
    fps: float,
    ed_offset: int = 0,
    phases: np.ndarray | None = None,
) -> Acquisition:
    """Image ``patient`` in ``view`` with a fresh probe pose drawn from ``rng``.

    The cine has ``num_frames`` frames at ``fps`` whose first end-diastole is frame ``ed_offset``;
    ``phases`` (num_frames,) overrides the cardiac phases (e.g. a random still frame).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    clock = CardiacClock.make(fps, patient.heart_rate, patient.heart.systole, ed_offset)
    heart = dataclasses.replace(patient.heart, systole=clock.systole)
    if phases is None:
        phases = clock.phases(num_frames)
    elif len(phases) != num_frames:
        raise ValueError(f"got {len(phases)} phases for {num_frames} frames")
    pose = sample_pose(view, heart, patient.style, rng)
    phantom = draw_phantom(heart, pose, np.asarray(phases), (size, size), patient.style, rng)
    frames = render_bmode(
        phantom.amp, phantom.grid, phantom.sector, patient.style, patient.image_quality, rng, fps
    )
    phantom.amp = np.empty((0,), np.float32)  # release the float map; frames and masks remain
    spacing = (phantom.grid.spacing, phantom.grid.spacing)
    return Acquisition(view, frames, phantom.mask, spacing, float(fps), clock, pose, phantom)
