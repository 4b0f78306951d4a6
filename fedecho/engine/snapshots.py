"""A site's private state, one atomic file per trained round: ``rounds/<phase>/r<round>.pt``.

Each snapshot holds everything the site needs to train the next round exactly as an uninterrupted
run would: the learner's local tensors, optimiser, schedule, step count and the DP accountant (see
:meth:`fedecho.engine.trainer.Trainer.site_state_dict`). It is written to a temporary file and
moved into place with ``os.replace``, so a crash leaves either the whole round or none of it, never
trained steps the accountant did not record. Round r always starts from the newest snapshot before
r: a round the coordinator re-sends after its own crash is trained again from the same state (and,
with the same secret-seeded noise, gives the same update bit for bit).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["SnapshotStore"]

_NAME = re.compile(r"^r(\d+)\.pt$")


class SnapshotStore:
    """Per-round snapshots of one site under ``root`` (the site's state directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "rounds"

    def _dir(self, phase: str) -> Path:
        return self.root / re.sub(r"[^A-Za-z0-9_.-]", "_", phase)

    def rounds(self, phase: str) -> list[int]:
        """Rounds of ``phase`` with a snapshot, ascending."""
        folder = self._dir(phase)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))

    def latest(self, phase: str, before: int | None = None) -> int:
        """The newest snapshot round of ``phase`` below ``before`` (any, if None); 0 if none."""
        done = [r for r in self.rounds(phase) if before is None or r < before]
        return done[-1] if done else 0

    def path(self, phase: str, round_: int) -> Path:
        return self._dir(phase) / f"r{round_}.pt"

    def save(self, phase: str, round_: int, state: dict[str, Any]) -> Path:
        """Write the snapshot of ``round_`` atomically (temp file, fsync, ``os.replace``)."""
        path = self.path(phase, round_)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save({"round": round_, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def load(self, phase: str, round_: int) -> dict[str, Any]:
        path = self.path(phase, round_)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged file must name itself and the fix
            raise ValueError(
                f"site snapshot {path} is unreadable ({type(err).__name__}); delete it to retrain that "
                f"round from the snapshot before it"
            ) from err
