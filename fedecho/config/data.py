"""Data configuration: where a site's data is, in which format, how to split and partition it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DataConfig", "PartitionConfig"]

_FORMATS = ("camus", "echonet-dynamic", "echonet-lvh", "tmed2", "dicom", "synthetic")


@dataclass
class PartitionConfig:
    """How a simulation splits one dataset into virtual sites (see ``fedecho.data.partition``)."""

    method: str = "iid"
    """iid | dirichlet | attribute | quantity | natural"""
    num_sites: int = 3
    alpha: float = 0.5
    """Dirichlet concentration (dirichlet: label skew; quantity: size skew). Smaller = more skewed."""
    label: str | None = None
    """Label key the dirichlet partitioner skews (e.g. view, as_grade, ef)."""
    key: str | None = None
    """Attribute key for the attribute partitioner (scanner, image_quality, age, source)."""
    bins: int | None = None
    """Quantile bins for a numeric label/attribute (e.g. age bands)."""
    min_patients: int = 2
    seed: int = 0
    only_site: int | None = None
    """Local-only arm: a one-site run (federation.num_sites=1) trains and validates on site k's
    patients of this partition into ``num_sites`` sites; the test split stays pooled."""

    def __post_init__(self) -> None:
        methods = ("iid", "dirichlet", "attribute", "quantity", "natural")
        if self.method not in methods:
            raise ValueError(f"partition.method {self.method!r} is unknown; valid: {', '.join(methods)}")
        if self.num_sites < 1:
            raise ValueError(f"partition.num_sites must be >= 1, got {self.num_sites}")
        if self.method == "dirichlet" and not self.label:
            raise ValueError("partition.method=dirichlet needs partition.label (e.g. partition.label=view)")
        if self.method == "attribute" and not self.key:
            raise ValueError("partition.method=attribute needs partition.key (e.g. partition.key=scanner)")
        if self.alpha <= 0:
            raise ValueError(f"partition.alpha must be > 0, got {self.alpha}")
        if self.only_site is not None and (self.num_sites < 2 or not 0 <= self.only_site < self.num_sites):
            raise ValueError(f"partition.only_site={self.only_site} must be a site index of a "
                             f"partition into partition.num_sites >= 2 sites (got num_sites={self.num_sites})")

    def options(self) -> dict:
        """Keyword options for :func:`fedecho.data.partition.partition_patients`."""
        if self.method == "dirichlet":
            return {"label": self.label, "alpha": self.alpha, "seed": self.seed,
                    "min_patients": self.min_patients, "bins": self.bins}
        if self.method == "quantity":
            return {"alpha": self.alpha, "seed": self.seed, "min_patients": self.min_patients}
        if self.method == "attribute":
            return {"key": self.key, "bins": self.bins}
        return {"seed": self.seed}


@dataclass
class DataConfig:
    """One site's data (or, in simulation, the dataset that is partitioned into sites)."""

    format: str = "synthetic"
    """camus | echonet-dynamic | echonet-lvh | tmed2 | dicom | synthetic (generated on the fly)"""
    root: str | None = None
    """Data folder; None with format=synthetic generates the embedded demo data."""
    on_error: str = "skip"
    """raise: stop at bad input; skip: leave bad items out, counted and logged."""
    id_fallback: bool = False
    """DICOM: derive a missing PatientID (from StudyInstanceUID), StudyInstanceUID (folder) or
    SOPInstanceUID (file path) instead of refusing the file; the data check counts them."""
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """train/val/test fractions for patients the source gives no split."""
    split_seed: int = 0
    label_fraction: float = 1.0
    """Fraction of labelled training patients used for fine-tuning (EchoCLR: 0.01 ... 1.0)."""
    synthetic_format: str = "camus"
    """format=synthetic: the on-disk layout the generator writes (and the reader then reads)."""
    synthetic_patients: int = 24
    synthetic_style: str = "mixed"
    """format=synthetic: a scanner style name, or mixed (one per patient, in the scanner label)."""
    synthetic_image_size: int | None = None
    cache: bool = True
    """Decode each item once into a uint8 store at the training size (fedecho.data.cache); later
    epochs, rounds and runs read it. ``fedecho data cache-clear`` empties it."""
    cache_dir: str | None = None
    """Where the decoded cache lives (a deployed site: inside its state directory); None: the folder
    the caller passes to ``task_loaders(cache_dir=...)``, else $FEDECHO_CACHE/decoded
    (~/.cache/fedecho/decoded)."""
    partition: PartitionConfig = field(default_factory=PartitionConfig)

    def __post_init__(self) -> None:
        if isinstance(self.partition, dict):
            self.partition = PartitionConfig(**self.partition)
        self.split_fractions = tuple(self.split_fractions)
        if self.format not in _FORMATS:
            raise ValueError(f"data.format {self.format!r} is unknown; valid: {', '.join(_FORMATS)}")
        if self.format != "synthetic" and not self.root:
            raise ValueError(f"data.format={self.format} needs data.root=PATH (the dataset folder)")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if len(self.split_fractions) != 3 or not math.isclose(sum(self.split_fractions), 1.0):
            raise ValueError(f"data.split_fractions must be 3 numbers summing to 1, got {self.split_fractions}")
        if self.format == "synthetic" and self.synthetic_format not in _FORMATS[:-1]:
            raise ValueError(f"data.synthetic_format must be one of {', '.join(_FORMATS[:-1])}")
        if self.id_fallback and self.format != "dicom":
            raise ValueError(f"data.id_fallback=true applies to data.format=dicom only (got {self.format})")
        if self.synthetic_patients < 1:
            raise ValueError("data.synthetic_patients must be >= 1")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"data.label_fraction must be in (0, 1], got {self.label_fraction}")
