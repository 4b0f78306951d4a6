"""The coordinator's checkpoint: after every round, the global arrays, the phase and round, the
strategy's state (e.g. FedAdam moments, FedAvgM momentum) and the history, so that ``resume``
continues a run from its last completed round.

Nothing here is ever unpickled: arrays live in ``.npz`` files read with ``allow_pickle=False`` and
everything else in JSON (``state.json``). A run directory copied from elsewhere can therefore not
execute code at resume; one written by an older FedEcho (``strategy.pkl``) is refused.

Each round is one atomic unit: its global and strategy arrays go to a new ``round_*.npz`` (written
to a temporary name and renamed), then ``state.json`` — the commit point — is replaced to name it.
A crash at any moment leaves the previous round's state readable and consistent.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunCheckpoint", "decode_strategy_state", "encode_strategy_state"]

_STATE = "state.json"
_LEGACY_PICKLE = "strategy.pkl"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:  # ValueError: an object array (never unpickled)
        raise ValueError(f"run checkpoint {path} is unreadable: {err}") from err


# --- strategy state <-> arrays + JSON --------------------------------------------------------------
def encode_strategy_state(state: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Strategy state (per wrapped strategy: attribute -> None, array, dict or list of arrays, Flower
    ArrayRecord, or a JSON scalar) -> (arrays ``s0, s1, ...``, a JSON-able description)."""
    from flwr.app import ArrayRecord

    arrays: dict[str, np.ndarray] = {}

    def put(value: Any) -> str:
        key = f"s{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return key

    described: list[dict[str, Any]] = []
    for level, values in enumerate(state):
        entry: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                entry[name] = {"kind": "none"}
            elif isinstance(value, (bool, int, float, str)):
                entry[name] = {"kind": "scalar", "value": value}
            elif isinstance(value, np.ndarray):
                entry[name] = {"kind": "array", "array": put(value)}
            elif isinstance(value, ArrayRecord):
                entry[name] = {"kind": "arrayrecord", "keys": list(value),
                               "arrays": [put(v.numpy()) for v in value.values()]}
            elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
                entry[name] = {"kind": "dict", "keys": list(value), "arrays": [put(v) for v in value.values()]}
            elif isinstance(value, (list, tuple)) and all(isinstance(v, np.ndarray) for v in value):
                entry[name] = {"kind": "list", "arrays": [put(v) for v in value]}
            else:
                raise TypeError(f"strategy attribute {name!r} (level {level}) is a {type(value).__name__}: only "
                                f"arrays, dicts/lists of arrays, ArrayRecords and scalars are checkpointed")
        described.append(entry)
    for key, value in arrays.items():
        if value.dtype.hasobject:
            raise TypeError(f"strategy state array {key} has object dtype; it cannot be checkpointed without pickle")
    return arrays, described


def decode_strategy_state(arrays: dict[str, np.ndarray], described: list[dict[str, Any]],
                          *, source: str = "checkpoint") -> list[dict[str, Any]]:
    """The inverse of :func:`encode_strategy_state`; ValueError naming ``source`` if they disagree."""
    from flwr.app import Array, ArrayRecord

    def get(key: str) -> np.ndarray:
        if key not in arrays:
            raise ValueError(f"{source}: strategy state names array {key!r}, which is missing")
        return arrays[key]

    state: list[dict[str, Any]] = []
    for entry in described:
        values: dict[str, Any] = {}
        for name, spec in entry.items():
            kind = spec.get("kind") if isinstance(spec, dict) else None
            if kind == "none":
                values[name] = None
            elif kind == "scalar":
                values[name] = spec["value"]
            elif kind == "array":
                values[name] = get(spec["array"])
            elif kind == "arrayrecord":
                pairs = zip(spec["keys"], spec["arrays"], strict=True)
                values[name] = ArrayRecord({k: Array(get(a)) for k, a in pairs})
            elif kind == "dict":
                values[name] = {k: get(a) for k, a in zip(spec["keys"], spec["arrays"], strict=True)}
            elif kind == "list":
                values[name] = [get(a) for a in spec["arrays"]]
            else:
                raise ValueError(f"{source}: strategy attribute {name!r} has unknown kind {kind!r}")
        state.append(values)
    return state


@dataclass
class RunCheckpoint:
    """Where a run stands. ``phase`` is the phase in progress (or last finished), ``round`` the
    number of its rounds completed; ``finished`` lists phases done, in order."""

    run_dir: Path
    phase: str = ""
    round: int = 0
    finished: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    round_file: str = ""
    """The ``round_*.npz`` holding the last completed round's global and strategy arrays."""
    array_names: list[str] = field(default_factory=list)
    strategy: list[dict[str, Any]] = field(default_factory=list)
    """Description of the strategy state (see :func:`encode_strategy_state`)."""

    @property
    def directory(self) -> Path:
        return Path(self.run_dir) / "checkpoint"

    def phase_arrays_path(self, phase: str) -> Path:
        return self.directory / f"final_{phase.replace(':', '_')}.npz"

    # --- writing -------------------------------------------------------------------------------
    def save_round(self, phase: str, round_: int, arrays: dict[str, np.ndarray], strategy_state: Any) -> None:
        """Record that ``round_`` of ``phase`` completed with these global arrays and strategy state."""
        self.directory.mkdir(parents=True, exist_ok=True)
        strategy_arrays, described = encode_strategy_state(list(strategy_state or []))
        global_arrays = {f"a{i}": np.ascontiguousarray(v) for i, v in enumerate(arrays.values())}
        name = f"round_{phase.replace(':', '_')}_{round_:06d}.npz"
        _atomic_write(self.directory / name, _npz_bytes({**global_arrays, **strategy_arrays}))
        previous = self.round_file
        self.phase, self.round, self.round_file = phase, round_, name
        self.array_names, self.strategy = list(arrays), described
        self._write_state()  # the commit point
        if previous and previous != name:
            (self.directory / previous).unlink(missing_ok=True)

    def finish_phase(self, phase: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep a finished phase's final arrays (a pretrained encoder, a task's adapter)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.phase_arrays_path(phase)
        _atomic_write(path, _npz_bytes({f"a{i}": np.ascontiguousarray(v) for i, v in enumerate(arrays.values())}))
        _atomic_write(self.directory / f"{path.stem}.names.json", json.dumps(list(arrays)).encode())
        if phase not in self.finished:
            self.finished.append(phase)
        self._write_state()

    def _write_state(self) -> None:
        state = {k: v for k, v in asdict(self).items() if k != "run_dir"}
        _atomic_write(self.directory / _STATE, json.dumps(state, indent=1).encode())

    # --- reading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path) -> RunCheckpoint | None:
        """The checkpoint of ``run_dir``, or None if the run never completed a round."""
        directory = Path(run_dir) / "checkpoint"
        legacy = directory / _LEGACY_PICKLE
        if legacy.exists():
            raise ValueError(
                f"run checkpoint {directory} holds {_LEGACY_PICKLE}, written by an older FedEcho: it is never "
                f"unpickled (a copied run directory could execute code). Start the run afresh in another "
                f"federation.run_dir (or delete {legacy} and the directory's checkpoint/ to restart this one)")
        path = directory / _STATE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"run checkpoint {path} is unreadable: {err}") from err
        known = {f for f in cls.__dataclass_fields__ if f != "run_dir"}
        if not isinstance(state, dict) or set(state) - known:
            extra = sorted(set(state) - known) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"run checkpoint {path} is not a FedEcho checkpoint (unexpected {extra})")
        if state.get("round") and not state.get("round_file"):
            raise ValueError(f"run checkpoint {path} records round {state['round']} but names no round file; "
                             f"it was written by an older FedEcho: start afresh in another federation.run_dir")
        return cls(run_dir=Path(run_dir), **state)

    def _round_arrays(self) -> dict[str, np.ndarray]:
        path = self.directory / self.round_file
        if not self.round_file or not path.is_file():
            raise FileNotFoundError(f"run checkpoint {self.directory / _STATE} names {self.round_file!r}, "
                                    f"which is missing")
        return _read_npz(path)

    def arrays(self) -> dict[str, np.ndarray]:
        data = self._round_arrays()
        missing = [f"a{i}" for i in range(len(self.array_names)) if f"a{i}" not in data]
        if missing:
            raise ValueError(f"run checkpoint {self.directory / self.round_file} lacks arrays {missing}")
        return {name: data[f"a{i}"] for i, name in enumerate(self.array_names)}

    def strategy_state(self) -> list[dict[str, Any]]:
        """The strategy state saved with the last round (arrays + JSON; nothing is unpickled)."""
        data = self._round_arrays()
        return decode_strategy_state(data, self.strategy, source=str(self.directory / self.round_file))

    def phase_arrays(self, phase: str) -> dict[str, np.ndarray]:
        path = self.phase_arrays_path(phase)
        if not path.is_file():
            raise FileNotFoundError(f"phase {phase} has no saved final weights in {self.directory}")
        names = json.loads((self.directory / f"{path.stem}.names.json").read_text())
        data = _read_npz(path)
        return {name: data[f"a{i}"] for i, name in enumerate(names)}
