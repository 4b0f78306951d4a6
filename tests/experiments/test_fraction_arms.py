"""Which runs a label-fraction experiment starts when only some arms are asked for (``--arms``):
the asked-for arms, plus the one pretraining run of a setting whose later fractions are asked for —
never a setting nobody asked for."""

from __future__ import annotations

from pathlib import Path

from fedecho.experiments import load_experiment
from fedecho.experiments import runner


def test_only_the_asked_settings_pretrain(tmp_path, monkeypatch):
    exp = load_experiment("camus_ssl_lora")
    started: list[str] = []

    def fake_simulate(exp, overrides, run_dir: Path, **kwargs):
        started.append(run_dir.name)
        (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
        return 1.0, 1.0

    monkeypatch.setattr(runner, "_simulate", fake_simulate)
    monkeypatch.setattr(runner, "_export_pretrained", lambda exp, overrides, run_dir: str(run_dir / "encoder.pt"))
    monkeypatch.setattr(runner, "collect_arm", lambda exp, name, run_dir, **kwargs: name)
    only = ["simclr-federated-0.1", "simclr-federated-1", "random-federated-1"]
    results = runner._fraction_arms(exp, "full", tmp_path, data_root=str(tmp_path), extra=[], cpus=1,
                                    cpus_per_site=1.0, only=only)
    assert sorted(results) == sorted(only)
    # simclr, federated: pretrained once in the first fraction's run, which is not itself asked for
    assert started == ["simclr-federated-0.01", "simclr-federated-0.1", "simclr-federated-1", "random-federated-1"]
