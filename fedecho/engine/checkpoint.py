"""Checkpoints of a local training run: learner weights, optimiser/schedule state, epoch, metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fedecho.engine.trainer import Trainer

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, trainer: Trainer, **extra: Any) -> None:
    """Atomically write the learner's full state and the trainer's state to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"learner": trainer.learner.state_dict(), "trainer": trainer.state_dict(), **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, trainer: Trainer | None = None) -> dict[str, Any]:
    """Read a checkpoint; with ``trainer``, restore its learner and optimiser state into it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file must name itself
        raise ValueError(f"checkpoint {path} is unreadable: {err}") from err
    if trainer is not None:
        trainer.learner.load_state_dict(payload["learner"])
        trainer.load_state_dict(payload["trainer"])
    return payload
