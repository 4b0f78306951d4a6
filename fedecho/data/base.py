"""The reader contract: scan a root without decoding pixels, then load one record at a time.

Every on-disk format is one :class:`EchoReader` subclass registered in :data:`READERS` under its
format name (``camus``, ``echonet-dynamic``, ``echonet-lvh``, ``tmed2``, ``dicom``).

Error policy (``on_error``):

- ``"raise"`` (default): :meth:`EchoReader.scan` collects *every* problem it meets (missing
  columns, rows pointing to missing files, malformed names, ...) and raises one
  :class:`~fedecho.data.errors.EchoDataError` listing them all.
- ``"skip"``: bad items are left out of ``ScanResult.records``, each listed in
  ``ScanResult.issues`` and logged; every good item is still returned.

A problem that makes the whole root unusable (no manifest, a manifest missing a required column)
raises in both modes. :meth:`EchoReader.load` always raises ``EchoDataError`` naming the file;
:meth:`EchoReader.iter_samples` applies the policy to decoding as well.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue, ItemRecord, Sample, ScanResult
from fedecho.registry import Registry

__all__ = ["READERS", "EchoReader", "OnError", "open_reader"]

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

READERS: Registry[type[EchoReader]] = Registry("data format")


class EchoReader(ABC):
    """Base class of every format reader. Subclasses set ``format`` and implement two methods."""

    format: ClassVar[str]

    def __init__(self, root: str | Path, *, on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        self.on_error: OnError = on_error
        if not self.root.exists():
            raise EchoDataError.at(self.root, f"{self.format} data root does not exist")

    # --- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _scan(self) -> ScanResult:
        """Index the root without decoding pixels; return every record and every issue found."""

    @abstractmethod
    def load(self, record: ItemRecord) -> Sample:
        """Decode one record. Raise :class:`EchoDataError` naming the file on any problem."""

    # --- shared behaviour ---------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Scan the root and apply the error policy (see the module docstring)."""
        result = self._scan()
        if result.issues:
            if self.on_error == "raise":
                raise EchoDataError(result.issues, context=f"{self.format} data at {self.root}")
            for issue in result.issues:
                log.warning("skipping %s", issue)
        return result

    def iter_samples(self, records: list[ItemRecord] | None = None) -> Iterator[Sample]:
        """Load records one by one; in ``skip`` mode undecodable ones are logged and counted."""
        self.skipped: list[DataIssue] = []
        for record in self.scan().records if records is None else records:
            try:
                yield self.load(record)
            except EchoDataError as err:
                if self.on_error == "raise":
                    raise
                self.skipped.extend(err.issues)
                for issue in err.issues:
                    log.warning("skipping %s", issue)


def open_reader(fmt: str, root: str | Path, *, on_error: OnError = "raise", id_fallback: bool = False) -> EchoReader:
    """Build the reader registered for ``fmt`` (importing the built-in readers first).

    ``id_fallback`` (DICOM only: the other formats take their ids from a manifest) derives missing
    patient/study/instance ids as :mod:`fedecho.data.dicom` documents instead of refusing the file.
    """
    import fedecho.data.readers  # noqa: F401  (registers the built-in formats)

    if id_fallback and fmt != "dicom":
        raise ValueError(f"data.id_fallback applies to DICOM folders only (data.format={fmt})")
    return READERS.get(fmt)(root, on_error=on_error, **({"id_fallback": True} if id_fallback else {}))
