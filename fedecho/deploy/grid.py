"""The coordinator's Grid, prompt: replies are collected as soon as they arrive.

Flower 1.41's deployment Grid (``HttpGrid.send_and_receive``) pushes a round's messages and then
looks for replies every 3 s, so every exchange with the sites costs a multiple of 3 s even when
the sites answer in one (a round has two: train and evaluate). :class:`PromptGrid` wraps any
Grid and overrides ``send_and_receive``: the same push and pull calls, with the pull interval
starting at 10 ms and growing to 0.1 s while the sites work (a :class:`~fedecho.deploy.polling.
PollSchedule`; each look is one small call to the SuperLink on the coordinator's own machine).

The node list, which a strategy asks for three times before each message, is reused for 0.5 s.

Flower also fetches a message's objects (its tensors) with retries 1 s, 2 s, 4 s ... apart when
they are not uploaded yet, which is the rule when the receiver is prompt: the sender announces a
message before uploading its objects. :func:`fast_object_pulls` makes one Flower module retry
after 20 ms, growing to 0.1 s; it is applied to the coordinator's Grid (here) and to the
SuperNode's loop (fedecho.deploy.supernode).

The PromptGrid also packs every ArrayRecord it sends into one record value and unpacks the
replies' (:mod:`fedecho.deploy.packing`): a train message and its reply then travel as 4 objects
each instead of one per tensor and chunk (~56 for a 26-tensor adapter), at every hop. A reply whose packed bytes do not add up is
handed on as an error reply from its site (code ``MESSAGE_UNAVAILABLE``), not raised: one bad site
does not fail the round. Everything else is the wrapped Grid's.

Where the coordinator runs with bells (:envvar:`FEDECHO_COORDINATOR_BELLS`, set by
``fedecho-server start`` for the SuperLink and so inherited by the ServerApp; see
:mod:`fedecho.deploy.gateway`), the PromptGrid rings the outbox bell after each push, so sites
waiting at the gateway get their messages at once, and between its looks for replies it waits on
the inbox bell, which the gateway rings when a site pushed one: a look comes when a reply came,
and otherwise 0.5 s after the push, backing off to every :attr:`PromptGrid.bell_poll_s` (2) seconds.
Rings are not lost (they wait in the pipe until read), so these looks only matter where a reply
reached the SuperLink without passing the gateway.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterable
from types import ModuleType

from flwr.app import Error, Message
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedecho.deploy.packing import PackedRecordError, pack_message, unpack_message
from fedecho.deploy.polling import PollSchedule, TaskBell, ring

__all__ = ["BELLS_ENV", "PromptGrid", "fast_object_pulls", "prompt"]

_log = logging.getLogger(__name__)
#: The environment variable naming the folder of the coordinator bells (outbox.bell, inbox.bell).
BELLS_ENV = "FEDECHO_COORDINATOR_BELLS"


def fast_object_pulls(module: ModuleType, *, first_s: float = 0.02, cap_s: float = 0.1) -> bool:
    """Make ``module``'s calls of Flower's ``pull_objects`` retry an object that is not uploaded
    yet after ``first_s`` seconds (doubling up to ``cap_s``) instead of 1 s (doubling up to 10 s).
    Returns False, changing nothing, where ``module`` does not call it (another Flower)."""
    original = getattr(module, "pull_objects", None)
    if original is None or getattr(original, "fedecho_prompt", False):
        return False
    fast = functools.partial(original, initial_backoff=first_s, backoff_cap=cap_s)
    fast.fedecho_prompt = True  # type: ignore[attr-defined]
    module.pull_objects = fast
    return True


def prompt(grid: Grid) -> Grid:
    """``grid`` wrapped in :class:`PromptGrid` with prompt object pulls, unless it is the
    simulation's in-memory Grid (which polls every 0.1 s and has no objects to fetch)."""
    from flwr.superlink.grid import http_grid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if isinstance(grid, (InMemoryGrid, PromptGrid)):
        return grid
    fast_object_pulls(http_grid)
    return PromptGrid(grid, bells=os.environ.get(BELLS_ENV) or None)


def _unpacked(reply: Message) -> Message:
    try:
        return unpack_message(reply)[0]
    except PackedRecordError as err:
        return make_message(metadata=reply.metadata, error=Error(ErrorCode.MESSAGE_UNAVAILABLE,
                                                                 f"the site's reply is malformed: {err}"))


class PromptGrid(Grid):
    """``grid`` with a prompter ``send_and_receive`` (see the module doc)."""

    def __init__(self, grid: Grid, *, first_poll_s: float = 0.01, max_poll_s: float = 0.1,
                 node_ids_ttl_s: float = 0.5, bells: str | os.PathLike | None = None,
                 bell_first_poll_s: float = 0.5, bell_poll_s: float = 2.0) -> None:
        self._grid = grid
        self.first_poll_s, self.max_poll_s = first_poll_s, max_poll_s
        self.node_ids_ttl_s = node_ids_ttl_s
        self._node_ids: tuple[float, list[int]] | None = None
        self.bell_first_poll_s, self.bell_poll_s = bell_first_poll_s, bell_poll_s
        self._bells = None if bells is None else os.fspath(bells)
        self._inbox: TaskBell | None = None

    def _inbox_bell(self) -> TaskBell | None:
        """The inbox bell (opened at the first wait), or None where there are no bells."""
        if self._bells is not None and self._inbox is None:
            from fedecho.deploy.gateway import INBOX_BELL

            self._inbox = TaskBell(os.path.join(self._bells, INBOX_BELL))
            if self._inbox.works:
                _log.info("coordinator bells on (%s): replies are collected when the gateway rings", self._bells)
            else:
                _log.warning("coordinator bells in %s unusable (%s): looking for replies on a schedule instead",
                             self._bells, self._inbox.error)
        return self._inbox if self._inbox is not None and self._inbox.works else None

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        inbox = self._inbox_bell()  # listening before the sites can answer
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        schedule = (PollSchedule(self.bell_first_poll_s, self.bell_poll_s) if inbox is not None
                    else PollSchedule(self.first_poll_s, self.max_poll_s))
        wait = inbox.wait if inbox is not None else time.sleep
        while pending:
            arrived = list(self.pull_messages(pending))
            replies.extend(arrived)
            pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            if arrived:  # the other sites are often close behind
                schedule.reset()
            poll = schedule.next_interval()
            wait(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        return replies

    # --- everything else is the wrapped Grid's -------------------------------------------------
    def set_run(self, run):  # noqa: ANN001, ANN201 - Flower's signature
        return self._grid.set_run(run)

    @property
    def run(self):  # noqa: ANN201
        return self._grid.run

    def create_message(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> list[int]:
        """The wrapped Grid's, reused for ``node_ids_ttl_s`` seconds: before each message a strategy
        asks three times in a row (FedEcho's wait for enough sites, then Flower's sampling), each
        a call to the SuperLink; waits for sites ask once a second and always get a fresh list."""
        now = time.monotonic()
        if self._node_ids is None or now - self._node_ids[0] > self.node_ids_ttl_s:
            self._node_ids = (now, list(self._grid.get_node_ids()))
        return list(self._node_ids[1])

    def get_nodes(self):  # noqa: ANN201
        return self._grid.get_nodes()

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        """The wrapped Grid's, with each message's ArrayRecords packed (the caller's messages are
        left as they are and get their message ids as with Flower's Grid); then the outbox bell
        rings, where there are bells."""
        ids = self._grid.push_messages([pack_message(m) for m in messages])
        if self._bells is not None:
            from fedecho.deploy.gateway import OUTBOX_BELL

            ring(os.path.join(self._bells, OUTBOX_BELL))
        return ids

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        """The wrapped Grid's, with each reply's ArrayRecords unpacked (a reply that cannot be
        unpacked becomes an error reply of its site)."""
        return [_unpacked(m) for m in self._grid.pull_messages(message_ids)]

    def __getattr__(self, name: str):  # noqa: ANN204 - anything a newer Grid adds
        return getattr(self._grid, name)
