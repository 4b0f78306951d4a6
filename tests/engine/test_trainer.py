"""The training engine on a tiny closed-form problem (no data readers or backbones involved)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedecho.config.train import TrainConfig
from fedecho.engine.checkpoint import load_checkpoint
from fedecho.engine.learner import Learner
from fedecho.engine.schedule import lr_factor
from fedecho.engine.trainer import Trainer
from fedecho.report.tensorboard import ScalarWriter, read_scalars


class LinearRegression(Learner):
    """y = w·x + b with MSE; 'w' is shared, 'b' stays local. Metric: MAE (lower is better)."""

    selection = ("mae", "min")

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.w = nn.Linear(dim, 1, bias=False)
        self.b = nn.Parameter(torch.zeros(1))

    def is_shared(self, name: str) -> bool:
        return name.startswith("w.")

    def predict(self, batch):
        return self.w(batch["x"]).squeeze(-1) + self.b

    def loss(self, batch):
        return (self.predict(batch) - batch["y"]).pow(2).mean(), {}

    def metrics(self, outputs, batch):
        return {"mae": float((outputs - batch["y"]).abs().mean())}


def make_loader(n=64, batch=16, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + noise * torch.randn(n, generator=g)
    return [{"x": x[i : i + batch], "y": y[i : i + batch]} for i in range(0, n, batch)]


def test_training_reduces_loss_and_fits_the_closed_form_solution(tmp_path):
    torch.manual_seed(0)
    learner = LinearRegression()
    cfg = TrainConfig(epochs=60, lr=0.05, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
    loader = make_loader()
    trainer = Trainer(learner, cfg, total_steps=60 * len(loader))
    first = trainer.train_epoch(loader).loss
    result = trainer.fit(loader, loader)
    assert result.history[-1]["train_loss"] < first / 100
    assert torch.allclose(learner.w.weight.detach(), torch.tensor([[1.0, -2.0, 0.5]]), atol=1e-2)
    assert learner.b.item() == pytest.approx(0.3, abs=1e-2)
    assert result.best_epoch is not None and result.best_metric < 0.02


def test_fedprox_gradient_matches_closed_form():
    learner = LinearRegression()
    cfg = TrainConfig(epochs=1, lr=0.1, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
    trainer = Trainer(learner, cfg, total_steps=10)
    trainer.set_proximal_anchor(0.5)
    with torch.no_grad():
        learner.w.weight.add_(torch.tensor([[1.0, 2.0, 2.0]]))  # w - w_global = (1, 2, 2)
        learner.b.add_(100.0)  # local tensor: not in the proximal term
    for p in learner.parameters():
        p.grad = torch.zeros_like(p)
    trainer._add_proximal_gradient(trainer.optimizer, (), {})  # grad of mu/2 ||w - w_global||^2
    assert torch.allclose(learner.w.weight.grad, 0.5 * torch.tensor([[1.0, 2.0, 2.0]]))
    assert torch.equal(learner.b.grad, torch.zeros_like(learner.b))
    trainer.set_proximal_anchor(0.0)
    assert not trainer._anchor


def test_fedprox_pulls_towards_the_anchor():
    loader = make_loader()
    distances = {}
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        learner = LinearRegression()
        start = learner.w.weight.detach().clone()
        cfg = TrainConfig(epochs=1, lr=0.02, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
        trainer = Trainer(learner, cfg, total_steps=100)
        trainer.set_proximal_anchor(mu)
        for _ in range(5):
            trainer.train_epoch(loader)
        distances[mu] = float((learner.w.weight.detach() - start).norm())
    assert distances[10.0] < 0.5 * distances[0.0]


class ScriptedMetric(LinearRegression):
    """Validation MAE follows a fixed script, so the best epoch is known in advance."""

    def __init__(self, script, direction):
        super().__init__()
        self.script = list(script)
        self.selection = ("mae", direction)

    def metrics(self, outputs, batch):
        return {"mae": self.script.pop(0)}


@pytest.mark.parametrize("direction,best_epoch", [("min", 2), ("max", 4)])
def test_best_checkpoint_follows_the_metric_direction_and_restores(tmp_path, direction, best_epoch):
    # The Segformer seed kept the checkpoint with the *highest* MAE; here "min" must pick epoch 2.
    torch.manual_seed(0)
    learner = ScriptedMetric([3.0, 1.0, 2.0, 4.0], direction)
    cfg = TrainConfig(epochs=4, lr=0.05, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
    loader = make_loader()
    trainer = Trainer(learner, cfg, total_steps=100)
    weights = []
    original = trainer.train_epoch

    def recording_epoch(*args, **kwargs):
        result = original(*args, **kwargs)
        weights.append(learner.w.weight.detach().clone())
        return result

    trainer.train_epoch = recording_epoch
    result = trainer.fit(loader, loader, checkpoint_dir=tmp_path)
    assert result.best_epoch == best_epoch and result.best_metric == {"min": 1.0, "max": 4.0}[direction]
    payload = load_checkpoint(tmp_path / "best.pt")
    assert payload["epoch"] == best_epoch
    restored = Trainer(LinearRegression(), cfg, total_steps=100)
    load_checkpoint(tmp_path / "best.pt", restored)
    assert torch.equal(restored.learner.w.weight, weights[best_epoch - 1])
    assert restored.global_step == best_epoch * len(loader)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4


def test_diverging_training_raises_with_advice():
    learner = LinearRegression()
    cfg = TrainConfig(epochs=1, lr=50.0, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
    trainer = Trainer(learner, cfg, total_steps=100)
    with pytest.raises(FloatingPointError, match="lower train.lr"):
        for _ in range(20):
            trainer.train_epoch(make_loader())


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="best.pt is unreadable"):
        load_checkpoint(bad)


def test_early_stopping_stops_when_the_metric_stalls():
    learner = ScriptedMetric([1.0, 0.5, 0.7, 0.6, 0.1] + [0.01] * 45, "min")
    cfg = TrainConfig(epochs=50, lr=0.01, optimizer="sgd", early_stopping_patience=2, progress=False)
    loader = make_loader()
    result = Trainer(learner, cfg, total_steps=1000).fit(loader, loader)
    assert result.stopped_early and len(result.history) == 4 and result.best_epoch == 2


def test_tensorboard_scalars_are_written_and_read_back(tmp_path):
    learner = LinearRegression()
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="sgd", log_every=1, progress=False)
    loader = make_loader()
    writer = ScalarWriter(tmp_path / "tb")
    Trainer(learner, cfg, total_steps=8, writer=writer).fit(loader, loader)
    writer.close()
    scalars = read_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 9))
    assert len(scalars["val/mae"]) == 2 and len(scalars["epoch/train_loss"]) == 2
    assert scalars["train/loss"][-1][1] < scalars["train/loss"][0][1]


def test_schedules_closed_form():
    assert lr_factor(0, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(50, 100, "poly") == pytest.approx(0.5**0.9)
    assert lr_factor(4, 100, "constant", warmup_steps=10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="valid: constant, cosine, poly"):
        lr_factor(0, 1, "step")


def test_shared_state_round_trip_and_strict_loading():
    a, b = LinearRegression(), LinearRegression()
    state = a.shared_state_dict()
    assert list(state) == ["w.weight"]
    b.load_shared_state_dict(state)
    assert torch.equal(a.w.weight, b.w.weight)
    with pytest.raises(ValueError, match="unexpected tensor 'extra'.*missing tensor 'w.weight'"):
        b.load_shared_state_dict({"extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'w.weight' has shape \(1, 4\), expected \(1, 3\)"):
        b.load_shared_state_dict({"w.weight": torch.zeros(1, 4)})


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="valid: adamw, adam, sgd"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="train.epochs must be >= 1"):
        TrainConfig(epochs=0)
    assert math.isfinite(TrainConfig().lr)
