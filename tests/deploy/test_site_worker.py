"""The warm site worker (fedecho.deploy.worker).

In process, against Flower's real SuperNode Runtime API (its FastAPI app and in-memory NodeState,
served on 127.0.0.1 with a SuperExec secret): only the secret's holder claims tasks; a foreign app
identity is refused with a coded reply and the app never runs; an app error leaves the site as a
generic code (no path); one worker serves many messages. Then, with real processes (SuperLink +
two ``fedecho-client start`` sites, fixtures of test_deployment): a 3-round run is served by one
worker process per site, and a killed worker is replaced and the run goes on.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedecho.deploy.worker import (APP_ERROR_REASON, FOREIGN_APP_REASON, SiteWorker, installed_app_identity,
                                   read_worker_log, write_secret)
from tests.deploy.test_deployment import (RUN_TIMEOUT, _history, _submit, _wait_for, federation,  # noqa: F401
                                          sites, superlink)

SECRET = b"0123456789abcdef0123456789abcdef"


class _RuntimeApi:
    """Flower's SuperNode Runtime API on a free loopback port, with messages queued by hand the
    way the SuperNode queues what it pulls from the SuperLink."""

    def __init__(self, secret: bytes = SECRET) -> None:
        import uvicorn
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.supernode.main import create_app
        from flwr.supernode.nodestate import NodeStateFactory

        from fedecho.deploy.process import free_port

        self.factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
        self.state = self.factory.state()
        self.state.set_node_id(7)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app=create_app(state_factory=self.factory,
                                                                   superexec_auth_secret=secret),
                                                    host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self._runs: set[int] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queue(self, run_id: int, fab_id: str, fab_version: str, message_type: str = "train", round_: int = 1) -> None:
        from flwr.supercore.constant import TaskType
        from flwr.supercore.fab import Fab
        from flwr.supercore.run import Run
        from flwr.supernode.start_client_internal import _insert_message

        if run_id not in self._runs:
            fab = Fab(hash_str="", content=b"a FAB whose code must never run", verifications={})
            fab_hash = self.state.store_fab(fab)
            run = Run.create_empty(run_id)
            run.fab_id, run.fab_version, run.fab_hash, run.series_id = fab_id, fab_version, fab_hash, run_id
            self.state.store_run(run)
            self.state.set_run_series_context(run_id, Context(run_id=run_id, node_id=7, node_config={},
                                                              state=RecordDict(), run_config={}))
            self._runs.add(run_id)
        metadata = Metadata(run_id=run_id, message_id="", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                            group_id=str(round_), created_at=time.time(), ttl=3600, message_type=message_type)
        message = Message(metadata=metadata, content=RecordDict({"config": ConfigRecord({"round": round_})}))
        self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=run_id,
                               fab_hash=self.state.get_run(run_id).fab_hash)
        _insert_message(message, self.state, self.state.object_store)

    def replies(self) -> list[Message]:
        """The replies the worker pushed, with their content (as the SuperNode would send them)."""
        from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        replies = []
        for stored in self.state.get_messages_legacy(is_reply=True):
            message_id = stored.metadata.message_id
            tree = self.state.object_store.get_object_tree(message_id)
            contents = {t.object_id: self.state.object_store.get(t.object_id) for t in iterate_object_tree(tree)}
            message = inflate_object_from_contents(message_id, contents)
            message.metadata.__dict__["_message_id"] = message_id
            replies.append(message)
        return replies

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def runtime_api():
    api = _RuntimeApi()
    try:
        yield api
    finally:
        api.close()


def _recording_app(calls: list) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        calls.append((os.getpid(), int(message.content["config"]["round"])))
        if message.content["config"]["round"] == 99:
            raise FileNotFoundError("/data/site/patient0012_4CH_ES.nii.gz is unreadable")
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3.0})}), reply_to=message)

    return app


def test_secret_file_is_private_and_a_wrong_secret_claims_nothing(runtime_api, tmp_path):
    import httpx

    path = write_secret(tmp_path / "state" / "worker.secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    first = path.read_bytes()
    assert write_secret(path).read_bytes() != first  # a new start, a new secret
    runtime_api.queue(1, *installed_app_identity())
    intruder = SiteWorker(runtime_api.address, b"not the secret", tmp_path / "intruder", app=_recording_app([]))
    with pytest.raises(httpx.HTTPStatusError) as err:
        intruder.acquire()
    assert err.value.response.status_code in (401, 403)
    worker = SiteWorker(runtime_api.address, SECRET, tmp_path / "site", app=_recording_app([]))
    assert worker.acquire() is not None  # the task was still there for the secret's holder


def test_one_worker_serves_many_messages_and_refuses_a_foreign_app(runtime_api, tmp_path):
    calls: list = []
    worker = SiteWorker(runtime_api.address, SECRET, tmp_path, app=_recording_app(calls))
    fedecho_id = installed_app_identity()
    for round_ in (1, 2, 3):
        runtime_api.queue(10, *fedecho_id, round_=round_)
        worker.handle(worker.acquire())
    runtime_api.queue(11, "evil/app", "1.0.0")
    runtime_api.queue(12, fedecho_id[0], "9.9.9")  # a FedEcho name with another version is foreign too
    for _ in range(2):
        worker.handle(worker.acquire())
    assert worker.acquire() is None
    assert calls == [(os.getpid(), 1), (os.getpid(), 2), (os.getpid(), 3)]  # the foreign runs never reached it
    by_run: dict[int, list[Message]] = {}
    for reply in runtime_api.replies():
        by_run.setdefault(reply.metadata.run_id, []).append(reply)
    assert [r.content["metrics"]["num-examples"] for r in by_run[10]] == [3.0, 3.0, 3.0]
    for run_id in (11, 12):
        (reply,) = by_run[run_id]
        assert reply.has_error() and reply.error.code == 7 and reply.error.reason == FOREIGN_APP_REASON
    records = read_worker_log(tmp_path)
    assert [(r["run"], r["round"], r["outcome"]) for r in records] == [
        (10, "1", "replied"), (10, "2", "replied"), (10, "3", "replied"),
        (11, "1", "refused-foreign-app"), (12, "1", "refused-foreign-app")]
    assert {r["pid"] for r in records} == {os.getpid()}
    assert records[3]["fab_id"] == "evil/app"
    assert all(r["app_s"] >= 0 and r["pull_s"] >= 0 and r["push_s"] >= 0 for r in records)


def test_an_app_error_leaves_the_site_as_a_generic_code(runtime_api, tmp_path, caplog):
    worker = SiteWorker(runtime_api.address, SECRET, tmp_path, app=_recording_app([]))
    runtime_api.queue(20, *installed_app_identity(), round_=99)
    runtime_api.queue(20, *installed_app_identity(), round_=2)
    with caplog.at_level("ERROR", logger="fedecho.worker"):
        worker.handle(worker.acquire())
    worker.handle(worker.acquire())  # the worker goes on with the next message
    failed, ok = runtime_api.replies()
    assert failed.has_error() and failed.error.code == 2 and failed.error.reason == APP_ERROR_REASON
    assert "patient0012" not in failed.error.reason and not ok.has_error()
    assert "patient0012" in caplog.text  # the detail stays in the site's log
    assert "patient0012" not in (tmp_path / "worker.jsonl").read_text()
    assert [r["outcome"] for r in read_worker_log(tmp_path)] == ["app-error", "replied"]


def test_installed_identity_is_what_pyproject_declares():
    import tomllib

    from fedecho.deploy.submit import project_dir

    project = tomllib.loads((project_dir() / "pyproject.toml").read_text())
    publisher = project["tool"]["flwr"]["app"]["publisher"]
    assert installed_app_identity() == (f"{publisher}/{project['project']['name']}", project["project"]["version"])


def test_the_worker_keeps_one_runtime_per_run_and_data(tmp_path):
    """What stays warm in the worker: one SiteRuntime per (run state folder, site) while the run's
    config and the site's data settings are the same; anything else gets a fresh one."""
    import dataclasses

    from fedecho.config.compose import compose_run_config
    from fedecho.config.data import DataConfig
    from fedecho.federation.site import get_runtime

    cfg = compose_run_config(["federation.run_dir=/runs/a"], config_name="federated")
    data = DataConfig(format="camus", root=str(tmp_path / "data"), on_error="skip")
    first = get_runtime(cfg, site_index=0, num_sites=1, state_dir=tmp_path / "run-a", data=data)
    again = compose_run_config(["federation.run_dir=/runs/a"], config_name="federated")  # the next message
    assert get_runtime(again, site_index=0, num_sites=1, state_dir=tmp_path / "run-a",
                       data=dataclasses.replace(data)) is first
    assert get_runtime(again, site_index=0, num_sites=1, state_dir=tmp_path / "run-b", data=data) is not first
    other_data = dataclasses.replace(data, on_error="raise")
    assert get_runtime(again, site_index=0, num_sites=1, state_dir=tmp_path / "run-a", data=other_data) is not first
    longer = compose_run_config(["federation.run_dir=/runs/a", "federation.adapt.rounds=9"], config_name="federated")
    assert get_runtime(longer, site_index=0, num_sites=1, state_dir=tmp_path / "run-a", data=other_data).cfg == longer


class _SlowGrid:
    """A Grid stand-in whose replies become available ``after`` seconds after the push."""

    def __init__(self, after: float) -> None:
        self.after, self.pulls, self.pushed_at = after, 0, 0.0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        if time.monotonic() - self.pushed_at < self.after:
            return []
        replies = []
        for message_id in message_ids:
            reply = Message(metadata=Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=1,
                                              reply_to_message_id=message_id, group_id="", created_at=time.time(),
                                              ttl=60, message_type="train"), content=RecordDict())
            replies.append(reply)
        return replies


def _plain() -> Message:
    return Message(metadata=Metadata(run_id=1, message_id="", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                                     group_id="", created_at=time.time(), ttl=60, message_type="train"),
                   content=RecordDict())


def test_prompt_grid_returns_replies_as_they_arrive_and_keeps_the_timeout():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from fedecho.deploy.grid import PromptGrid, prompt

    inner = _SlowGrid(after=0.4)
    grid = PromptGrid(inner)  # type: ignore[arg-type]
    start = time.monotonic()
    replies = list(grid.send_and_receive([_plain(), _plain()], timeout=10))
    took = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.4 <= took < 1.5, took  # Flower's HttpGrid looks every 3 s
    inner = _SlowGrid(after=60)
    start = time.monotonic()
    assert list(PromptGrid(inner).send_and_receive([_plain()], timeout=0.5)) == []  # type: ignore[arg-type]
    assert 0.5 <= time.monotonic() - start < 1.5 and inner.pulls >= 3
    in_memory = InMemoryGrid.__new__(InMemoryGrid)
    assert prompt(in_memory) is in_memory  # simulation keeps its own Grid


def test_fast_object_pulls_shortens_flowers_back_off_once():
    import types

    from fedecho.deploy.grid import fast_object_pulls

    seen = {}

    def pull_objects(object_ids, pull_object_fn, *, initial_backoff=1.0, backoff_cap=10.0):
        seen.update(initial_backoff=initial_backoff, backoff_cap=backoff_cap)

    module = types.SimpleNamespace(pull_objects=pull_objects)
    assert fast_object_pulls(module) and not fast_object_pulls(module)  # type: ignore[arg-type]
    module.pull_objects(["a"], pull_object_fn=None)
    assert seen == {"initial_backoff": 0.02, "backoff_cap": 0.1}
    assert not fast_object_pulls(types.SimpleNamespace())  # type: ignore[arg-type]
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal

    for flower_module in (http_grid, start_client_internal):  # the hooks exist in this Flower
        assert callable(getattr(flower_module, "pull_objects"))
    assert start_client_internal.time is time  # the SuperNode loop sleeps on the time module


def _sleeper(seconds: float):
    import sys

    from fedecho.deploy.process import ManagedProcess

    return ManagedProcess("sleeper", [sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_supervise_restarts_a_dead_worker_then_gives_up_and_follows_the_supernode():
    from fedecho.deploy.supernode import supervise

    started, lines = [], []

    def worker():
        started.append(_sleeper(0.1))
        return started[-1]

    supernode = _sleeper(60)
    status = supervise(supernode, worker, max_restarts=2, window_s=60, poll_s=0.05, say=lines.append)
    assert status == 3 and len(started) == 3  # the first worker and two restarts
    assert "starting a new one (restart 1 of at most 2" in lines[0] and "stopping the site" in lines[-1]
    assert supernode.poll() is not None and all(w.poll() is not None for w in started)  # nothing left running

    started.clear()
    supernode = _sleeper(0.3)
    assert supervise(supernode, lambda: started.append(_sleeper(60)) or started[-1], poll_s=0.05,
                     say=lines.append) == 0
    assert "the SuperNode exited with status 0" in lines[-1] and started[0].poll() is not None


def test_deploy_round_breakdown_by_hand():
    from fedecho.bench.deploy_round import round_breakdown

    def rec(round_, type_, waited, pull, app, push):
        return {"round": str(round_), "type": type_, "waited_s": waited, "pull_s": pull, "app_s": app, "push_s": push}

    records = {"A": [rec(1, "train", 9, 9, 9, 9), rec(2, "train", 1, 2, 3, 1), rec(2, "evaluate", 0, 1, 1, 0),
                     rec(3, "train", 1, 1, 1, 1), rec(3, "evaluate", 1, 1, 1, 1), rec(3, "query", 50, 50, 50, 50)],
               "B": [rec(2, "train", 1, 1, 1, 1), rec(2, "evaluate", 1, 1, 1, 1),
                     rec(3, "train", 2, 2, 2, 2), rec(3, "evaluate", 1, 1, 1, 1)]}
    # round 2: A 1+3+4+1 = 9 > B 8, so A: queue 1, pull 3, app 4, push 1; 12 s wall -> 3 s elsewhere
    # round 3: B 12 > A 8 (the query is not a round message): queue 3, pull 3, app 3, push 3; 14 s -> 2 s
    assert round_breakdown(records, {1: 40.0, 2: 12.0, 3: 14.0}) == {
        "queue_s": 2.0, "pull_s": 3.0, "app_s": 3.5, "push_s": 2.0, "coordinator_s": 2.5}


def test_deploy_round_cpu_by_role_by_hand_and_from_real_processes(tmp_path):
    import subprocess
    import sys

    import psutil

    from fedecho.bench.deploy_round import CpuMeter, cpu_per_round, cpu_role

    assert cpu_role("/venv/bin/python -m fedecho.deploy.superlink --log-stream-interval 2 -- --host x") == "SuperLink"
    assert cpu_role("/venv/bin/python -P -m fedecho.deploy.worker --runtime-api 127.0.0.1:1") == "site workers"
    assert cpu_role("ray::ClientAppActor.run") == "Ray" and cpu_role("sleep 5") == "other"
    assert cpu_role("anything", own=True) == "bench process (simulation driver)"
    # rounds 2-3 = snapshot after round 3 minus after round 1, / 2; a process started in between
    # counts from zero, one gone by then is left out
    snapshots = {1: {10: ("SuperLink", 5.0), 11: ("site workers", 2.0), 12: ("flwr CLI", 1.0)},
                 3: {10: ("SuperLink", 6.0), 11: ("site workers", 4.0), 13: ("site workers", 1.0)}}
    assert cpu_per_round(snapshots, 1, 3) == {"site workers": 1.5, "SuperLink": 0.5}
    # the meter: a child that burns ~0.6 s of CPU between the 1st and 2nd "round" of a history file
    history = tmp_path / "history.json"
    history.write_text('[{"phase": "adapt:view"}]')
    burner = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    with CpuMeter(history, poll_s=0.02) as meter:
        time.sleep(0.3)
        child = subprocess.Popen([sys.executable, "-c", burner])
        try:
            deadline = time.monotonic() + 20
            proc = psutil.Process(child.pid)
            while sum(proc.cpu_times()[:2]) < 0.6 and time.monotonic() < deadline:
                time.sleep(0.05)
            history.write_text('[{"phase": "adapt:view"}, {"phase": "adapt:view"}, {"phase": "evaluate:view"}]')
            time.sleep(0.3)
        finally:
            child.kill()
            child.wait()
    assert set(meter.snapshots) == {0, 1, 2}
    used = meter.per_round(1, 2)
    assert 0.55 <= used["other"] <= 1.5, used  # the burner (and Python's start-up): counted once, as "other"


# --- real processes -------------------------------------------------------------------------------

def _site_records(tmp_path, site: str) -> list[dict]:
    return read_worker_log(tmp_path / "sites" / site)


@pytest.mark.deploy
def test_three_round_run_is_served_by_one_warm_worker_per_site(federation, sites, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    with _submit(federation, run_dir, "federation.adapt.rounds=3") as run:
        assert run.wait(timeout=RUN_TIMEOUT + 30) == 0, run.tail()
    history = _history(run_dir)
    assert [r["round"] for r in history if r["phase"] == "adapt:view"] == [1, 2, 3]
    for site, process in sites.items():
        records = _site_records(tmp_path, site)
        assert all(r["outcome"] == "replied" for r in records), records
        train = [r for r in records if r["type"] == "train"]
        assert [r["round"] for r in train] == ["1", "2", "3"], records
        pids = {r["pid"] for r in records}
        assert len(pids) == 1, f"site {site}: messages were served by several processes {pids}"
        (pid,) = pids
        assert pid in {p.pid for p in process.descendants()}, "the worker is a child of fedecho-client start"
        assert pid != process.pid
        # rounds 2 and 3 reuse what round 1 built: far less time in the app than round 1
        assert max(train[1]["app_s"], train[2]["app_s"]) < train[0]["app_s"] + 1.0
        assert json.dumps(records).count("data_") == 0  # no data path in the worker's log
        # the adapter travels packed as one record value (fedecho.deploy.packing): 4 Flower objects per
        # message and reply (message, RecordDict, the carrier, config or metrics), not one Array and one
        # chunk per tensor (26 LoRA tensors: ~56 objects)
        assert all(r["objects_in"] == 4 and r["objects_out"] == 4 for r in train), train


@pytest.mark.deploy
def test_a_killed_worker_is_replaced_and_the_run_goes_on(federation, sites, tmp_path):  # noqa: F811
    import psutil

    run_dir = tmp_path / "run"
    with _submit(federation, run_dir, "federation.adapt.rounds=3", "federation.strategy.round_timeout=90") as run:
        _wait_for(lambda: any(r["type"] == "train" for r in _site_records(tmp_path, "B")), 240,
                  "site B's first training round", run)
        (old,) = {r["pid"] for r in _site_records(tmp_path, "B")}
        psutil.Process(old).kill()
        assert run.wait(timeout=RUN_TIMEOUT + 30) == 0, run.tail()
    output = sites["B"].log_path.read_text(errors="replace")
    assert f"the site worker (pid {old}) exited" in output, output[-3000:]
    history = _history(run_dir)
    assert [r["round"] for r in history if r["phase"] == "adapt:view"] == [1, 2, 3]
    later = [r for r in _site_records(tmp_path, "B") if r["pid"] != old]
    assert len({r["pid"] for r in later}) == 1
    # the new worker trained site B in rounds 2 and 3, from the state on disk
    assert [r["round"] for r in later if r["type"] == "train" and r["outcome"] == "replied"] == ["2", "3"]
    for record in history:
        if record["phase"] == "adapt:view" and record["round"] > 1:
            assert set(record["sites_train"]) == {"site_0", "site_1"}, record


def test_the_worker_asks_for_work_when_the_bell_rings_not_every_50_ms(runtime_api, tmp_path):
    from fedecho.deploy.polling import TaskBell, ring

    calls: list = []
    bell = TaskBell(tmp_path / "task.bell")
    worker = SiteWorker(runtime_api.address, SECRET, tmp_path, app=_recording_app(calls), bell=bell,
                        bell_fallback_s=1.0)
    asks = []
    acquire = worker.acquire
    worker.acquire = lambda: asks.append(time.perf_counter()) or acquire()
    done = threading.Event()

    def serve() -> None:
        try:
            worker.serve_forever()
        except Exception:
            if not done.is_set():  # the test's Runtime API goes away after the test: expected then
                raise

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        time.sleep(2.2)  # idle: one ask at start, then one per fallback second (polling: ~44)
        assert 2 <= len(asks) <= 4, len(asks)
        runtime_api.queue(20, *installed_app_identity(), round_=1)
        queued = time.perf_counter()
        assert ring(tmp_path / "task.bell")  # what the SuperNode does once the message is stored
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [(os.getpid(), 1)]
        first_ask_after = min(t for t in asks if t >= queued) - queued
        assert first_ask_after < 0.5, first_ask_after  # woken by the ring, not by the 1 s fallback
    finally:
        done.set()
        bell.close()  # the worker's next wait sleeps; its thread ends when the Runtime API is gone
