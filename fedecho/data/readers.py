"""Imports every built-in reader so that each registers its format in ``READERS``."""

from __future__ import annotations

import fedecho.data.camus
import fedecho.data.dicom
import fedecho.data.echonet_dynamic
import fedecho.data.echonet_lvh
import fedecho.data.tmed2  # noqa: F401

__all__: list[str] = []
