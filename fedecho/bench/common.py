"""What every benchmark shares: options, the machine, summaries (median and spread), goals and
result rows, and interleaved side-by-side timing.

A benchmark is a function ``run(options) -> list[Row]``. Each :class:`Row` is one measured
quantity (usually a ratio of two sides timed in the same run) with its :class:`Summary` over the
repetitions and, where the issue sets one, a :class:`Goal` that gives the row its status.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "STATUSES",
    "BenchOptions",
    "Goal",
    "Row",
    "Summary",
    "describe_machine",
    "interleave",
    "machine_info",
    "ratio_row",
    "summarize",
    "timed",
    "usable_cores",
]

#: Row statuses: measured against a goal (pass, miss), measured without one (info), not run here.
STATUSES = ("pass", "miss", "info", "skipped")


def usable_cores() -> int:
    """CPU cores this process may run on (affinity), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class BenchOptions:
    """How big and how often: ``quick`` picks tiny sizes (seconds per benchmark, for tests);
    ``reps`` repetitions per side (None: the benchmark's default); ``threads`` torch intra-op
    threads (and ``OMP_NUM_THREADS`` of child processes)."""

    quick: bool = False
    reps: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.reps is not None and self.reps < 1:
            raise ValueError(f"reps must be >= 1, got {self.reps}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def repetitions(self, full: int, quick: int = 2) -> int:
        """``reps`` when given, else the benchmark's default for the mode."""
        return self.reps if self.reps is not None else (quick if self.quick else full)


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated measurements: quartiles (linear interpolation between order
    statistics, numpy's default and ``statistics.quantiles(method="inclusive")``) and extremes."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "min": self.min, "max": self.max, "n": self.n}


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> Summary:
    """:class:`Summary` of ``values`` (at least one finite number)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("summarize needs at least one value")
    if not all(math.isfinite(v) for v in ordered):
        raise ValueError(f"summarize got non-finite values {ordered}")
    return Summary(median=_quantile(ordered, 0.5), q1=_quantile(ordered, 0.25), q3=_quantile(ordered, 0.75),
                   min=ordered[0], max=ordered[-1], n=len(ordered))


@dataclass(frozen=True)
class Goal:
    """A target for a row's median: ``op`` is ``"<="``, ``"<"``, ``">="`` or ``">"``."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in ("<=", "<", ">=", ">"):
            raise ValueError(f"goal op must be <=, <, >= or >, got {self.op!r}")

    def met(self, value: float) -> bool:
        return {"<=": value <= self.value, "<": value < self.value,
                ">=": value >= self.value, ">": value > self.value}[self.op]

    def __str__(self) -> str:
        symbol = {"<=": "≤", ">=": "≥"}.get(self.op, self.op)
        return f"{symbol} {self.value:g}"


@dataclass
class Row:
    """One measured quantity of a benchmark (``case`` names what was measured, ``metric`` which
    number, ``unit`` its unit). ``summary`` None means the row was not measured (``status``
    "skipped", ``note`` says why)."""

    case: str
    metric: str
    unit: str
    summary: Summary | None
    goal: Goal | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def status(self) -> str:
        if self.summary is None:
            return "skipped"
        if self.goal is None:
            return "info"
        return "pass" if self.goal.met(self.summary.median) else "miss"

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "metric": self.metric, "unit": self.unit,
                **(self.summary.as_dict() if self.summary else {"median": None, "n": 0}),
                "reps": self.summary.n if self.summary else 0,
                "goal": str(self.goal) if self.goal else None, "status": self.status,
                "note": self.note, "details": self.details}


def ratio_row(case: str, metric: str, ratios: Sequence[float], goal: Goal | None,
              sides: Mapping[str, Sequence[float]], unit: str = "ratio", note: str = "") -> Row:
    """A row for per-repetition ratios, with each side's summary in ``details``."""
    return Row(case, metric, unit, summarize(ratios), goal,
               details={name: summarize(values).as_dict() for name, values in sides.items()}, note=note)


def interleave(sides: Mapping[str, Callable[[], float]], reps: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Run each side ``warmup`` times untimed, then ``reps`` times each, alternating the order every
    repetition (A B, B A, A B, ...) so that load on a shared machine hits both sides alike.
    Each side returns its own measurement (seconds, or a rate); returns the lists per side."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            out[name].append(float(sides[name]()))
    return out


def timed(work: Callable[[], Any]) -> float:
    """Seconds ``work()`` took (wall clock)."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """The machine a run measured: CPU, usable cores, memory, load, GPU (or none), versions."""
    import psutil
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "count": torch.cuda.device_count()}
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": usable_cores(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line for people: ``x86_64, 2 cores, 23.4 GiB, no GPU, load 0.3, 2 threads, torch 2.x``."""
    gpu = f"{info['gpu']['name']} ({info['gpu']['memory_gib']} GiB)" if info.get("gpu") else "no GPU"
    return (f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {gpu}, load {info['load_average_1m']}, "
            f"{info['threads']} torch threads, torch {info['torch']}")
