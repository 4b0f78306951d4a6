"""Imports every built-in reader so that each registers its format in ``READERS``."""

from __future__ import annotations

import importlib

__all__ = ["BUILTIN_READER_MODULES"]

BUILTIN_READER_MODULES = (
    "fedecho.data.camus",
    "fedecho.data.echonet_dynamic",
    "fedecho.data.echonet_lvh",
    "fedecho.data.tmed2",
    "fedecho.data.dicom",
)

for _module in BUILTIN_READER_MODULES:
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as err:  # a reader still being written must not break the others
        if err.name != _module:
            raise
