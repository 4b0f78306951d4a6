"""`flwr run .` — Flower's own runner — with the project's pyproject, a FLWR_HOME of the test's own,
and a local simulation federation: the same apps produce a run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fedecho.deploy.process import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _stop_superlinks_of(home: Path) -> None:
    """`flwr run` leaves its local SuperLink running: stop the one it started for this test.

    The SuperLink inherits the environment of the `flwr` process, so the test's own FLWR_HOME
    identifies it; SuperLinks of other tests (another xdist worker's included) are left alone.
    """
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "flower-superlink" not in cmdline:
            continue
        try:
            if proc.environ().get("FLWR_HOME") != str(home):
                continue
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except psutil.TimeoutExpired:
            proc.kill()


def test_flwr_run_simulation_with_project_config(tmp_path):
    flwr = Path(sys.executable).parent / "flwr"
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 2\n'
        "options.backend.client-resources.num-cpus = 1\n"
    )
    run_dir = tmp_path / "run"
    overrides = (f"data.synthetic_patients=8 data.synthetic_image_size=64 data.root={tmp_path / 'data'} "
                 "model.image_size=32 task.image_size=[32,32] train.batch_size=8 federation.num_sites=2 "
                 f"federation.strategy.min_sites=1 federation.adapt.rounds=1 federation.run_dir={run_dir}")
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # ports of this test's own local SuperLink: never reuse one another test or user started
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    try:
        result = subprocess.run([str(flwr), "run", ".", "local", "--run-config", f"overrides='{overrides}'", "--stream"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        _stop_superlinks_of(home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((run_dir / "history.json").read_text())
    phases = [r["phase"] for r in history]
    assert phases == ["setup:view", "adapt:view", "evaluate:view"]
    assert all(site["num-examples"] > 0 for site in history[1]["sites_train"].values())
    assert len(history[1]["sites_train"]) == 2
    assert (run_dir / "report" / "report.md").is_file()
    assert shutil.which("flwr", path=env["PATH"])
