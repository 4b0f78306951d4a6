"""Format writers: ``write(root, samples)`` emits Samples in a dataset's exact on-disk layout.

Each format module defines its writer beside its reader (one module = one format); this registry
maps the format name to it so that the synthetic generator and tests can write any layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path

from fedecho.data.schema import Sample

__all__ = ["WRITER_FUNCTIONS", "get_writer"]

Writer = Callable[[str | Path, Iterable[Sample]], None]

#: format name -> "module:function"
WRITER_FUNCTIONS: dict[str, str] = {
    "camus": "fedecho.data.camus:write_camus",
    "echonet-dynamic": "fedecho.data.echonet_dynamic:write_echonet_dynamic",
    "echonet-lvh": "fedecho.data.echonet_lvh:write_echonet_lvh",
    "tmed2": "fedecho.data.tmed2:write_tmed2",
    "dicom": "fedecho.data.dicom:write_dicom",
}


def get_writer(fmt: str) -> Writer:
    """The writer function for ``fmt``; an unknown name lists the valid ones."""
    try:
        target = WRITER_FUNCTIONS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown data format {fmt!r}; valid formats: {', '.join(sorted(WRITER_FUNCTIONS))}"
        ) from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
