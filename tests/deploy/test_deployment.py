"""Real deployment over loopback: ``fedecho-server start`` (a SuperLink with TLS and SuperNode
authentication behind the Fleet-only gateway), ``fedecho-client start`` (SuperNodes with keys the
sites made: ``fedecho-client init`` + ``fedecho-server add-site``), ``fedecho-server run / resume``
(signed runs). One federation and one SuperLink serve the whole module; every test starts its own
sites. Ports are picked free, every process is stopped in a finalizer, FLWR_HOME lives inside the
federation folder (tmp)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedecho.deploy.certs import make_ca, make_site_keys
from fedecho.deploy.federation import Federation, init_federation
from fedecho.deploy.process import ManagedProcess, executable, flower_env, free_port
from fedecho.deploy.sites import add_site, init_site

pytestmark = pytest.mark.deploy

SITES = ("A", "B")
#: A tiny run: a ResNet with one block per stage at 32 px, one local epoch, one CPU thread per site.
TINY = ["model.image_size=32", "task.image_size=[32,32]", "model.overrides={layers:[1,1,1,1]}",
        "task.classes=[A4C,A2C]", "train.batch_size=8", "train.threads=1", "train.device=cpu"]
RUN_TIMEOUT = 420


def _wait_for(predicate, timeout: float, what: str, process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.name} exited ({process.poll()}) while waiting for {what}:\n"
                                 f"{process.tail()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f":\n{process.tail()}" if process is not None else ""))


def site_folder(federation: Federation, site: str) -> Path:
    """The site's own folder (its keys + the coordinator's bundle), outside the federation folder."""
    return federation.root.parent / f"site_{site}"


def _cli(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"fedecho.cli.{module}", *map(str, args)]


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    from fedecho.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("deploy")
    fed = init_federation(root / "fed")
    for site in SITES:  # each site makes its key pair; the coordinator registers the public key
        init_site(site_folder(fed, site), site)
        add_site(fed, site, site_folder(fed, site) / "site.pub")
        for path in fed.bundle(site).iterdir():
            (site_folder(fed, site) / path.name).write_bytes(path.read_bytes())
    for seed, site in enumerate(SITES):
        synthesize("camus", root / f"data_{site}", patients=8, seed=seed + 1, style=f"site_{site.lower()}",
                   image_size=64)
    return fed


@pytest.fixture(scope="module")
def superlink(federation):
    port = free_port()
    server = ManagedProcess("fedecho-server start",
                            _cli("server", "start", "--dir", federation.root, "--host", "127.0.0.1", "--port", port),
                            env=flower_env(), log_path=federation.root / "superlink.log")
    try:
        _wait_for(lambda: "SuperLink ready" in server.tail(100_000), 120, "the SuperLink", server)
        yield f"127.0.0.1:{port}", server
    finally:
        server.stop()


def _start_site(federation, superlink_address, site, state_root, *extra) -> ManagedProcess:
    data = federation.root.parent / f"data_{site}"
    return ManagedProcess(f"fedecho-client start ({site})",
                          _cli("client", "start", "--bundle", site_folder(federation, site), "--superlink",
                               superlink_address, "--data", data, "--format", "camus", "--port", free_port(),
                               "--state-dir", state_root / site, "--device", "cpu", *extra),
                          env=flower_env(), log_path=state_root / f"{site}.log")


@pytest.fixture
def sites(federation, superlink, tmp_path):
    address, _ = superlink
    started = {}
    try:
        for site in SITES:
            started[site] = _start_site(federation, address, site, tmp_path / "sites")
        for site in SITES:
            # A site killed by an earlier test (SIGKILL: no deactivation) stays "online" at the
            # SuperLink until its heartbeat expires, and Flower refuses to activate it again before
            # that (exit 305, "Failed to activate SuperNode"): start it again, as its operator would.
            deadline = time.monotonic() + 150
            while True:
                process = started[site]
                _wait_for(lambda p=process: "SuperNode ID" in p.tail(100_000) or p.poll() is not None, 120,
                          "the SuperNode to connect")
                if process.poll() is None or "Failed to activate SuperNode" not in process.tail(100_000) \
                        or time.monotonic() > deadline:
                    break
                process.stop()
                time.sleep(10)
                started[site] = _start_site(federation, address, site, tmp_path / "sites")
            _wait_for(lambda p=started[site]: "SuperNode ID" in p.tail(100_000), 120, "the SuperNode to connect",
                      started[site])
        yield started
    finally:
        for process in started.values():
            process.stop()


def _submit(federation, run_dir, *overrides, log_name="run.log") -> ManagedProcess:
    return ManagedProcess("fedecho-server run", _cli("server", "run", "federated", *TINY, *overrides, "--dir",
                                                     federation.root, "--run-dir", run_dir, "--timeout", RUN_TIMEOUT),
                          env=flower_env(), log_path=run_dir.parent / log_name)


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def test_full_run_over_tls_with_authenticated_sites(federation, sites, tmp_path):
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    with _submit(federation, run_dir, "federation.adapt.rounds=2") as run:
        assert run.wait(timeout=RUN_TIMEOUT + 30) == 0, run.tail()
    seconds = time.perf_counter() - start
    output = run.tail(100_000)
    assert re.search(r"adapt:view +round 1/2 +2/2 sites", output) and re.search(r"adapt:view +round 2/2", output), output
    assert "| view | accuracy |" in output  # the final table reaches the person who ran it
    # the ServerApp inherited the coordinator bells from fedecho-server start (fedecho.deploy.gateway)
    assert "coordinator bells on" in (run_dir / "coordinator.log").read_text(errors="replace")
    history = _history(run_dir)
    assert [r["phase"] for r in history] == ["setup:view", "adapt:view", "adapt:view", "evaluate:view"]
    assert [r["round"] for r in history if r["phase"] == "adapt:view"] == [1, 2]
    for record in history[1:3]:
        assert set(record["sites_train"]) == {"site_0", "site_1"}, record
        assert all(m["num-examples"] > 0 for m in record["sites_train"].values())
    assert set(history[3]["sites_evaluate"]) == {"site_0", "site_1"}
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert "adapt:view" in state["finished"] and "evaluate:view" in state["finished"]
    assert (run_dir / "report" / "report.md").is_file()
    assert any((run_dir / "tb").iterdir())
    submission = json.loads((run_dir / "submission.json").read_text())
    assert submission["experiment"] == "federated" and len(submission["run_ids"]) == 1
    # each site kept its private state in its own folder, one per run
    for site in SITES:
        assert list((tmp_path / "sites" / site).glob("run-*/rounds/adapt_view/r*.pt"))
        # every message carried the coordinator's signature, verified at the site with its run_signing.pub
        audit = [json.loads(line) for line in (tmp_path / "sites" / site / "audit.jsonl").read_text().splitlines()]
        assert audit and {(e["signature"], e["policy"]) for e in audit} == {("valid", "allowed")}, audit[:2]
    print(f"2-round deployment run: {seconds:.1f} s")


def _refused(name: str, command: list[str], log: Path) -> str:
    """Run a SuperNode that must give up; return its output. (Wait on the leader, not on pipes:
    Flower's SuperExec child outlives a refused SuperNode for a moment.)"""
    with ManagedProcess(name, command, env=flower_env(), log_path=log) as process:
        status = process.wait(timeout=120)
    assert status != 0, f"{name} was not refused:\n{process.tail()}"
    return log.read_text(errors="replace")


def test_unregistered_key_plaintext_and_wrong_ca_are_refused(federation, superlink, tmp_path):
    address, _ = superlink
    data = federation.root.parent / "data_A"
    # a site bundle whose key the coordinator never registered
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    for name in ("ca.pem", "site.toml", "run_signing.pub"):
        (rogue / name).write_bytes((federation.bundle("A") / name).read_bytes())
    make_site_keys(rogue, "rogue")
    output = _refused("unregistered site", _cli("client", "start", "--bundle", rogue, "--superlink", address,
                                                "--data", data, "--format", "camus", "--port", free_port(),
                                                "--state-dir", tmp_path / "s1", "--device", "cpu",
                                                "--max-retries", "1"), tmp_path / "rogue.log")
    assert "Failed to activate SuperNode" in output
    assert "No SuperNode found with the given public key" in (federation.root / "state" / "superlink.log").read_text()

    # plaintext to the TLS SuperLink
    output = _refused("plaintext SuperNode", [executable("flower-supernode"), "--superlink", address, "--insecure",
                                              "--port", str(free_port()), "--max-retries", "1",
                                              "--max-wait-time", "10"], tmp_path / "plain.log")
    assert "Failed to initialize the connection to the SuperLink" in output

    # a registered key but another CA: the SuperNode must not trust the SuperLink's certificate
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    (impostor / "ca.pem").write_bytes(make_ca(tmp_path / "other_ca").ca_cert.read_bytes())
    for name in ("site.key", "site.pub", "site.toml", "run_signing.pub"):
        (impostor / name).write_bytes((site_folder(federation, "A") / name).read_bytes())
    (impostor / "site.key").chmod(0o600)
    output = _refused("SuperNode with another CA", _cli("client", "start", "--bundle", impostor, "--superlink",
                                                        address, "--data", data, "--format", "camus", "--port",
                                                        free_port(), "--state-dir", tmp_path / "s2", "--device",
                                                        "cpu", "--max-retries", "1"), tmp_path / "impostor.log")
    assert re.search(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", output), output[-2000:]


def _kill_site_after_setup(run_dir: Path, site: ManagedProcess, run: ManagedProcess) -> float:
    """Kill a site (SuperNode and ClientApp, SIGKILL) once the adapt phase has begun."""
    _wait_for(lambda: (run_dir / "history.json").is_file(), 240, "the encoder hand-out", run)
    site.kill()
    return time.perf_counter()


def test_site_killed_mid_round_fails_clearly_when_min_sites_needs_it(federation, sites, tmp_path):
    run_dir = tmp_path / "run"
    with _submit(federation, run_dir, "federation.adapt.rounds=2", "federation.strategy.min_sites=2",
                 "federation.strategy.round_timeout=40", "federation.strategy.fraction_evaluate=0") as run:
        killed = _kill_site_after_setup(run_dir, sites["B"], run)
        status = run.wait(timeout=RUN_TIMEOUT)
        after_kill = time.perf_counter() - killed
    output = run.tail(100_000) + (run_dir / "coordinator.log").read_text()
    assert status == 1, output[-3000:]
    assert "min-sites is 2" in output
    assert "finished:failed" in output
    assert after_kill < 40 + 60, f"the failure took {after_kill:.0f} s after the site died"


def test_site_killed_mid_round_run_completes_with_the_remaining_site(federation, sites, tmp_path):
    run_dir = tmp_path / "run"
    with _submit(federation, run_dir, "federation.adapt.rounds=1", "federation.strategy.min_sites=1",
                 "federation.strategy.round_timeout=120", "federation.strategy.fraction_evaluate=0") as run:
        _kill_site_after_setup(run_dir, sites["B"], run)
        assert run.wait(timeout=RUN_TIMEOUT) == 0, run.tail()
    history = _history(run_dir)
    adapt = [r for r in history if r["phase"] == "adapt:view"]
    assert len(adapt) == 1
    assert set(adapt[0]["sites_train"]) == {"site_0"}  # the round closed with the site that answered
    assert adapt[0]["train"]["train-loss"] > 0
    assert history[-1]["phase"] == "evaluate:view"
    assert (run_dir / "report" / "report.md").is_file()


def test_coordinator_killed_after_round_1_resumes_from_round_2(federation, superlink, sites, tmp_path):
    _, server = superlink
    run_dir = tmp_path / "run"

    def round_1_done() -> bool:
        path = run_dir / "checkpoint" / "state.json"
        return path.is_file() and json.loads(path.read_text()).get("round", 0) >= 1

    with _submit(federation, run_dir, "federation.adapt.rounds=2", "federation.strategy.fraction_evaluate=0") as run:
        _wait_for(round_1_done, RUN_TIMEOUT, "round 1's checkpoint", run)
        serverapps = [p for p in server.descendants() if "flwr-serverapp" in " ".join(p.cmdline())]
        assert serverapps, "the ServerApp process runs under the SuperLink"
        for process in serverapps:  # the coordinator dies, and so does whoever followed it
            process.kill()
        run.kill()
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["round"] == 1
    result = subprocess.run(_cli("server", "resume", run_dir, "--timeout", RUN_TIMEOUT), env=flower_env(),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT + 60, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"adapt:view +round 2/2", result.stdout) and not re.search(r"adapt:view +round 1/2", result.stdout)
    history = _history(run_dir)
    assert [r["round"] for r in history if r["phase"] == "adapt:view"] == [1, 2]
    assert history[-1]["phase"] == "evaluate:view"
    assert len(json.loads((run_dir / "submission.json").read_text())["run_ids"]) == 2
