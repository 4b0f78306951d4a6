"""How often a deployment looks for what comes next (fedecho.deploy.polling and its users).

The schedule against hand-computed intervals; the SuperNode's clock: Flower's 3 s idle sleep
follows the idle schedule, its 0.5 s waits for the worker's reply the local one, activity (a
message received, a reply sent: the loop's own steps, wrapped) restarts both; the hooks exist in
this Flower; the coordinator's Grid looks again soon after a reply arrives and asks the SuperLink
for its node list once per message, not three times.
"""

from __future__ import annotations

import stat
import time
import types

import pytest

from fedecho.deploy.polling import PollSchedule
from fedecho.deploy.supernode import PromptClock, prompt_clock, watch_loop


def test_intervals_grow_by_the_factor_up_to_the_cap_and_restart_on_reset():
    schedule = PollSchedule(first_s=0.01, cap_s=0.1)
    assert schedule.intervals(8) == pytest.approx([0.01, 0.015, 0.0225, 0.03375, 0.050625, 0.0759375, 0.1, 0.1])
    assert [schedule.next_interval() for _ in range(3)] == pytest.approx([0.01, 0.015, 0.0225])
    schedule.reset()
    assert schedule.next_interval() == 0.01
    assert PollSchedule(0.05, 0.05, factor=1).intervals(3) == [0.05, 0.05, 0.05]


@pytest.mark.parametrize(("first", "cap", "factor", "problem"), [
    (0.0, 1.0, 1.5, "must be > 0"), (0.5, 0.1, 1.5, "<= cap_s"), (0.1, 1.0, 0.5, "never shrink")])
def test_a_schedule_that_cannot_work_is_refused(first, cap, factor, problem):
    with pytest.raises(ValueError, match=problem):
        PollSchedule(first, cap, factor)


def _recorded_sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def test_the_supernode_clock_keeps_idle_and_local_waits_apart_and_restarts_on_activity(monkeypatch):
    clock = prompt_clock(idle_poll=0.25)
    slept = _recorded_sleeps(monkeypatch)
    for _ in range(10):
        clock.sleep(3)  # Flower: no message, ask the SuperLink again later
    assert slept == pytest.approx(PollSchedule(0.02, 0.25).intervals(10))
    assert slept[-1] == 0.25 and max(slept) == 0.25
    slept.clear()
    for _ in range(3):
        clock.sleep(0.5)  # Flower: the worker's reply is not there yet
    assert slept == pytest.approx([0.005, 0.0075, 0.01125])
    clock.sleep(3)
    assert slept[-1] == 0.25  # the idle schedule went on where it was
    clock.activity()
    slept.clear()
    clock.sleep(3), clock.sleep(0.5), clock.sleep(0.001)
    assert slept == pytest.approx([0.02, 0.005, 0.001])  # restarted; never longer than Flower asked
    assert clock.monotonic is time.monotonic  # the rest of the time module is the real one


def test_the_clock_learns_of_messages_and_replies_from_the_loops_own_steps():
    calls: list[str] = []
    runs = iter([None, 7])
    loop = types.SimpleNamespace(_pull_and_store_message=lambda **kw: next(runs),
                                 _push_messages=lambda **kw: calls.append("pushed"))

    class Counting(PromptClock):
        def activity(self) -> None:
            calls.append("activity")

    clock = Counting(PollSchedule(0.02, 0.25), PollSchedule(0.005, 0.05))
    assert watch_loop(loop, clock, lambda: calls.append("bell")) and not watch_loop(loop, clock)  # once
    assert loop._pull_and_store_message(state=None) is None and calls == []  # nothing received
    assert loop._pull_and_store_message(state=None) == 7 and calls == ["activity", "bell"]
    loop._push_messages(state=None)
    assert calls == ["activity", "bell", "pushed", "activity"]
    assert not watch_loop(types.SimpleNamespace(), clock)


def test_the_hooks_exist_in_this_flower():
    from flwr.supernode import start_client_internal as loop

    names = loop.start_client_internal.__code__.co_names  # looked up when the loop runs
    assert {"_pull_and_store_message", "_push_messages", "time"} <= set(names)
    assert loop.time is time
    assert "time" in loop._push_messages.__code__.co_names  # its 0.5 s waits for the reply go through the clock


def _message(node: int, reply_to: str = "") -> object:
    from flwr.app import Message, Metadata, RecordDict

    return Message(metadata=Metadata(run_id=1, message_id="", src_node_id=1, dst_node_id=node, group_id="",
                                     reply_to_message_id=reply_to, created_at=time.time(), ttl=60,
                                     message_type="train"), content=RecordDict())


class _Grid:
    """Replies for message i become available after ``after[i]`` seconds."""

    def __init__(self, *after: float) -> None:
        self.after, self.looks = after, []

    def push_messages(self, messages):
        self.start = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        now = time.monotonic() - self.start
        self.looks.append(now)
        return [_message(1, reply_to=i) for i in message_ids if now >= self.after[int(i[1:])]]


def test_the_coordinator_looks_soon_after_the_first_reply():
    from fedecho.deploy.grid import PromptGrid

    # the second reply comes well after the first, so a look always follows the first reply's
    # (with 0.5 / 0.52 a look delayed by a loaded machine collected both at once)
    inner = _Grid(0.5, 0.9)
    start = time.monotonic()
    replies = list(PromptGrid(inner).send_and_receive([_message(1), _message(2)], timeout=10))
    assert len(replies) == 2
    first = next(i for i, t in enumerate(inner.looks) if t >= 0.5)
    assert inner.looks[first] < 0.5 + 0.1 + 0.1  # looks at most 0.1 s apart (+ scheduling slack)
    assert inner.looks[first + 1] < 0.9  # the second reply is not there yet at the next look
    assert inner.looks[first + 1] - inner.looks[first] < 0.06  # 10 ms later, not 0.1 s (+ slack)
    assert time.monotonic() - start < 0.9 + 0.1 + 0.3


def test_the_node_list_is_asked_once_per_message_not_three_times(monkeypatch):
    from fedecho.deploy.grid import PromptGrid

    class Nodes:
        asked = 0

        def get_node_ids(self):
            self.asked += 1
            return [1, 2] if self.asked == 1 else [1, 2, 3]

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    inner = Nodes()
    grid = PromptGrid(inner)  # type: ignore[arg-type]
    assert [grid.get_node_ids() for _ in range(3)] == [[1, 2]] * 3 and inner.asked == 1
    clock[0] += 0.4
    assert grid.get_node_ids() == [1, 2] and inner.asked == 1
    clock[0] += 0.2  # past 0.5 s: a site that connected since is seen
    assert grid.get_node_ids() == [1, 2, 3] and inner.asked == 2


def test_task_bell_wakes_a_waiter_at_once_and_never_reads_as_ended(tmp_path):
    import subprocess
    import sys
    import threading

    from fedecho.deploy.polling import TaskBell, ring

    path = tmp_path / "task.bell"
    assert not ring(path)  # no bell yet: nothing blocks, nothing is made
    path.write_text("a stale regular file")
    bell = TaskBell(path)
    try:
        assert bell.works and stat.S_ISFIFO(path.stat().st_mode) and path.stat().st_mode & 0o777 == 0o600
        start = time.perf_counter()
        assert not bell.wait(0.2)  # nobody rang: the full timeout, no busy loop
        assert time.perf_counter() - start >= 0.19
        # a ring from another process wakes the waiter well before its timeout
        threading.Timer(0.1, lambda: subprocess.run(
            [sys.executable, "-c", f"from fedecho.deploy.polling import ring; assert ring({str(path)!r})"],
            check=True)).start()
        start = time.perf_counter()
        assert bell.wait(30.0)
        assert time.perf_counter() - start < 20.0
        # that writer has closed its end: the pipe must not read as ended (select would spin)
        start = time.perf_counter()
        assert not bell.wait(0.2) and time.perf_counter() - start >= 0.19
        # rings while the waiter is busy are kept (never lost), and all consumed by one wait
        assert ring(path) and ring(path) and ring(path)
        assert bell.wait(0.0) and not bell.wait(0.05)
    finally:
        bell.close()
    assert not ring(path)  # a bell nobody listens to: False at once (no reader), never blocks


def test_task_bell_without_a_fifo_sleeps(tmp_path):
    from fedecho.deploy.polling import TaskBell

    bell = TaskBell(tmp_path / "missing-folder" / "task.bell")
    assert not bell.works and "FileNotFoundError" in bell.error
    start = time.perf_counter()
    assert not bell.wait(0.1) and time.perf_counter() - start >= 0.09
