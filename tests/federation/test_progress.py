"""What a person sees during a run: one line per phase and round, a final table, Flower's logs in
the run directory (the terminal stays short), ``--verbose`` shows them too."""

from __future__ import annotations

import logging
import sys

import pytest

from fedecho.federation import progress
from fedecho.federation.history import RoundRecord


def test_round_line_shows_sites_key_metric_central_time_and_rejections():
    record = RoundRecord(phase="adapt:view", round=2, train={"loss": 0.7}, evaluate={"loss": 0.5, "accuracy": 0.8125},
                         central={"accuracy": 0.75}, sites_train={"site 0": {}, "site 1": {}},
                         sites_evaluate={"site 0": {}, "site 1": {}}, rejected={"site 2": "NaN"}, seconds=4.12)
    line = progress.round_line(record, rounds=5, sites=3)
    assert "adapt:view" in line and "round 2/5" in line and "2/3 sites" in line
    assert "accuracy 0.8125 (central 0.75)" in line and "4.1 s" in line and "rejected: site 2" in line
    assert "loss" not in line  # accuracy outranks loss as the key metric
    pretrain = RoundRecord(phase="pretrain", round=1, train={"train-loss": 4.25, "seconds": 3.0}, sites_train={"a": {}})
    assert "train-loss 4.25" in progress.round_line(pretrain, rounds=1, sites=1)


def test_final_table_puts_federated_next_to_central_per_task():
    records = [RoundRecord(phase="adapt:lv_seg", round=1, evaluate={"dice": 0.5}),
               RoundRecord(phase="evaluate:lv_seg", round=1, evaluate={"dice": 0.875, "iou": 0.75, "loss": 0.3},
                           central={"dice": 0.8}),
               RoundRecord(phase="evaluate:view", round=1, evaluate={"accuracy": 0.5})]
    assert progress.final_table(records) == [
        "| task | metric | federated | central |", "|---|---|---|---|",
        "| lv_seg | dice | 0.8750 | 0.8000 |", "| lv_seg | iou | 0.7500 | - |",
        "| view | accuracy | 0.5000 | - |",
    ]
    assert progress.final_table(records[:1]) == []


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_console_sends_prints_and_log_handlers_to_the_file(tmp_path, capsys, verbose):
    flwr = logging.getLogger("flwr")
    handler = logging.StreamHandler(sys.stderr)
    flwr.addHandler(handler)
    try:
        with progress.quiet_console(tmp_path / "run" / "flower.log", verbose=verbose) as path:
            print("a raw metric dictionary {'dice/lv_cavity': '9.1e-01'}")
            flwr.warning("flower says hello")
            progress.emit("round 1/1 shown")
    finally:
        flwr.removeHandler(handler)
    out, err = capsys.readouterr()
    text = path.read_text()
    assert "raw metric dictionary" in text and "flower says hello" in text and "round 1/1" not in text
    assert "round 1/1 shown" in out
    assert ("raw metric dictionary" in out) is verbose and "flower says hello" not in err
    print("after the run")  # restored
    assert "after the run" in capsys.readouterr().out


@pytest.mark.slow
def test_simulate_prints_a_short_progress_display_and_logs_flower_to_the_run_dir(tmp_path, capfd):
    from fedecho.cli.main import main

    run_dir = tmp_path / "run"
    tiny = ["data.synthetic_patients=12", "data.synthetic_image_size=64", "model.image_size=32",
            "task.image_size=[32,32]", "train.batch_size=8", "federation.num_sites=2",
            "federation.strategy.min_sites=1", "federation.adapt.rounds=2", f"federation.run_dir={run_dir}"]
    assert main(["simulate", "federated", "--cpus", "2", *tiny]) == 0
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) <= 20, out
    assert any("round 2/2" in line and "2/2 sites" in line for line in lines), out
    assert "| view | accuracy |" in out and "Flower's log" in out
    assert "'accuracy':" not in out  # Flower's raw metric dictionaries stay in the file
    log = (run_dir / "flower.log").read_text()
    assert "[ROUND" in log or "ServerApp" in log or "flwr" in log.lower(), log[-2000:]
