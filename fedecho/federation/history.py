"""Per-round history of a federated run: global and per-site metrics, bytes on the wire, rejected
updates. Written as JSON (``history.json``) and TensorBoard scalars after every round."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RoundRecord", "RunHistory"]


@dataclass
class RoundRecord:
    phase: str
    round: int
    train: dict[str, float] = field(default_factory=dict)
    """Aggregated (num-examples weighted) training metrics."""
    evaluate: dict[str, float] = field(default_factory=dict)
    """Aggregated federated evaluation metrics."""
    central: dict[str, float] = field(default_factory=dict)
    """Coordinator-side evaluation of the global model (simulation)."""
    sites_train: dict[str, dict[str, float]] = field(default_factory=dict)
    sites_evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    """site -> why its update was rejected (validation) or missing (error, timeout)."""
    clipped: dict[str, str] = field(default_factory=dict)
    """site -> why its aggregation weight is not its reported num-examples (fedecho.federation.weights)."""
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


class RunHistory:
    """Appends round records and persists them; ``writer`` (a ScalarWriter) is optional."""

    def __init__(self, path: str | Path, writer: Any | None = None, records: list[RoundRecord] | None = None) -> None:
        self.path = Path(path)
        self.writer = writer
        self.records: list[RoundRecord] = list(records or [])

    @classmethod
    def load(cls, path: str | Path, writer: Any | None = None) -> RunHistory:
        path = Path(path)
        records = [RoundRecord(**r) for r in json.loads(path.read_text())] if path.is_file() else []
        return cls(path, writer, records)

    def add(self, record: RoundRecord) -> None:
        self.records.append(record)
        self.save()
        if self.writer is not None:
            step = len(self.records)
            tag = record.phase.replace(":", "_")
            self.writer.scalars(f"{tag}/train", record.train, step)
            self.writer.scalars(f"{tag}/evaluate", record.evaluate, step)
            self.writer.scalars(f"{tag}/central", record.central, step)
            for site, values in record.sites_train.items():
                self.writer.scalars(f"{tag}/{site}/train", values, step)
            for site, values in record.sites_evaluate.items():
                self.writer.scalars(f"{tag}/{site}/evaluate", values, step)
            self.writer.scalars(f"{tag}/bytes", {"sent": record.bytes_sent, "received": record.bytes_received}, step)
            self.writer.flush()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self.records], indent=1))
        os.replace(tmp, self.path)
