"""How often a deployment looks for something that will come soon: a back-off that starts short.

A deployed message waits at five places for another process: the coordinator for the sites'
replies (:class:`fedecho.deploy.grid.PromptGrid`), each SuperNode for its next message and for its
worker's reply (:mod:`fedecho.deploy.supernode`), and each receiver for objects its sender has
announced but not uploaded yet. Flower 1.41 sleeps 0.5-3 s between looks; a fixed short interval
instead makes every idle site send several authenticated HTTPS calls per second to the
coordinator. A :class:`PollSchedule` is what is left: the first look comes ``first_s`` after the
wait starts, each later one ``factor`` times later, never more than ``cap_s`` apart. Whoever
waits calls :meth:`PollSchedule.reset` when something happened that makes the next arrival
likely soon (a message sent, a reply received), so looks are frequent right then and sparse
while nothing is expected.

The wait a look saves is about half an interval, so the waits that matter are those that end
quickly; the looks a wait costs grow only with the logarithm of its length.
"""

from __future__ import annotations

import os
import select
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TASK_BELL", "PollSchedule", "TaskBell", "ring"]


@dataclass
class PollSchedule:
    """Intervals between looks: ``first_s``, then × ``factor`` up to ``cap_s`` (seconds)."""

    first_s: float
    """Interval before the first look after :meth:`reset`."""
    cap_s: float
    """Longest interval between two looks."""
    factor: float = 1.5
    """Growth of the interval from one look to the next (1: fixed interval)."""
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s:
            raise ValueError(f"poll schedule: first_s {self.first_s} must be > 0 and <= cap_s {self.cap_s}")
        if self.factor < 1:
            raise ValueError(f"poll schedule: factor {self.factor} must be >= 1 (intervals never shrink)")
        self._next = self.first_s

    def reset(self) -> None:
        """Something happened: the next interval is ``first_s`` again."""
        self._next = self.first_s

    def next_interval(self) -> float:
        """The interval to wait now; the following one grows by ``factor`` up to ``cap_s``."""
        interval = self._next
        self._next = min(self._next * self.factor, self.cap_s)
        return interval

    def intervals(self, count: int) -> list[float]:
        """The first ``count`` intervals after a reset (without changing this schedule)."""
        copy = PollSchedule(self.first_s, self.cap_s, self.factor)
        return [copy.next_interval() for _ in range(count)]


#: The task bell's name in a site's state folder (see :class:`TaskBell`).
TASK_BELL = "task.bell"


class TaskBell:
    """A named pipe (FIFO) in the site's state folder on which the site worker waits for work.

    The SuperNode rings it (:func:`ring`) each time it has stored a message for the worker; the
    worker, instead of asking the SuperNode for a task every 50 ms (each ask an HTTP call that costs
    CPU in both processes, 20 per second per site whether work comes or not), asks when the bell
    rings, and at the latest every ``fallback_s`` seconds (a ring that could not reach it costs at
    most that). Rings are never lost: a ring while the worker is busy stays in the pipe and the
    next :meth:`wait` returns at once. Where no FIFO can be made, :meth:`wait` just sleeps."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self.error = ""
        try:
            if self.path.exists() and not stat.S_ISFIFO(self.path.stat().st_mode):
                self.path.unlink()
            if not self.path.exists():
                os.mkfifo(self.path, 0o600)
            # read-write: the pipe always has a writer (this process), so it never reads as ended
            self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        except OSError as err:
            self.error = f"{type(err).__name__}: {err}"

    @property
    def works(self) -> bool:
        return self.fd is not None

    def wait(self, timeout: float) -> bool:
        """Wait until the bell rings or ``timeout`` seconds pass; True when it rang (every pending
        ring is consumed)."""
        if self.fd is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def ring(path: str | Path) -> bool:
    """Ring the task bell at ``path`` without ever blocking; False when nobody listens (no worker
    has it open, or there is no bell) or it could not be rung."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader; ENOENT: no bell
        return False
    try:
        os.write(fd, b"!")
    except BlockingIOError:  # the pipe is full of rings the worker has not read yet: enough
        pass
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
