"""The site gate with real processes: a SuperLink (``fedecho-server start``, TLS + SuperNode
authentication) and three sites (``fedecho-client start``: SuperNode + warm site worker) on
127.0.0.1, each with its own site folder (its keys, the bundle, site.toml with its policy) and its
own data. Runs are submitted with ``flwr run`` and a run config signed here exactly as
``fedecho-server run`` signs it (so that a wrong key can be used too).

- a run signed with a wrong key is refused by every site before any data is read;
- a correctly signed run: site A (allowed) completes it, site B's policy refuses it with the rule
  named in the coordinator's output, site C's corrupt file (``on-error = "raise"`` in its own
  policy) reaches the coordinator's history as a code without path or patient id, and is in C's
  audit log with the detail in C's site log.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedecho.deploy import gate
from fedecho.deploy.audit import read_audit
from fedecho.deploy.federation import Federation, init_federation
from fedecho.deploy.process import ManagedProcess, executable, flower_env, free_port
from fedecho.deploy.sites import add_site, init_site
from fedecho.deploy.signing import RunGrant, generate_signing_keys, load_private_key, signed_run_config
from fedecho.deploy.submit import deployment_overrides, project_dir
from fedecho.deploy.superlink import CONNECTION

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

SITES = ("A", "B", "C")
TINY = ["model.image_size=32", "task.image_size=[32,32]", "model.overrides={layers:[1,1,1,1]}",
        "task.classes=[A4C,A2C]", "train.batch_size=8", "train.threads=1", "train.device=cpu",
        "federation.adapt.rounds=1", "federation.strategy.min_sites=1", "federation.strategy.fraction_evaluate=0",
        "federation.strategy.round_timeout=90"]
POLICIES = {"A": '[policy]\nexperiments = ["federated"]\nmax-rounds = 3\n',
            "B": '[policy]\ntasks = ["lv_seg"]\n',
            "C": '[policy]\nmax-rounds = 3\n[policy.data]\non-error = "raise"\n'}
RUN_TIMEOUT = 300


def _wait_for(predicate, timeout: float, what: str, process: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"{process.name} exited while waiting for {what}:\n{process.tail()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{process.tail()}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Federation folder (with its run-signing key); each site makes its keys, gets its bundle and
    writes its own policy into site.toml; site C's data has a corrupt file."""
    from fedecho.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("gate")
    fed = init_federation(root / "fed")
    for seed, site in enumerate(SITES):
        folder = _folder(fed, site)
        init_site(folder, site)
        add_site(fed, site, folder / "site.pub")
        for path in fed.bundle(site).iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        template = (folder / "site.toml").read_text()
        (folder / "site.toml").write_text(template[:template.index("[policy]")] + POLICIES[site])
        synthesize("camus", root / f"data_{site}", patients=6, seed=seed + 1, style=f"site_{site.lower()}",
                   image_size=32)
    bad = sorted((root / "data_C").glob("database_nifti/patient*/*_4CH_ED.nii.gz"))[0]
    bad.write_bytes(b"this is not a NIfTI file")
    return fed, load_private_key(fed.signing_key), bad


def _folder(fed: Federation, site: str) -> Path:
    return fed.root.parent / f"site_{site}"


@pytest.fixture(scope="module")
def deployment(federation):
    fed, _, _ = federation
    port = free_port()
    started: list[ManagedProcess] = []
    try:
        server = ManagedProcess("fedecho-server start",
                                [sys.executable, "-m", "fedecho.cli.server", "start", "--dir", str(fed.root),
                                 "--host", "127.0.0.1", "--port", str(port)],
                                env=flower_env(), log_path=fed.root / "superlink.log")
        started.append(server)
        _wait_for(lambda: "SuperLink ready" in server.tail(100_000), 120, "the SuperLink", server)
        for site in SITES:
            started.append(ManagedProcess(
                f"fedecho-client start ({site})",
                [sys.executable, "-m", "fedecho.cli.client", "start", "--bundle", str(_folder(fed, site)),
                 "--superlink", f"127.0.0.1:{port}", "--data", str(fed.root.parent / f"data_{site}"), "--format",
                 "camus", "--port", str(free_port()), "--state-dir", str(_state(fed, site)), "--device", "cpu"],
                env=flower_env(), log_path=fed.root.parent / f"{site}.log"))
        for process in started[1:]:
            _wait_for(lambda p=process: "SuperNode ID" in p.tail(100_000), 120, "the SuperNode", process)
        yield fed
    finally:
        for process in reversed(started):
            process.stop()


def _run(fed: Federation, key, run_dir: Path) -> subprocess.CompletedProcess:
    overrides = deployment_overrides(fed, TINY, run_dir)
    grant = RunGrant(experiment="federated", overrides=shlex.join(overrides), app_id=gate.APP_ID,
                     app_version=gate.installed_app()[1])  # as `fedecho-server run` signs it, with any key
    run_dir.mkdir(parents=True)
    config = run_dir / "submit.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in signed_run_config(key, grant).items()))
    return subprocess.run([executable("flwr"), "run", str(project_dir()), CONNECTION, "--run-config", str(config),
                           "--stream"], env=flower_env(fed.flwr_home), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def _state(fed: Federation, site: str) -> Path:
    return fed.root.parent / f"state_{site}"


def test_wrong_key_is_refused_by_every_site_before_any_data(federation, deployment, tmp_path):
    fed, _, _ = federation
    impostor, _ = generate_signing_keys(tmp_path / "impostor")
    result = _run(fed, load_private_key(impostor), tmp_path / "run")
    output = result.stdout + result.stderr
    assert output.count("did not take the encoder: site error 4003: run signature invalid") == len(SITES), output
    assert "only 0 sites took the encoder" in output
    for site in SITES:
        entries = read_audit(_state(fed, site))
        assert [e["event"] for e in entries] == ["received", "sent"]
        assert entries[0]["signature"] == "invalid" and entries[1]["error"]["code"] == 4003
        assert "does not verify" in (_state(fed, site) / "site.log").read_text()
        assert not list(_state(fed, site).glob("run-*")), "no per-run state: the runtime was never built"
        (_state(fed, site) / "audit.jsonl").unlink()


def test_signed_run_policy_refusal_data_error_and_completion(federation, deployment, tmp_path):
    fed, key, bad = federation
    run_dir = tmp_path / "run"
    result = _run(fed, key, run_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # B's policy: refused with the rule named, in the coordinator's output
    assert "site error 4002: site policy refused the run: site policy: tasks ['view'] are not in tasks=['lv_seg']" \
        in output, output[-4000:]
    history_text = (run_dir / "history.json").read_text()
    history = json.loads(history_text)
    adapt = [r for r in history if r["phase"] == "adapt:view"]
    assert len(adapt) == 1 and set(adapt[0]["sites_train"]) == {"site_0"}
    # B refuses every message of the run; C's corrupt file: a code and a generic reason, no path, no id
    assert sorted(adapt[0]["rejected"].values()) == [
        "error: site error 4001: data error at the site",
        "error: site error 4002: site policy refused the run: site policy: tasks ['view'] are not in tasks=['lv_seg']"]
    patient = bad.parent.name
    assert patient not in history_text and str(bad) not in history_text and bad.name not in history_text
    assert patient not in output
    audit = read_audit(_state(fed, "C"))
    errors = [e for e in audit if e["event"] == "sent" and e["error"]]
    assert errors and errors[0]["error"]["code"] == 4001 and errors[0]["phase"] == "adapt:view"
    assert str(bad) in (_state(fed, "C") / "site.log").read_text()
    refused = [e for e in read_audit(_state(fed, "B")) if e["event"] == "received"]
    assert refused and all(e["signature"] == "valid" and e["policy"].startswith("refused: tasks") for e in refused)
    # A completed the run and its audit log holds what it sent in the round
    sent = [e for e in read_audit(_state(fed, "A")) if e["event"] == "sent" and e["type"] == "train"]
    assert len(sent) == 1 and sent[0]["tensors"] and sent[0]["metrics"]["num-examples"] > 0
    assert history[-1]["phase"] == "evaluate:view"  # (fraction_evaluate=0: no site evaluates)
