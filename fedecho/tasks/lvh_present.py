"""LVH presence: binary classification (``normal`` / ``LVH``) of an echo video, e.g. EchoNet-LVH
PLAX cines, from clips (R3D-18, as in EchoCLR's LVH fine-tuning, Holste et al. 2023) or frames.

The label comes, in this order, from

1. a label column (``lvh`` by default, ``TaskConfig.label_key`` to read another one) when the
   record has it: ``"LVH"`` / ``"normal"`` (any case), a bool, or 0 / 1;
2. else the record's ``measurements`` (cm, as :mod:`fedecho.data.echonet_lvh` gives them): LVH when
   the diastolic septum ``IVSd`` or posterior wall ``LVPWd`` is at least
   :data:`LVH_WALL_THRESHOLD_CM` = 1.1 cm, else normal.

The threshold: the ASE/EACVI chamber-quantification guideline (Lang et al., J Am Soc Echocardiogr
2015;28:1-39, normal ranges of LV mass indices) gives normal IVS and LVPW thickness 0.6-1.0 cm in men and 0.6-0.9 cm in
women, so 1.1 cm is above the upper normal limit for either sex (a sex-independent rule, since
EchoNet-LVH carries no sex). A wall at exactly 1.1 cm is LVH.

A record with a thick wall is LVH even if the other wall was not measured; calling a record normal
needs both IVSd and LVPWd. So records without IVSd and LVPWd, and records whose one measured wall is
thin, give no example. Values that are not thicknesses in cm (<= 0 or > 5, e.g. millimetres) are an
:class:`EchoDataError` naming the file.

Class 1 is ``LVH`` (the positive class of the AUROC, the primary metric); inputs, outputs, loss and
metrics are those of :class:`~fedecho.tasks.classification.ClassificationTask`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from fedecho.config.task import TaskConfig
from fedecho.data.errors import EchoDataError
from fedecho.tasks.base import label_value
from fedecho.tasks.classification import ClassificationTask

__all__ = ["LVH_CLASSES", "LVH_WALL_THRESHOLD_CM", "LVHPresentTask", "lvh_from_measurements"]

#: Diastolic wall thickness (cm) from which IVSd or LVPWd means LVH (>=): above the ASE 2015 upper
#: normal limit, 1.0 cm in men / 0.9 cm in women (Lang et al., J Am Soc Echocardiogr 2015;28:1-39).
LVH_WALL_THRESHOLD_CM: float = 1.1

#: Class names in index order: 0 normal, 1 LVH.
LVH_CLASSES: tuple[str, str] = ("normal", "LVH")

_WALLS = ("IVSd", "LVPWd")
_MAX_WALL_CM = 5.0  # thicker is no wall in cm (millimetres, most likely)


def lvh_from_measurements(measurements: Mapping[str, Any], path: str = "") -> bool | None:
    """LVH (True), normal (False) or undecidable (None) from wall thicknesses in cm.

    True when IVSd or LVPWd >= :data:`LVH_WALL_THRESHOLD_CM`; False when both are measured and
    below it; None otherwise. Missing, ``None`` and NaN values count as not measured; a
    non-numeric value or one outside (0, 5] cm raises :class:`EchoDataError` naming ``path``.
    """
    walls: dict[str, float] = {}
    for name in _WALLS:
        value = measurements.get(name)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EchoDataError.at(path, f"measurement {name}={value!r} is not a number (cm)") from None
        if math.isnan(number):
            continue
        if not 0.0 < number <= _MAX_WALL_CM:
            raise EchoDataError.at(
                path, f"measurement {name}={number!r} is not a wall thickness in cm (expected 0 < x <= "
                f"{_MAX_WALL_CM}); are the measurements in mm?"
            )
        walls[name] = number
    if any(v >= LVH_WALL_THRESHOLD_CM for v in walls.values()):
        return True
    if len(walls) == len(_WALLS):
        return False
    return None


class LVHPresentTask(ClassificationTask):
    """LVH present (1) vs normal (0) from a label column or the IVSd/LVPWd rule (module docstring)."""

    name: ClassVar[str] = "lvh_present"
    input_kinds: ClassVar[tuple[str, ...]] = ("image", "clip")
    label_keys: ClassVar[tuple[str, ...]] = ("lvh", "measurements")
    vocabulary: ClassVar[tuple[str, ...]] = LVH_CLASSES
    primary_metric: ClassVar[str] = "auroc"

    def _resolve_classes(self, cfg: TaskConfig) -> tuple[str, ...]:
        if cfg.classes is not None and tuple(cfg.classes) != LVH_CLASSES:
            raise ValueError(
                f"task 'lvh_present' has the fixed classes {list(LVH_CLASSES)} (0 normal, 1 LVH); leave "
                f"TaskConfig.classes unset"
            )
        return LVH_CLASSES

    def label_index(self, value: Any, path: str) -> int | None:
        """0 (normal) or 1 (LVH) from a label cell: ``"normal"``/``"LVH"`` (any case), bool, 0/1."""
        if isinstance(value, str):
            names = {c.lower(): i for i, c in enumerate(LVH_CLASSES)}
            if value.strip().lower() in names:
                return names[value.strip().lower()]
        elif isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return int(value)
        raise EchoDataError.at(
            path, f"label {self.label_key}={value!r} is not an LVH label; expected 'LVH' or 'normal' (or 1 / 0)"
        )

    def class_of(self, labels: Mapping[str, Any], path: str) -> int | None:
        """The label column when present, else the measurement rule; ``None`` when neither decides."""
        value = None if self.label_key == "measurements" else label_value(labels, self.label_key)
        if value is not None:
            return self.label_index(value, path)
        measurements = labels.get("measurements")
        if not isinstance(measurements, Mapping):
            return None
        lvh = lvh_from_measurements(measurements, path)
        return None if lvh is None else int(lvh)
