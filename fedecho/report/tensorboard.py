"""TensorBoard scalars: the one place FedEcho writes (and, for tests and reports, reads) event files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["ScalarWriter", "read_scalars"]


class ScalarWriter:
    """Writes scalar dicts under a prefix (``train/loss``, ``site_1/val/dice``, ...)."""

    def __init__(self, logdir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self._writer = SummaryWriter(str(self.logdir))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue  # non-scalar entries (confusion matrices, ...) are not TensorBoard scalars
            self._writer.add_scalar(f"{prefix}/{key}" if prefix else key, number, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under ``logdir`` (all event files, recursively) -> [(step, value)] sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in out.items()}
