"""``synthesize``: a synthetic cohort written in any supported on-disk format.

The cohort (:mod:`~fedecho.data.synthetic.cohort`) is the same for a seed whatever the format;
each patient's acquisitions draw from ``np.random.default_rng([seed, patient, format])`` so the
output is byte-identical for a seed and independent of how many patients come before.
Samples stream into the format's writer (:func:`fedecho.data.writers.get_writer`) one patient at
a time, so memory stays bounded by one patient's images.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedecho.data.schema import Sample
from fedecho.data.synthetic.cohort import Patient, make_cohort
from fedecho.data.synthetic.formats import DEFAULT_IMAGE_SIZES, SAMPLE_BUILDERS
from fedecho.data.synthetic.styles import STYLE_CHOICES

__all__ = ["SYNTH_FORMATS", "SynthSummary", "generate_samples", "synthesize"]

#: Formats :func:`synthesize` writes.
SYNTH_FORMATS: tuple[str, ...] = tuple(SAMPLE_BUILDERS)

_FORMAT_STREAMS = {name: 100 + k for k, name in enumerate(SYNTH_FORMATS)}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote: where, which format, how many patients / studies / items,
    and the wall-clock seconds it took (generation and writing)."""

    out: Path
    format: str
    patients: int
    studies: int
    items: int
    seconds: float

    @property
    def seconds_per_patient(self) -> float:
        return self.seconds / max(1, self.patients)


def _check_args(fmt: str, patients: int, style: str, image_size: int | None) -> None:
    if fmt not in SAMPLE_BUILDERS:
        raise ValueError(f"unknown data format {fmt!r}; valid formats: {', '.join(SYNTH_FORMATS)}")
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise ValueError(f"patients must be a positive integer, got {patients!r}")
    if style not in STYLE_CHOICES:
        raise ValueError(
            f"unknown scanner style {style!r}; valid styles: {', '.join(STYLE_CHOICES)}"
        )
    if image_size is not None and (not isinstance(image_size, int) or not 32 <= image_size <= 1024):
        raise ValueError(f"image_size must be an integer in 32..1024 or None, got {image_size!r}")


def generate_samples(
    fmt: str,
    cohort: Iterable[Patient],
    *,
    seed: int,
    image_size: int | None = None,
) -> Iterator[Sample]:
    """Yield the Samples of ``fmt`` for every patient of ``cohort`` (see
    :mod:`~fedecho.data.synthetic.formats` for what each format holds)."""
    _check_args(fmt, 1, "mixed", image_size)
    size = image_size or DEFAULT_IMAGE_SIZES[fmt]
    builder = SAMPLE_BUILDERS[fmt]
    for patient in cohort:
        rng = np.random.default_rng([seed, patient.index, _FORMAT_STREAMS[fmt]])
        yield from builder(patient, rng, size, seed)


class _Counter:
    """Counts patients, studies and items of the Samples passing through."""

    def __init__(self) -> None:
        self.patients: set[str] = set()
        self.studies: set[tuple[str, str]] = set()
        self.items = 0

    def count(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for sample in samples:
            self.patients.add(sample.patient_id)
            self.studies.add((sample.patient_id, sample.study_id))
            self.items += 1
            yield sample


def synthesize(
    fmt: str,
    out: str | Path,
    *,
    patients: int = 20,
    seed: int = 0,
    style: str = "mixed",
    image_size: int | None = None,
) -> SynthSummary:
    """Generate ``patients`` synthetic patients and write them to ``out`` in format ``fmt``.

    ``fmt`` is one of :data:`SYNTH_FORMATS`; ``style`` a name of
    :data:`~fedecho.data.synthetic.styles.SCANNER_STYLES` or ``"mixed"`` (each patient draws
    one; it is recorded in the ``scanner`` label). ``image_size`` overrides the format's default
    square size (:data:`~fedecho.data.synthetic.formats.DEFAULT_IMAGE_SIZES`). Splits are
    patient-level (70/15/15 %). ``out`` must be empty or absent: a leftover dataset would mix with
    the new one.
    """
    from fedecho.data.writers import get_writer

    _check_args(fmt, patients, style, image_size)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: output folder is not empty; choose an empty or new folder")
    writer = get_writer(fmt)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    counter = _Counter()
    cohort = make_cohort(patients, seed, style)
    writer(out, counter.count(generate_samples(fmt, cohort, seed=seed, image_size=image_size)))
    return SynthSummary(
        out=out,
        format=fmt,
        patients=len(counter.patients),
        studies=len(counter.studies),
        items=counter.items,
        seconds=time.perf_counter() - start,
    )
