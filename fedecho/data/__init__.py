"""Echo data: one sample schema, one reader per on-disk format, splits, partitioners, synthetic data."""

from fedecho.data.base import READERS, EchoReader, open_reader
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import AS_GRADES, MASK_LABELS, VIEWS, DataIssue, ItemRecord, Sample, ScanResult

__all__ = [
    "AS_GRADES",
    "MASK_LABELS",
    "READERS",
    "VIEWS",
    "DataIssue",
    "EchoDataError",
    "EchoReader",
    "ItemRecord",
    "Sample",
    "ScanResult",
    "open_reader",
]
