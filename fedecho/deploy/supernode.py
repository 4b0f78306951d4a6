"""A site's SuperNode and its warm worker.

``flower-supernode`` joins the SuperLink with the site's bundle (the federation's CA to check the
SuperLink, the site's private key to authenticate) in Flower's ``--isolation process`` mode: it
queues one task per received message and serves them on its Runtime API on 127.0.0.1 ``--port``,
where only the holder of the SuperExec secret (``<state dir>/worker.secret``, 0600) may claim
them. FedEcho's site worker (:mod:`fedecho.deploy.worker`) is that holder: one long-lived process
that runs the site's installed ClientApp for every message. :func:`supervise` keeps the pair
running: a worker that dies is started again (the site's state is on disk), the SuperNode's exit
ends both.

The SuperNode runs as ``python -m fedecho.deploy.supernode --idle-poll S -- <flower-supernode
arguments>``: Flower's own ``flower-supernode`` main, with its loop's waits shortened
(:class:`PromptClock`, schedules of :mod:`fedecho.deploy.polling`) and its tensors fetched promptly
(:func:`fedecho.deploy.grid.fast_object_pulls`). Flower 1.41 waits 3 s before asking the SuperLink
again for the next message and 0.5 s between looks for the worker's reply and its objects (1-7 s
added to every message). Here the SuperNode asks for its next message 20 ms after it received or
answered one, backing off to at most ``S`` seconds (default :data:`IDLE_POLL_S`) while none
comes (each ask is one small authenticated HTTPS request to the coordinator), and looks for the
worker's reply in its own memory every 5 ms, backing off to 50 ms.

A site that stopped without leaving (killed, power cut) stays "online" at the SuperLink until its
heartbeats are missed for 60 s, and Flower refuses to activate the same key again before that
(``flower-supernode`` exits with status 305). With ``--node-id-file`` (``fedecho-client start``
keeps it in the site's state folder) the SuperNode writes its node id there when it joins, holds
a lock on the file while it runs, and when the SuperLink refuses it, closes that previous session
itself (a ``DeactivateNode`` call signed with the site's key: the SuperLink only lets a key close
its own node) and joins at once (:func:`rejoin_hook`). Only a dead SuperNode's session is closed:
while another SuperNode of the same state folder runs, it holds the lock and a second start
stops with an error.

The worker asks the SuperNode for a task when the SuperNode rings the site's task bell
(``--task-bell``: a named pipe in the state folder, :class:`fedecho.deploy.polling.TaskBell`) after
it stored a message, instead of asking every 50 ms.

The node config the ClientApp reads (``client/app.py``): bundle-dir, site, site-index,
data-format, data-root, state-dir, device.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedecho.deploy.polling import TASK_BELL, PollSchedule, ring
from fedecho.deploy.process import ManagedProcess, executable

__all__ = ["DEFAULT_CLIENTAPPIO_PORT", "IDLE_POLL_S", "WORKER_SECRET", "PromptClock", "bundle_fields", "node_config",
           "prompt_clock", "rejoin_hook", "run_prompt_supernode", "supernode_command", "supervise", "watch_loop", "worker_command"]

#: Flower's default local port of a SuperNode (its Runtime API); one per SuperNode on a host.
DEFAULT_CLIENTAPPIO_PORT = 9094
#: Longest wait of the SuperNode's loop between two asks for work (Flower's own: 3 s); right after
#: a message it asks sooner (:func:`prompt_clock`).
IDLE_POLL_S = 0.25
#: The SuperExec shared secret between a SuperNode and its worker, in the site's state folder.
WORKER_SECRET = "worker.secret"
#: The site's node id at the SuperLink (written when it joins), in the site's state folder.
NODE_ID_FILE = "supernode.node-id"


def bundle_fields(bundle: Any) -> tuple[Path, str, int]:
    """(folder, site name, site index) of a site bundle (``SiteBundle`` of fedecho.deploy.federation)."""
    folder = getattr(bundle, "path", None) or bundle.root
    name = getattr(bundle, "name", None) or bundle.site
    index = getattr(bundle, "index", None)
    return Path(folder), str(name), int(bundle.site_index if index is None else index)


def _toml_string(key: str, value: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"{key} {value!r}: quotes, backslashes and newlines are not allowed in "
                         f"SuperNode settings (Flower's --node-config cannot carry them)")
    return json.dumps(value)


def node_config(bundle: Any, *, data_root: str | Path, data_format: str, state_dir: str | Path,
                device: str | None = None) -> str:
    """The ``--node-config`` string; paths are made absolute (the worker runs elsewhere)."""
    folder, name, index = bundle_fields(bundle)
    values = {
        "bundle-dir": _toml_string("site folder", str(folder.resolve())),
        "site": _toml_string("site", name),
        "site-index": str(index),
        "data-format": _toml_string("data format", data_format),
        "data-root": _toml_string("data path", str(Path(data_root).resolve())),
        "state-dir": _toml_string("state directory", str(Path(state_dir).resolve())),
    }
    if device:
        values["device"] = _toml_string("device", device)
    return " ".join(f"{k}={v}" for k, v in values.items())


def supernode_command(bundle: Any, *, superlink: str, data_root: str | Path, data_format: str,
                      state_dir: str | Path, port: int = DEFAULT_CLIENTAPPIO_PORT, device: str | None = None,
                      max_retries: int | None = None, max_wait_time: float | None = None,
                      secret_file: str | Path | None = None, idle_poll: float | None = IDLE_POLL_S) -> list[str]:
    """``flower-supernode`` joining ``superlink`` (HOST:PORT) over TLS as ``bundle``'s site.

    With ``secret_file`` (what ``fedecho-client start`` uses) the SuperNode runs in process
    isolation for a FedEcho worker; without it, Flower's own per-message ``flwr-clientapp``
    (kept for ``fedecho bench deploy-round``'s before number only). ``idle_poll`` None: Flower's
    own loop timing."""
    if ":" not in superlink or not superlink.rsplit(":", 1)[1].isdigit():
        raise ValueError(f"--superlink {superlink!r} must be HOST:PORT (e.g. coordinator.example.org:9093)")
    command = [
        *(_prompt_supernode(idle_poll, Path(state_dir), worker=secret_file is not None) if idle_poll
          else [executable("flower-supernode")]),
        "--superlink", superlink,
        "--root-certificates", str(Path(bundle.ca_cert).resolve()),
        "--auth-supernode-private-key", str(Path(bundle.private_key).resolve()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--node-config", node_config(bundle, data_root=data_root, data_format=data_format,
                                     state_dir=state_dir, device=device),
    ]
    if secret_file is not None:
        command += ["--isolation", "process", "--superexec-auth-secret-file", str(Path(secret_file).resolve())]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    return command


def _prompt_supernode(idle_poll: float, state_dir: Path, worker: bool) -> list[str]:
    command = [sys.executable, "-m", "fedecho.deploy.supernode", "--idle-poll", str(idle_poll),
               "--node-id-file", str((state_dir / NODE_ID_FILE).resolve())]
    if worker:
        command += ["--task-bell", str((state_dir / TASK_BELL).resolve())]
    return [*command, "--"]


#: Flower 1.41's SuperNode loop sleeps this long (or longer) only when the SuperLink had no message.
_FLOWER_IDLE_SLEEP_S = 1.0


class PromptClock:
    """Flower's ``time`` module as the SuperNode loop sees it: its sleeps follow two schedules.

    A sleep of :data:`_FLOWER_IDLE_SLEEP_S` or more (Flower's 3 s) is the loop waiting before it
    asks the SuperLink again for a message: it follows ``idle`` (and never exceeds Flower's). A
    shorter one (Flower's 0.5 s) is the loop waiting for the worker's reply or its objects in the
    SuperNode's own memory: it follows ``local``. :meth:`activity` (a message received or a reply
    sent, see :func:`watch_loop`) restarts both: the next message or reply is likely soon."""

    def __init__(self, idle: PollSchedule, local: PollSchedule) -> None:
        self.idle, self.local = idle, local

    def sleep(self, seconds: float) -> None:
        schedule = self.idle if seconds >= _FLOWER_IDLE_SLEEP_S else self.local
        time.sleep(min(seconds, schedule.next_interval()))

    def activity(self) -> None:
        self.idle.reset()
        self.local.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def watch_loop(loop: Any, clock: PromptClock, on_message: Callable[[], Any] | None = None) -> bool:
    """Tell ``clock`` when Flower's SuperNode ``loop`` module received a message
    (``_pull_and_store_message`` returned a run id: its task is queued and its objects are stored;
    ``on_message`` is called then too, e.g. ringing the worker's task bell) or sent a reply
    (``_push_messages`` returned). Returns False, changing nothing, where the loop has no such
    steps (another Flower)."""
    pull, push = getattr(loop, "_pull_and_store_message", None), getattr(loop, "_push_messages", None)
    if not (callable(pull) and callable(push)) or getattr(pull, "fedecho_watched", False):
        return False

    @functools.wraps(pull)
    def pulled(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            clock.activity()
            if on_message is not None:
                on_message()
        return run_id

    @functools.wraps(push)
    def pushed(*args: Any, **kwargs: Any) -> Any:
        try:
            return push(*args, **kwargs)
        finally:
            clock.activity()

    pulled.fedecho_watched = True  # type: ignore[attr-defined]
    loop._pull_and_store_message, loop._push_messages = pulled, pushed
    return True


def prompt_clock(idle_poll: float) -> PromptClock:
    """The SuperNode's clock: the next message asked for 20 ms after activity, backing off to
    ``idle_poll`` s; the worker's reply looked for every 5 ms, backing off to 50 ms."""
    return PromptClock(idle=PollSchedule(first_s=min(0.02, idle_poll), cap_s=idle_poll),
                       local=PollSchedule(first_s=0.005, cap_s=min(0.05, idle_poll)))


class SiteAlreadyRunning(RuntimeError):
    """Another live SuperNode holds this site's state folder."""


def lock_node_id_file(node_id_file: Path) -> int:
    """Hold an exclusive lock on ``node_id_file`` for the life of this process (the kernel drops it
    when the process dies, however it dies). Returns the file descriptor; raises
    :class:`SiteAlreadyRunning` when another process holds it."""
    node_id_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(node_id_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SiteAlreadyRunning(f"another SuperNode of this site is running with the state folder "
                                 f"{node_id_file.parent} (it holds {node_id_file.name}); stop it first") from None
    return fd


def _stored_node_id(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _store_node_id(fd: int, node_id: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, str(node_id).encode("ascii"))
    os.fsync(fd)


def _activation_refused(err: Exception) -> bool:
    import httpx
    from flwr.supercore.error import FlowerError
    from flwr.supercore.error.base import ApiErrorCode

    if not isinstance(err, httpx.HTTPStatusError):
        return False
    flower_error = FlowerError.from_json(err.response.text)
    return flower_error is not None and int(flower_error.code) == int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED)


def rejoin_hook(client_class: type, fd: int, say: Callable[[str], None]) -> None:
    """Wrap ``client_class.ActivateNode`` (Flower's ``FleetHttpClient``): a successful activation
    stores the node id in the locked file ``fd``; an activation the SuperLink refuses while the file
    names a node id (this site's previous session, dead since this process holds the lock) closes
    that session with ``DeactivateNode`` and activates again, once."""
    from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=E0611

    original = client_class.ActivateNode
    if getattr(original, "fedecho_rejoin", False):
        return

    def activate(self, request, *args, **kwargs):  # noqa: ANN001, ANN202 - Flower's signature
        try:
            response = original(self, request, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - only a refusal with a stored node id is handled
            previous = _stored_node_id(fd)
            if previous is None or not _activation_refused(err):
                raise
            say(f"fedecho: the SuperLink still holds this site's previous session (node {previous}; the site "
                f"stopped without leaving); closing it and joining again")
            self.DeactivateNode(DeactivateNodeRequest(node_id=previous))
            response = original(self, request, *args, **kwargs)
        _store_node_id(fd, response.node_id)
        return response

    activate.fedecho_rejoin = True  # type: ignore[attr-defined]
    client_class.ActivateNode = activate


def run_prompt_supernode(idle_poll: float, flower_args: list[str], node_id_file: Path | None = None,
                         task_bell: Path | None = None) -> None:
    """Flower's ``flower-supernode`` with its loop's waits shortened, (with ``node_id_file``)
    rejoining promptly after the site was killed, and (with ``task_bell``) ringing the worker's
    task bell for every message it queues (see the module doc)."""
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode
    from flwr.supernode.fleet_http_client import FleetHttpClient

    from fedecho.deploy.grid import fast_object_pulls

    if node_id_file is not None:
        try:
            fd = lock_node_id_file(node_id_file)
        except SiteAlreadyRunning as err:
            print(f"fedecho: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        rejoin_hook(FleetHttpClient, fd, lambda line: print(line, file=sys.stderr, flush=True))

    if getattr(loop, "time", None) is time and fast_object_pulls(loop):
        clock = prompt_clock(idle_poll)
        on_message = None if task_bell is None else functools.partial(ring, task_bell)
        if not watch_loop(loop, clock, on_message):
            print(f"fedecho: flwr {getattr(loop, 'package_version', '?')} changed its SuperNode loop's steps; "
                  f"looking for messages every {idle_poll} s", file=sys.stderr, flush=True)
        loop.time = clock
    else:  # a Flower whose loop no longer sleeps on `time`: correct, only slower
        print(f"fedecho: flwr {getattr(loop, 'package_version', '?')} changed its SuperNode loop; running it "
              f"with Flower's own waits", file=sys.stderr, flush=True)
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


def worker_command(*, port: int, secret_file: str | Path, state_dir: str | Path,
                   parent_pid: int | None = None) -> list[str]:
    """The site worker for the SuperNode whose Runtime API listens on 127.0.0.1:``port``.
    ``-P``: the current folder is not put on the import path (the worker imports only installed code)."""
    command = [sys.executable, "-P", "-m", "fedecho.deploy.worker", "--runtime-api", f"127.0.0.1:{port}",
               "--secret-file", str(Path(secret_file).resolve()), "--state-dir", str(Path(state_dir).resolve())]
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    return command


def supervise(supernode: ManagedProcess, start_worker: Callable[[], ManagedProcess], *,
              max_restarts: int = 5, window_s: float = 600.0, poll_s: float = 0.5,
              say: Callable[[str], None] = print) -> int:
    """Run the SuperNode and its worker until the SuperNode exits or Ctrl-C / SIGTERM.

    A worker that exits is started again (it resumes from the site's state folder); more than
    ``max_restarts`` exits within ``window_s`` seconds stop the site with status 3 (something is
    wrong that a restart does not fix: see the worker's lines above). Returns the SuperNode's
    status (0 when stopped on request)."""
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = start_worker()
    exits: list[float] = []
    try:
        while True:
            status = supernode.poll()
            if status is not None:
                say(f"the SuperNode exited with status {status}; stopping the site worker")
                return status
            if worker.poll() is not None:
                now = time.monotonic()
                exits = [t for t in exits if now - t < window_s] + [now]
                if len(exits) > max_restarts:
                    say(f"the site worker exited {len(exits)} times within {window_s:.0f} s (last status "
                        f"{worker.poll()}); stopping the site")
                    return 3
                say(f"the site worker (pid {worker.pid}) exited with status {worker.poll()}; starting a new one "
                    f"(restart {len(exits)} of at most {max_restarts} per {window_s:.0f} s)")
                worker.stop()
                worker = start_worker()
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 0
    finally:
        worker.stop()
        supernode.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedecho.deploy.supernode",
                                     description="flower-supernode with a prompter loop (see fedecho.deploy.supernode)")
    parser.add_argument("--idle-poll", type=float, default=IDLE_POLL_S, help="longest wait of the loop (seconds)")
    parser.add_argument("--node-id-file", type=Path, default=None,
                        help="the site's node id, kept to rejoin at once after the site was killed")
    parser.add_argument("--task-bell", type=Path, default=None,
                        help="the site worker's task bell (a named pipe), rung for every message queued")
    parser.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    args = parser.parse_args(argv)
    if not 0 < args.idle_poll <= 3:
        parser.error(f"--idle-poll {args.idle_poll}: give seconds in (0, 3]")
    flower_args = args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args
    run_prompt_supernode(args.idle_poll, flower_args, args.node_id_file, args.task_bell)


if __name__ == "__main__":
    main()
