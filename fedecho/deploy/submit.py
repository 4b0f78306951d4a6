"""Submit a FedEcho run to a federation's SuperLink and follow it to the end.

``flwr run <project> fedecho --run-config <file> --stream`` with ``FLWR_HOME=<federation>/flwr_home``:
the coordinator's per-round lines are printed as they come, the whole log goes to
``<run dir>/coordinator.log``, and the outcome is read back from the SuperLink (``flwr ls``).
What was submitted (experiment, overrides, run ids) is kept in ``<run dir>/submission.json`` so
that ``resume`` can submit the same run again with ``resume=true``: the coordinator then
continues from its last checkpointed round (``fedecho.federation.state``).

Every submission is signed (``fedecho.deploy.signing``): a :class:`RunGrant` over the experiment,
the whole override list the sites will compose (the deployment's own ``num_sites``,
``central_eval=false`` and ``run_dir`` included), resume, and the app's identity (``fab_id`` and
version from the project's pyproject), signed with ``<federation>/signing/run_signing.key``; the
run config carries it as ``fedecho-grant`` / ``fedecho-signature``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fedecho.deploy.federation import Federation
from fedecho.deploy.process import executable, flower_env
from fedecho.deploy.signing import RunGrant, load_private_key, signed_run_config
from fedecho.deploy.superlink import CONNECTION

__all__ = ["RunOutcome", "Submission", "app_identity", "deployment_overrides", "project_dir", "resume_run",
           "run_status", "signed_config", "stop_run", "submit_run"]

SUBMISSION_FILE = "submission.json"
_RUN_ID = re.compile(r"Successfully started run (\d+)")
#: Log lines worth showing while following a run (the rest goes to coordinator.log only).
_SHOWN = re.compile(r"^\s*(setup|pretrain|adapt|evaluate)\S*\s+(round \d+/\d+|final)\b|^▶ |^\| |^final evaluation|"
                    r"^report: |^TensorBoard: |Traceback|Error\b|ERROR|WARNING fedecho|Successfully started run|"
                    r"run finished in")


@dataclass
class Submission:
    """What ``fedecho-server run`` submitted; ``resume`` submits it again."""

    federation_dir: str
    experiment: str
    overrides: list[str]
    run_dir: str
    run_ids: list[int] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.run_dir) / SUBMISSION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> Submission:
        path = Path(run_dir).resolve() / SUBMISSION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {Path(run_dir)} is not a run made by `fedecho-server run`")
        return cls(**json.loads(path.read_text()))


@dataclass
class RunOutcome:
    run_id: int | None
    status: str
    """Flower's run status, e.g. ``finished:completed``, ``finished:failed``, ``finished:stopped``."""
    details: str
    returncode: int
    seconds: float
    run_dir: Path

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def project_dir() -> Path:
    """The Flower app (the folder whose pyproject declares ``[tool.flwr.app]``: server/ and client/)."""
    spec = importlib.util.find_spec("server")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the FedEcho ServerApp package `server` is not importable; install the project "
                                "with `pip install -e .` from its checkout")
    root = Path(spec.origin).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FileNotFoundError(f"{pyproject} with [tool.flwr.app] not found (the FedEcho checkout)")
    return root


def deployment_overrides(federation: Federation, overrides: list[str], run_dir: Path) -> list[str]:
    """Deployment defaults first (the number of sites is the federation's, no central evaluation:
    the coordinator holds no data), then the user's overrides, then the absolute run directory."""
    if any(o.split("=", 1)[0].lstrip("+~") == "federation.run_dir" for o in overrides):
        raise ValueError("give the run directory with --run-dir, not federation.run_dir=...")
    return [f"federation.num_sites={len(federation.sites)}", "federation.central_eval=false", *overrides,
            f"federation.run_dir={run_dir}"]


def app_identity(root: Path | None = None) -> tuple[str, str]:
    """(fab_id, version) of the Flower app as ``flwr run`` builds it: ``<publisher>/<name>`` and
    the ``[project]`` version of the app's pyproject."""
    values = tomllib.loads(((root or project_dir()) / "pyproject.toml").read_text())
    publisher = values["tool"]["flwr"]["app"]["publisher"]
    return f"{publisher}/{values['project']['name']}", str(values["project"]["version"])


def signed_config(federation: Federation, experiment: str, overrides: list[str], resume: bool) -> dict:
    """The run config of a submission: experiment, overrides (one shell-quoted string), resume, and
    the grant over them signed with the federation's run-signing key."""
    if not federation.signing_key.is_file():
        raise FileNotFoundError(f"{federation.signing_key} not found: runs are signed with the key "
                                f"`fedecho-server init` made; this federation folder has none")
    app_id, app_version = app_identity()
    grant = RunGrant(experiment=experiment, overrides=shlex.join(overrides), resume=resume, app_id=app_id,
                     app_version=app_version)
    return signed_run_config(load_private_key(federation.signing_key), grant)


def _toml(values: dict) -> str:
    """A flat TOML table of strings and booleans (what ``flwr run --run-config FILE`` reads)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def _flwr(federation: Federation, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([executable("flwr"), *args], env=flower_env(federation.flwr_home), capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_status(federation: Federation, run_id: int) -> tuple[str, str]:
    """(status, details) of a run as the SuperLink reports it."""
    result = _flwr(federation, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
    try:
        reply = json.loads(result.stdout[result.stdout.find("{"):])
        run = reply["runs"][0]
    except (ValueError, KeyError, IndexError):
        return "unknown", (result.stdout + result.stderr).strip()[-500:]
    return str(run.get("status", "unknown")), str(run.get("status-details", ""))


def stop_run(federation: Federation, run_id: int) -> bool:
    result = _flwr(federation, "stop", str(run_id), CONNECTION)
    return result.returncode == 0


def submit_run(federation: Federation, experiment: str, overrides: list[str], *, run_dir: str | Path | None = None,
               resume: bool = False, out: TextIO | None = None, timeout: float | None = None) -> RunOutcome:
    """Submit ``experiment`` with Hydra ``overrides`` and follow it to the end (see module doc);
    progress lines go to ``out`` (default stdout)."""
    out = out or sys.stdout
    if run_dir is None:
        run_dir = federation.runs / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(run_dir).resolve()
    if not resume and (run_dir / SUBMISSION_FILE).exists():
        raise ValueError(f"{run_dir} already holds a run; `fedecho-server resume {run_dir}` continues it")
    submission = (Submission.load(run_dir) if resume else
                  Submission(str(federation.root), experiment, list(overrides), str(run_dir)))
    submission.save()
    config_file = run_dir / ("resume.toml" if resume else "submit.toml")
    config = signed_config(federation, experiment, deployment_overrides(federation, list(overrides), run_dir), resume)
    config_file.write_text(_toml(config))
    command = [executable("flwr"), "run", str(project_dir()), CONNECTION, "--run-config", str(config_file), "--stream"]
    start = time.perf_counter()
    run_id = None
    with open(run_dir / "coordinator.log", "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        process = subprocess.Popen(command, env=flower_env(federation.flwr_home), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        expired = threading.Event()
        watchdog = None
        if timeout is not None:  # the log stream can stay silent: kill the follower from outside
            watchdog = threading.Timer(timeout, lambda: (expired.set(), process.kill()))
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in process.stdout or []:
                log.write(line)
                log.flush()
                match = _RUN_ID.search(line)
                if match and run_id is None:
                    run_id = int(match.group(1))
                    submission.run_ids.append(run_id)
                    submission.save()
                text = line.rstrip()
                if _SHOWN.search(text):
                    print(text, file=out, flush=True)
            returncode = process.wait()
            if expired.is_set():
                raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")
        except BaseException:
            if run_id is not None:  # a run nobody follows would go on writing the run directory
                stop_run(federation, run_id)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    if run_id is None:
        if not resume:  # nothing was submitted: the run directory may be used again
            (run_dir / SUBMISSION_FILE).unlink(missing_ok=True)
        tail = (run_dir / "coordinator.log").read_text(errors="replace").strip().splitlines()[-8:]
        raise RuntimeError(f"the SuperLink did not accept the run (is `fedecho-server start --dir "
                           f"{federation.root}` running?); flwr run said:\n" + "\n".join(tail))
    status, details = run_status(federation, run_id)
    if status in ("running", "starting", "pending"):  # the log stream ended early: wait for the end
        deadline = time.monotonic() + 30
        while status in ("running", "starting", "pending") and time.monotonic() < deadline:
            time.sleep(1)
            status, details = run_status(federation, run_id)
    outcome = RunOutcome(run_id, status, details, returncode, time.perf_counter() - start, run_dir)
    with open(run_dir / "coordinator.log", "a") as log:
        log.write(f"# run {run_id}: {status} {details} in {outcome.seconds:.1f} s\n")
    return outcome


def resume_run(run_dir: str | Path, *, out: TextIO | None = None, timeout: float | None = None) -> RunOutcome:
    """Submit the run of ``run_dir`` again with ``resume=true`` (its earlier runs are stopped first
    if the SuperLink still thinks they are running: one coordinator per run directory)."""
    out = out or sys.stdout
    submission = Submission.load(run_dir)
    federation = Federation.load(submission.federation_dir)
    for run_id in submission.run_ids:
        status, _ = run_status(federation, run_id)
        if status.startswith(("running", "starting", "pending")):
            print(f"stopping the earlier run {run_id} ({status}) of {submission.run_dir}", file=out, flush=True)
            stop_run(federation, run_id)
    return submit_run(federation, submission.experiment, submission.overrides, run_dir=submission.run_dir,
                      resume=True, out=out, timeout=timeout)
