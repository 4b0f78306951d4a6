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

from dataclasses import dataclass, field

__all__ = ["PollSchedule"]


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
