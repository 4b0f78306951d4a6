"""The coordinator's checkpoint: after every round, the global arrays, the phase and round, the
strategy's state (e.g. FedAdam moments) and the history, so that ``resume`` continues a run from its
last completed round. Files are written atomically; a half-written checkpoint is never read."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunCheckpoint"]

_STATE = "state.json"
_ARRAYS = "arrays.npz"
_STRATEGY = "strategy.pkl"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{f"a{i}": v for i, v in enumerate(arrays.values())})
    return buffer.getvalue()


def _read_npz(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[f"a{i}"] for i, name in enumerate(names)}


@dataclass
class RunCheckpoint:
    """Where a run stands. ``phase`` is the phase in progress (or last finished), ``round`` the
    number of its rounds completed; ``finished`` lists phases done, in order."""

    run_dir: Path
    phase: str = ""
    round: int = 0
    finished: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return Path(self.run_dir) / "checkpoint"

    def phase_arrays_path(self, phase: str) -> Path:
        return self.directory / f"final_{phase.replace(':', '_')}.npz"

    # --- writing -------------------------------------------------------------------------------
    def save_round(self, phase: str, round_: int, arrays: dict[str, np.ndarray], strategy_state: Any) -> None:
        """Record that ``round_`` of ``phase`` completed with these global arrays."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.phase, self.round = phase, round_
        _atomic_write(self.directory / _ARRAYS, _npz_bytes(arrays))
        _atomic_write(self.directory / _STRATEGY, pickle.dumps(strategy_state))
        self._write_state(list(arrays))

    def finish_phase(self, phase: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep a finished phase's final arrays (a pretrained encoder, a task's adapter)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.phase_arrays_path(phase), _npz_bytes(arrays))
        (self.directory / f"{self.phase_arrays_path(phase).stem}.names.json").write_text(json.dumps(list(arrays)))
        if phase not in self.finished:
            self.finished.append(phase)
        self._write_state(self._names())

    def _names(self) -> list[str]:
        path = self.directory / _STATE
        return json.loads(path.read_text()).get("array_names", []) if path.is_file() else []

    def _write_state(self, names: list[str]) -> None:
        state = {k: v for k, v in asdict(self).items() if k != "run_dir"}
        state["array_names"] = names
        _atomic_write(self.directory / _STATE, json.dumps(state, indent=1).encode())

    # --- reading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path) -> RunCheckpoint | None:
        """The checkpoint of ``run_dir``, or None if the run never completed a round."""
        path = Path(run_dir) / "checkpoint" / _STATE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"run checkpoint {path} is unreadable: {err}") from err
        state.pop("array_names", None)
        return cls(run_dir=Path(run_dir), **state)

    def arrays(self) -> dict[str, np.ndarray]:
        return _read_npz(self.directory / _ARRAYS, self._names())

    def strategy_state(self) -> Any:
        return pickle.loads((self.directory / _STRATEGY).read_bytes())  # noqa: S301 - the coordinator's own file

    def phase_arrays(self, phase: str) -> dict[str, np.ndarray]:
        path = self.phase_arrays_path(phase)
        if not path.is_file():
            raise FileNotFoundError(f"phase {phase} has no saved final weights in {self.directory}")
        names = json.loads((self.directory / f"{path.stem}.names.json").read_text())
        return _read_npz(path, names)
