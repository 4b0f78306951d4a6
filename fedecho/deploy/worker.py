"""The warm site worker: one long-lived process that executes every message a site receives.

Flower 1.41's SuperNode with ``--isolation process`` does not start anything itself: it queues one
*task* per received message and serves its Runtime API on 127.0.0.1 (``--port``) for whoever
claims the tasks. Stock Flower claims them with ``flower-superexec``, which starts a fresh
``flwr-clientapp`` process per message: that process installs the run's FAB (the code shipped
with the run), imports torch, builds the model, re-opens the data and exits. This worker replaces
both for a FedEcho site:

- it claims the SuperNode's ClientApp tasks (``AcquireTask``, signed with the SuperExec shared
  secret that ``fedecho-client start`` writes with mode 0600 into the site's state folder, so no
  other local process can take the site's work) and pulls each task's message and context;
- it refuses a run whose app identity (Flower's ``fab_id`` / ``fab_version``) is not the
  installed FedEcho's, with a coded error reply (:data:`FOREIGN_APP_REASON`) and a site log line;
- otherwise it runs the site's **installed** ``client.app:app`` (imported once from this Python's
  packages; the FAB's files are never installed, imported or executed) and pushes the reply;
- it asks for the next task when the SuperNode rings the site's task bell (a named pipe in the
  state folder, :class:`fedecho.deploy.polling.TaskBell`), not every 50 ms;
- it stays alive across messages, rounds and runs, so torch, the built model and optimiser, the
  data index, the DP accountant and the CUDA context (``fedecho.federation.site.get_runtime``
  keeps them per run) are made once per run instead of once per message. The site's state is
  still written to its state folder every round: a restarted worker resumes as a fresh process.

Every message handled is one JSON line in ``<state dir>/worker.jsonl`` (time, worker pid, run,
message type, round, outcome, seconds spent waiting / pulling (``input_s``: task and message
header, the rest: its tensors) / in the app / pushing, and how many Flower objects the message and
the reply travelled as: ``objects_in`` / ``objects_out``, a few when the tensors come packed, see
fedecho.deploy.packing): no tensor,
metric or path of the site's data. A crash of the app is answered with a generic coded error (the
detail stays in the worker's log); a crash of the worker itself makes the SuperNode answer
"ClientApp stopped responding" once the task's heartbeat expires, and ``fedecho-client start``
starts a new worker (see :func:`fedecho.deploy.supernode.supervise`).

Run: ``python -P -m fedecho.deploy.worker --runtime-api 127.0.0.1:PORT --secret-file FILE
--state-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FOREIGN_APP_REASON", "APP_ERROR_REASON", "SiteWorker", "installed_app_identity", "load_installed_app",
           "main", "read_worker_log", "write_secret"]

log = logging.getLogger("fedecho.worker")

#: The ClientApp the worker executes: the installed FedEcho package's, never the run's.
INSTALLED_APP = "client.app"
#: The worker's log of handled messages, in the site's state folder.
WORKER_LOG = "worker.jsonl"
#: Error reason of a refused foreign app (what the coordinator sees; no site detail).
FOREIGN_APP_REASON = "refused by the site: this run's app is not the site's installed FedEcho"
#: Error reason when the site's app failed on a message (the detail stays in the site's log).
APP_ERROR_REASON = "the site failed to process this message (details in the site's log)"
_ACQUIRE_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
_HEARTBEAT_S = 20.0


def installed_app_identity() -> tuple[str, str]:
    """(fab_id, fab_version) of the installed FedEcho app: ``"<publisher>/<name>"`` and the
    package version, as Flower derives them from pyproject's ``[tool.flwr.app]`` when the
    coordinator builds the run's FAB."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("fedecho")
    except PackageNotFoundError:  # pragma: no cover - the package always runs installed
        raise RuntimeError("the fedecho package is not installed in this Python; install it with "
                           "`pip install -e .` (or the site image)") from None
    return "fedecho/fedecho", installed


def load_installed_app() -> Any:
    """The installed ``client.app:app`` ClientApp; refuses one imported from Flower's FAB
    install folder (``$FLWR_HOME/apps``), where a run's shipped code would live."""
    import importlib

    module = importlib.import_module(INSTALLED_APP)
    path = Path(str(module.__file__)).resolve()
    flwr_home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser().resolve()
    if (flwr_home / "apps") in path.parents:
        raise RuntimeError(f"{INSTALLED_APP} was imported from Flower's app folder ({path}): the site worker "
                           f"runs only the installed FedEcho; start it with `python -P` outside that folder")
    return module.app


def write_secret(path: str | Path) -> Path:
    """A fresh random SuperExec secret at ``path``, readable by the site's user only (0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(32))
    return path


def read_worker_log(state_dir: str | Path) -> list[dict]:
    """The worker's records in ``state_dir`` (oldest first; empty when there are none)."""
    path = Path(state_dir) / WORKER_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class _Timer:
    start: float

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.start = now - self.start, now
        return round(seconds, 4)


class _Heartbeat:
    """Keeps a claimed task alive while the app works (Flower expires silent tasks); unlike
    Flower's HeartbeatSender it never signals the process, which outlives the task."""

    def __init__(self, client: Any) -> None:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        self._client, self._request = client, SendTaskHeartbeatRequest()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(_HEARTBEAT_S):
            try:
                if not self._client.SendTaskHeartbeat(self._request).success:
                    return
            except Exception as err:  # noqa: BLE001 - a missed beat is retried at the next one
                log.debug("task heartbeat failed: %s", err)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _retry_invoker() -> Any:
    """Retry a Runtime API call on connection errors (the SuperNode may be starting) for up to a
    minute; an HTTP error is the caller's to handle. (Flower's own invoker SIGINTs its process on
    a 401: right for a one-message ClientApp, wrong for a worker that outlives its tasks.)"""
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(lambda: exponential(base_delay=0.2, max_delay=5), httpx.TransportError, max_tries=None,
                        max_time=60)


def _pull_input(client: Any) -> tuple[Any, Any, Any, float, int]:
    """(message, context, run, seconds until the message's tensors, number of Flower objects the
    message travelled as) of the claimed task. As
    Flower's ``pull_task_input``, but the message's objects are looked for 10 ms, 20 ms, then
    every 50 ms: the SuperNode queues the task before it has downloaded them, and Flower's
    1 s, 2 s, 4 s back-off would cost seconds per message (each look is a loopback call)."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (make_confirm_message_received_fn_protobuf,
                                                                    make_pull_object_fn_protobuf)
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    start = time.perf_counter()
    task_input = client.PullTaskInput(PullTaskInputRequest())  # its FAB is never installed nor read
    context, run = context_from_proto(task_input.context), run_from_proto(task_input.run)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_input.task_id, run.run_id, context.node_id
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode returned no message for this task")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    input_s = time.perf_counter() - start
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, run.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, run.run_id),
        return_type=Message, initial_backoff=0.01, backoff_cap=0.05)
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, input_s, sum(1 for _ in iterate_object_tree(tree))


def _round(message: Any) -> str:
    """The round of a message (Flower's group id, else FedEcho's config record) for the log."""
    from fedecho.federation.contract import CONFIG, ConfigKey

    if message.metadata.group_id:
        return str(message.metadata.group_id)
    try:
        return str(message.content.config_records[CONFIG].get(ConfigKey.ROUND, ""))
    except KeyError:
        return ""


class SiteWorker:
    """Claims and executes the ClientApp tasks of one SuperNode (see the module doc)."""

    def __init__(self, runtime_api: str, secret: bytes, state_dir: str | Path, *, poll_interval: float = 0.05,
                 app: Any = None, bell: Any = None, bell_fallback_s: float = 1.0) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        if not secret:
            raise ValueError("the SuperExec secret is empty; `fedecho-client start` writes it into the state folder")
        self.runtime_api = runtime_api
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        self.bell = bell  # a fedecho.deploy.polling.TaskBell: ask for work when it rings
        self.bell_fallback_s = bell_fallback_s
        self.identity = installed_app_identity()
        self.app = app if app is not None else load_installed_app()
        self._acquirer = RuntimeHttpClient.from_server_address(
            server_address=runtime_api, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=_ACQUIRE_METHODS)],
            retry_invoker=_retry_invoker())
        self.handled = 0

    def _task_client(self, token: str) -> Any:
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=_retry_invoker())

    def acquire(self) -> str | None:
        """Claim the oldest pending ClientApp task; its token, or None when there is none."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        reply = self._acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return reply.token if reply.HasField("task") and reply.token else None

    def serve_forever(self) -> None:
        log.info("site worker pid %d serving %s for %s %s (app %s)", os.getpid(), self.runtime_api,
                 *self.identity, Path(getattr(sys.modules.get(INSTALLED_APP), "__file__", None) or "?").resolve())
        if self.bell is not None and self.bell.works:
            log.info("site worker waits for tasks on the SuperNode's bell %s (and every %.1f s)", self.bell.path,
                     self.bell_fallback_s)
        elif self.bell is not None:
            log.warning("no task bell at %s (%s): asking the SuperNode for tasks every %.2f s", self.bell.path,
                        self.bell.error, self.poll_interval)
        while True:
            token = self.acquire()
            if token is None:
                self.wait_for_work()
                continue
            self.handle(token)

    def wait_for_work(self) -> bool:
        """Until the SuperNode rings the task bell (True) or the fallback interval passes; without a
        working bell, ``poll_interval`` seconds."""
        if self.bell is not None and self.bell.works:
            return self.bell.wait(self.bell_fallback_s)
        time.sleep(self.poll_interval)
        return False

    def handle(self, token: str) -> dict:
        """Execute one claimed task: pull, check the app identity, run the installed app, push."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, no_object_id_recompute
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        client = self._task_client(token)
        claimed = time.time()
        timer = _Timer(time.perf_counter())
        record: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid()}
        context, sub_status, details = None, SubStatus.FAILED, "task failed"
        try:
            with _Heartbeat(client):
                message, context, run, input_s, objects = _pull_input(client)
                record.update(run=int(run.run_id), type=message.metadata.message_type, round=_round(message),
                              fab_id=run.fab_id, fab_version=run.fab_version,
                              waited_s=round(max(0.0, claimed - message.metadata.created_at), 4),
                              pull_s=timer.lap(), input_s=round(input_s, 4), objects_in=objects)
                if (run.fab_id, run.fab_version) != self.identity:
                    log.warning("refused run %s: its app is %s %s, this site runs only %s %s", run.run_id,
                                run.fab_id, run.fab_version, *self.identity)
                    reply, record["outcome"] = Message(Error(ErrorCode.INVALID_FAB, FOREIGN_APP_REASON),
                                                       reply_to=message), "refused-foreign-app"
                else:
                    try:
                        reply = self.app(message=message, context=context)
                        record["outcome"] = "error-reply" if reply.has_error() else "replied"
                    except Exception:  # noqa: BLE001 - the detail stays here, a generic code leaves
                        log.exception("run %s: the ClientApp failed on a %s message", run.run_id,
                                      message.metadata.message_type)
                        reply, record["outcome"] = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                                                 APP_ERROR_REASON), reply_to=message), "app-error"
                record["app_s"] = timer.lap()
                with no_object_id_recompute():  # a ConfigRecord carrier is re-serialised for every id asked
                    record["objects_out"] = len(get_all_nested_objects(reply))
                push_message(client, reply, context)
                record["push_s"] = timer.lap()
                sub_status, details = SubStatus.COMPLETED, ""
        except Exception:  # noqa: BLE001 - the SuperNode answers for a task that never replies
            log.exception("task could not be completed")
            record.setdefault("outcome", "task-failed")
        finally:
            push_task_output(client, context, sub_status, details)
            client.close()
        self.handled += 1
        with open(self.state_dir / WORKER_LOG, "a") as out:
            out.write(json.dumps(record) + "\n")
        return record


def _warm_imports() -> None:
    """Import the heavy modules before the first message (torch, the site runtime)."""
    import torch  # noqa: F401

    import fedecho.federation.site  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedecho.deploy.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api", required=True, help="the SuperNode's Runtime API HOST:PORT (loopback)")
    parser.add_argument("--secret-file", required=True, help="the SuperExec shared secret (mode 0600)")
    parser.add_argument("--state-dir", required=True, help="the site's state folder (worker.jsonl goes here)")
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="seconds between task claims when idle and there is no task bell")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per Runtime API call
    secret_path = Path(args.secret_file)
    if not secret_path.is_file():
        print(f"site worker: error: secret file {secret_path} not found", file=sys.stderr)
        return 2
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    _warm_imports()
    from fedecho.deploy.polling import TASK_BELL, TaskBell

    worker = SiteWorker(args.runtime_api, secret_path.read_bytes(), args.state_dir, poll_interval=args.poll_interval,
                        bell=TaskBell(Path(args.state_dir) / TASK_BELL))
    try:
        worker.serve_forever()
    except KeyboardInterrupt:
        log.info("site worker pid %d stopped after %d messages", os.getpid(), worker.handled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
