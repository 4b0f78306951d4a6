"""Which runs a label-fraction experiment starts when only some arms are asked for (``--arms``):
the asked-for arms, plus the one pretraining run of a setting whose later fractions are asked for —
never a setting nobody asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_only_the_pretext_encoder_starts_from_the_pretext(tmp_path, monkeypatch):
    """``init=pretext`` (the pretext encoder arm): its runs, and only its runs, start from the
    experiment's supervised pretext checkpoint, which is trained only when such a run is asked for."""
    exp = load_experiment("camus_ssl_lora")
    assert runner.PRETEXT_INIT in exp.encoders["pretext"] and exp.pretext_for("full")
    started: dict[str, list[str]] = {}
    pretexts: list[Path] = []

    def fake_simulate(exp, overrides, run_dir: Path, **kwargs):
        started[run_dir.name] = overrides
        (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
        return 1.0, 1.0

    def fake_pretext(exp, size, out):
        pretexts.append(out)
        return out / "pretext" / "checkpoints" / "best.pt"

    monkeypatch.setattr(runner, "_simulate", fake_simulate)
    monkeypatch.setattr(runner, "_pretext", fake_pretext)
    monkeypatch.setattr(runner, "_export_pretrained", lambda exp, overrides, run_dir: str(run_dir / "encoder.pt"))
    monkeypatch.setattr(runner, "collect_arm", lambda exp, name, run_dir, **kwargs: name)
    kwargs = dict(data_root=str(tmp_path), extra=[], cpus=1, cpus_per_site=1.0)
    runner._fraction_arms(exp, "full", tmp_path, only=["random-federated-1", "simclr-pooled-1"], **kwargs)
    assert pretexts == [] and all(runner.PRETEXT_INIT not in o for o in started.values())
    assert not any(o.startswith("init=") for o in started["random-federated-1"])

    started.clear()
    runner._fraction_arms(exp, "full", tmp_path, only=["pretext-federated-0.1", "pretext-local2-1"], **kwargs)
    assert sorted(started) == ["pretext-federated-0.1", "pretext-local2-1"] and pretexts
    checkpoint = f"init={tmp_path / 'pretext' / 'checkpoints' / 'best.pt'}"
    for overrides in started.values():
        assert checkpoint in overrides and runner.PRETEXT_INIT not in overrides
        assert "federation.pretrain.rounds=0" in overrides


def test_pretext_encoder_without_a_pretext_is_refused(tmp_path):
    source = (Path(__file__).parents[2] / "simulations" / "camus_ssl_lora.yaml").read_text()
    path = tmp_path / "camus_ssl_lora.yaml"
    path.write_text(source.replace("  full20: *pretext_full\n", ""))
    with pytest.raises(ValueError, match="encoder 'pretext' starts from init=pretext but pretext has no entry for "
                                         "size\\(s\\) full20"):
        load_experiment(path)
