"""A published result says which code, command and machine made it (fedecho.experiments.provenance)."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

from pathlib import Path

from fedecho.experiments.provenance import git_state, provenance, publish


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_state_names_the_commit_and_sees_uncommitted_tracked_changes_only(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x").write_text("untracked")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
    assert git_state(tmp_path / "runs" / "nope") == {"commit": None, "dirty": None}


def test_provenance_keeps_the_command_word_for_word_and_the_machine():
    record = provenance(Path("."),
                        started=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        argv=["/venv/bin/fedecho", "simulate", "camus_lv_seg_unet", "--size", "full",
                              "--arms", "pooled,fedavg-intensity", "train.lr=1e-3"])
    assert record["command"] == ("fedecho simulate camus_lv_seg_unet --size full --arms pooled,fedavg-intensity "
                                 "train.lr=1e-3")
    assert record["started"] == "2026-01-01T00:00:00+00:00" and record["machine"]["cpus"] >= 1
    assert record["machine"]["memory_gib"] > 0 and "gpu" in record["machine"]


def test_publish_names_the_file_by_experiment_and_size_and_drops_machine_paths(tmp_path):
    results = {"experiment": "camus_lv_seg_unet", "size": "full", "rows": [{"federated": 0.9}],
               "arms": {"pooled": {"run_dir": "/home/someone/runs/camus/pooled", "cpu_seconds": 3.0}},
               "provenance": {"commit": "abc"}}
    path = publish(results, tmp_path / "results")
    assert path == tmp_path / "results" / "camus_lv_seg_unet.json"
    saved = json.loads(path.read_text())
    assert saved["arms"]["pooled"]["run_dir"] == "pooled" and saved["rows"] == results["rows"]
    assert results["arms"]["pooled"]["run_dir"].startswith("/home")  # the caller's payload is untouched
    assert publish({**results, "size": "smoke"}, tmp_path / "results").name == "camus_lv_seg_unet-smoke.json"
