"""Every reproduction experiment at ``smoke`` size (synthetic data in the dataset's own format, tiny
models, one round), through the command researchers run: ``fedecho simulate NAME --size smoke``.
CI runs the pooled arm, the first federated arm and its sites' local-only arms of each (label-fraction
experiments: those of the first encoder, every other encoder federated; all arms are checked to
compose in test_spec.py); the result row (with the local-only mean and worst site),
each arm's report, for lv_seg experiments the clinical read-outs, and for label-fraction
experiments the curves must exist. Every arm runs on the one Ray instance the command starts."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from fedecho.experiments import list_experiments, load_experiment
from fedecho.experiments.spec import PRETEXT_INIT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def git_head() -> str | None:
    done = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.mark.parametrize("name", list_experiments())
def test_smoke(name, tmp_path, monkeypatch):
    import ray

    from fedecho.cli.main import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    starts = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: starts.append(k.get("num_cpus")) or real_init(*a, **k))
    exp = load_experiment(name)
    out = tmp_path / name
    published = tmp_path / "published"
    assert main(["simulate", name, "--size", "smoke", "--first-arm", "--cpus", "2", "--out", str(out),
                 "--publish", str(published)]) == 0
    assert starts == [2] and not ray.is_initialized()  # one Ray for every arm (2 CPUs), stopped at the end
    results = json.loads((out / "results.json").read_text())
    # the published copy: same rows, with the command, the commit and the compute that made them
    copy = json.loads((published / f"{name}-smoke.json").read_text())
    assert copy["rows"] == results["rows"] and f"simulate {name} --size smoke" in copy["provenance"]["command"]
    assert copy["provenance"]["commit"] == git_head() and copy["provenance"]["machine"]["cpus"] >= 1
    assert copy["cpu_seconds"] == sum(arm["cpu_seconds"] for arm in results["arms"].values()) > 0
    assert all("/" not in arm["run_dir"] for arm in copy["arms"].values())
    # one row per target (label-fraction experiments: per target and encoder arm)
    assert len(results["rows"]) == len(exp.targets) * (len(exp.encoders) if exp.fractions else 1)
    for row in results["rows"]:
        assert math.isfinite(row["federated"]), row
        if exp.fractions and not row["arm"].startswith(next(iter(exp.encoders)) + ","):
            continue  # --first-arm: the other encoder arms run federated only
        assert math.isfinite(row["pooled"]), row
        assert row["local_sites"] >= 2 and math.isfinite(row["local_mean"]) and math.isfinite(row["local_worst"]), row
    local = [arm for arm, values in results["arms"].items() if values["setting"] == "local" or values["local_of"]]
    assert len(local) >= 2 and all(results["arms"][arm]["site"] is not None for arm in local)
    for arm, values in results["arms"].items():
        assert (out / arm / "report" / "report.md").is_file(), arm
        assert values["cpu_seconds"] > 0 and values["bytes_sent"] > 0
        for task in exp.tasks:
            assert values["central"][task], f"{arm}: no central evaluation of {task}"
    for encoder, overrides in exp.encoders.items():  # the pretext encoder arm starts from OUT/pretext
        if PRETEXT_INIT in overrides:
            config = json.loads((out / f"{encoder}-federated-{exp.fractions_for('smoke')[0]:g}" / "config.json").read_text())
            assert Path(config["init"]).parent == out / "pretext" / "checkpoints" and Path(config["init"]).is_file()
    if exp.fractions:
        for task in set(exp.tasks):
            assert (out / f"label_fractions_{task}.png").stat().st_size > 5000
    text = (out / "results.md").read_text()
    assert "| " + name + " |" in text
    if "lv_seg" in exp.tasks and exp.dataset == "camus" and not exp.fractions:  # CAMUS: ED/ES pairs
        assert "## Clinical read-outs" in text and (out / "pooled" / "clinical.npz").is_file()
