"""What a person watching a run sees: one line per phase and round, a final table, and Flower's
own logs in a file of the run directory instead of the terminal.

``quiet_console(log_path, verbose)`` wraps a run (simulation, demo, ``fedecho-server run``): while it
is active, everything written to ``sys.stdout``/``sys.stderr`` and every console logging handler
(Flower's ``flwr`` logger, Ray's forwarded site output, FedEcho's INFO lines) goes to ``log_path``;
only :func:`emit` reaches the terminal. With ``verbose`` the terminal gets everything as well.

The coordinator calls :func:`phase_line`, :func:`round_line` and :func:`final_table`; the key
metric of a round is the first of :data:`KEY_METRICS` its evaluation (else training) reports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from fedecho.federation.contract import MetricKey

__all__ = ["KEY_METRICS", "emit", "final_table", "key_metric", "phase_line", "quiet_console", "round_line"]

#: the metric that stands for a round, in order of preference (direction is the metric's own)
KEY_METRICS = ("dice", "accuracy", "auroc", "mae", "loss", MetricKey.LOSS)

_terminal: TextIO | None = None  # set by quiet_console; None: the current sys.stdout


def emit(line: str) -> None:
    """Print ``line`` on the terminal (also while :func:`quiet_console` sends the rest to a file)."""
    stream = _terminal or sys.stdout
    print(line, file=stream, flush=True)


def key_metric(values: dict[str, float]) -> tuple[str, float] | None:
    for name in KEY_METRICS:
        if name in values:
            return name, float(values[name])
    return None


def phase_line(name: str, *, rounds: int, sites: int, strategy: str, resumed_after: int = 0) -> str:
    resumed = f", resuming after round {resumed_after}" if resumed_after else ""
    return f"▶ {name}: {rounds} round(s), {sites} site(s), {strategy}{resumed}"


def round_line(record: Any, *, rounds: int | None, sites: int) -> str:
    """``  adapt:view  round 2/5  3/3 sites  accuracy 0.812  4.1 s`` (+ rejected sites)."""
    answered = len(record.sites_evaluate or record.sites_train)
    where = f"round {record.round}/{rounds}" if rounds else "final"
    metric = key_metric(record.evaluate) or key_metric(record.train)
    shown = f"{metric[0]} {metric[1]:.4g}" if metric else "-"
    if record.central and (central := key_metric(record.central)):
        shown += f" (central {central[1]:.4g})"
    line = f"  {record.phase:<22s} {where:<11s} {answered}/{sites} sites  {shown:<28s} {record.seconds:6.1f} s"
    if record.rejected:
        line += f"  rejected: {', '.join(sorted(record.rejected))}"
    return line


def final_table(records: Sequence[Any]) -> list[str]:
    """Markdown-style table of the final evaluation per task: federated (sites' test patients,
    weighted by examples) next to central (the global model on the pooled test split)."""
    finals = [r for r in records if r.phase.startswith("evaluate:")]
    if not finals:
        return []
    lines = ["| task | metric | federated | central |", "|---|---|---|---|"]
    for record in finals:
        task = record.phase.split(":", 1)[1]
        names = [k for k in record.evaluate if k not in ("loss",) and "/" not in k][:3] or list(record.evaluate)[:1]
        for name in names:
            central = record.central.get(name)
            lines.append(f"| {task} | {name} | {record.evaluate[name]:.4f} | "
                         f"{'-' if central is None else f'{central:.4f}'} |")
    return lines


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def quiet_console(log_path: str | Path, *, verbose: bool = False) -> Iterator[Path]:
    """Send stdout, stderr and console log handlers to ``log_path`` (and the terminal if
    ``verbose``) for the duration; :func:`emit` keeps printing on the terminal."""
    global _terminal
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal, old_out, old_err = sys.stdout, sys.stdout, sys.stderr
    with path.open("a", buffering=1, encoding="utf-8") as log_file:
        sink: TextIO = _Tee(log_file, terminal) if verbose else log_file
        swapped: list[tuple[logging.StreamHandler, Any]] = []
        loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("flwr", "ray"))]
        for logger in loggers:
            for handler in logger.handlers:  # every console handler, whatever stream it was made with
                if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                        and all(handler is not h for h, _ in swapped)):  # a handler on two loggers: once
                    swapped.append((handler, handler.stream))
                    handler.stream = sink  # no flush of the old stream: it may be closed
        _terminal, sys.stdout, sys.stderr = terminal, sink, sink
        try:
            yield path
        finally:
            sys.stdout, sys.stderr, _terminal = old_out, old_err, None
            for handler, stream in swapped:
                handler.stream = stream
            for logger in loggers:  # handlers made during the run (Flower, Ray) would outlive the file
                for handler in logger.handlers:
                    if getattr(handler, "stream", None) in (sink, log_file):
                        handler.stream = old_err
