"""A site's policy: the ``[policy]`` and ``[policy.data]`` tables of its own ``site.toml``.

The site states what it allows, and that wins over anything in a run's configuration:

::

    [policy]
    experiments = ["federated"]          # config names in conf/ a run may use (absent: any)
    tasks = ["view", "lv_seg"]           # tasks a run may train or evaluate (absent: any)
    phases = ["adapt", "evaluate"]       # pretrain | adapt | evaluate (absent: all three)
    max-rounds = 20                      # rounds per phase (absent: no limit)
    dp-required = true                   # DP-SGD at this site (federation.privacy.mode=sample)
    max-epsilon = 8.0                    # the run's target epsilon may not exceed this
    min-noise-multiplier = 0.8           # the run's DP-SGD noise multiplier may not be lower

    [policy.data]                        # the site's own data settings: these replace the run's
    on-error = "skip"                    # raise | skip
    split-fractions = [0.7, 0.15, 0.15]  # train / val / test for patients without a given split
    split-seed = 0
    label-fraction = 1.0                 # fraction of labelled training patients used
    id-fallback = false                  # DICOM: derive a missing PatientID (see fedecho.data.dicom)

Any privacy-floor key (``dp-required``, ``max-epsilon``, ``min-noise-multiplier``) requires runs to
use DP-SGD at the site. Bad keys or values are an error naming ``site.toml`` and the key, raised
when the policy is read (``fedecho-client`` reads it before joining; the gate on every message).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_POLICY_TOML", "DataPolicy", "PHASE_KINDS", "SitePolicy", "load_policy", "read_site_toml"]

PHASE_KINDS = ("pretrain", "adapt", "evaluate")

#: The ``[policy]`` part of a new site.toml (``fedecho-server add-site`` writes it into the template):
#: every rule spelled out, permissive values the site operator is expected to tighten.
DEFAULT_POLICY_TOML = """\
[policy]
# What this site allows; a run that breaks a rule is refused before any data is read.
experiments = ["federated"]
# tasks = ["view", "lv_seg"]
phases = ["pretrain", "adapt", "evaluate"]
max-rounds = 100
dp-required = false
# max-epsilon = 8.0
# min-noise-multiplier = 0.8

[policy.data]
# This site's own data settings: they replace whatever the run's configuration says.
on-error = "skip"
# split-fractions = [0.7, 0.15, 0.15]
# split-seed = 0
# label-fraction = 1.0
# id-fallback = false
"""


def read_site_toml(path: str | Path) -> dict[str, Any]:
    """The parsed ``site.toml`` (a folder means ``<folder>/site.toml``); errors name the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "site.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: a site folder holds its site.toml") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: [policy] {key} must be a list of names, e.g. {key} = [\"a\", \"b\"]")
    return tuple(value)


def _number(where: str, table: str, key: str, value: Any, *, integer: bool = False,
            low: float | None = None, high: float | None = None) -> float | int:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        raise ValueError(f"{where}: [{table}] {key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where}: [{table}] {key}={value} is out of range [{low}, {high}]")
    return value


def _flag(where: str, table: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: [{table}] {key} must be true or false, got {value!r}")
    return value


def _unknown(where: str, table: str, values: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in [{table}]; valid: {', '.join(known)}")


@dataclass(frozen=True)
class DataPolicy:
    """The site's own data settings (``[policy.data]``); None leaves the run's value."""

    on_error: str | None = None
    split_fractions: tuple[float, float, float] | None = None
    split_seed: int | None = None
    label_fraction: float | None = None
    id_fallback: bool | None = None

    KEYS = ("on-error", "split-fractions", "split-seed", "label-fraction", "id-fallback")

    @classmethod
    def from_table(cls, table: dict, where: str) -> DataPolicy:
        _unknown(where, "policy.data", table, cls.KEYS)
        on_error = table.get("on-error")
        if on_error is not None and on_error not in ("raise", "skip"):
            raise ValueError(f"{where}: [policy.data] on-error must be \"raise\" or \"skip\", got {on_error!r}")
        fractions = table.get("split-fractions")
        if fractions is not None:
            if (not isinstance(fractions, list) or len(fractions) != 3
                    or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in fractions)
                    or not math.isclose(sum(fractions), 1.0)):
                raise ValueError(f"{where}: [policy.data] split-fractions must be 3 numbers >= 0 summing to 1, "
                                 f"got {fractions!r}")
            fractions = tuple(float(f) for f in fractions)
        seed = table.get("split-seed")
        fraction = table.get("label-fraction")
        fallback = table.get("id-fallback")
        return cls(
            on_error=on_error, split_fractions=fractions,
            split_seed=None if seed is None else int(_number(where, "policy.data", "split-seed", seed, integer=True)),
            label_fraction=None if fraction is None else float(
                _number(where, "policy.data", "label-fraction", fraction, low=1e-9, high=1.0)),
            id_fallback=None if fallback is None else _flag(where, "policy.data", "id-fallback", fallback),
        )

    def settings(self) -> dict[str, Any]:
        """The ``DataConfig`` fields this policy sets (only those it states)."""
        values = {"on_error": self.on_error, "split_fractions": self.split_fractions, "split_seed": self.split_seed,
                  "label_fraction": self.label_fraction, "id_fallback": self.id_fallback}
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class SitePolicy:
    """What a site allows (``[policy]``). None: no restriction by that rule."""

    experiments: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    phases: tuple[str, ...] = PHASE_KINDS
    max_rounds: int | None = None
    dp_required: bool = False
    max_epsilon: float | None = None
    min_noise_multiplier: float | None = None
    data: DataPolicy = field(default_factory=DataPolicy)

    KEYS = ("experiments", "tasks", "phases", "max-rounds", "dp-required", "max-epsilon", "min-noise-multiplier",
            "data")

    @property
    def needs_dp(self) -> bool:
        """Whether a privacy floor is set: runs must then use DP-SGD at the site."""
        return self.dp_required or self.max_epsilon is not None or self.min_noise_multiplier is not None

    @classmethod
    def from_table(cls, table: dict, where: str = "site.toml") -> SitePolicy:
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [policy] must be a table")
        _unknown(where, "policy", table, cls.KEYS)
        values: dict[str, Any] = {}
        for key in ("experiments", "tasks"):
            if key in table:
                values[key] = _names(where, key, table[key])
        if "phases" in table:
            phases = _names(where, "phases", table["phases"])
            bad = sorted(set(phases) - set(PHASE_KINDS))
            if bad:
                raise ValueError(f"{where}: [policy] phases lists {bad}; valid: {', '.join(PHASE_KINDS)}")
            values["phases"] = phases
        if "max-rounds" in table:
            values["max_rounds"] = int(_number(where, "policy", "max-rounds", table["max-rounds"], integer=True, low=1))
        if "dp-required" in table:
            values["dp_required"] = _flag(where, "policy", "dp-required", table["dp-required"])
        if "max-epsilon" in table:
            values["max_epsilon"] = float(_number(where, "policy", "max-epsilon", table["max-epsilon"], low=1e-9))
        if "min-noise-multiplier" in table:
            values["min_noise_multiplier"] = float(_number(where, "policy", "min-noise-multiplier",
                                                           table["min-noise-multiplier"], low=0.0))
        data = table.get("data", {})
        if not isinstance(data, dict):
            raise ValueError(f"{where}: [policy.data] must be a table")
        values["data"] = DataPolicy.from_table(data, where)
        return cls(**values)


def load_policy(path: str | Path) -> SitePolicy:
    """The policy of a site folder (or of a site.toml file). No ``[policy]`` table: no restriction
    beyond the ones that always hold (signed runs, no coordinator paths)."""
    path = Path(path)
    where = str(path / "site.toml" if path.is_dir() else path)
    settings = read_site_toml(path)
    data = settings.get("data", {})
    misplaced = sorted(set(data) & set(DataPolicy.KEYS)) if isinstance(data, dict) else []
    if misplaced:
        raise ValueError(f"{where}: {misplaced} in [data] are not read; the site's data settings belong in "
                         f"[policy.data] (move them there)")
    return SitePolicy.from_table(settings.get("policy", {}), where)
