"""Sample-level DP-SGD: accounting against an independent RDP computation, persistence across
restarts, budget stop, refusal of sample-coupling losses, and 'no noise, no clipping = plain SGD'."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedecho.config.federation import PrivacyConfig
from fedecho.config.train import TrainConfig
from fedecho.engine.learner import Learner
from fedecho.engine.trainer import Trainer
from fedecho.privacy import SiteAccountant, SitePrivacy, check_sample_dp


def rdp_subsampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of one Poisson-subsampled Gaussian step at integer order alpha (Mironov, Talwar, Zhang
    2019, eq. for integer alpha): log(sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 sigma^2))) / (a-1)."""
    terms = [
        math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
        for k in range(alpha + 1)
    ]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def reference_epsilon(q: float, sigma: float, steps: int, delta: float, orders=range(2, 64)) -> float:
    """(epsilon, delta) from RDP with the conversion of Balle et al. 2020 (Theorem 21)."""
    best = math.inf
    for a in orders:
        rdp = steps * rdp_subsampled_gaussian(q, sigma, a)
        eps = rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        best = min(best, eps)
    return best


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 1.1, 1000), (0.1, 2.0, 50), (0.25, 0.8, 12)])
def test_epsilon_matches_an_independent_rdp_computation(q, sigma, steps):
    accountant = SiteAccountant({"history": [[sigma, q, steps]]})
    ours = accountant.accountant.get_epsilon(delta=1e-5, alphas=list(range(2, 64)))
    assert ours == pytest.approx(reference_epsilon(q, sigma, steps, 1e-5), rel=1e-6)
    # the default orders include fractional ones, which can only tighten the bound
    assert accountant.epsilon(1e-5) <= ours + 1e-9


class Regression(Learner):
    def __init__(self, norm: nn.Module | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), norm or nn.Identity(), nn.Tanh(), nn.Linear(8, 1))

    def is_shared(self, name):
        return True

    def loss(self, batch):
        return (self.net(batch["x"]).squeeze(-1) - batch["y"]).pow(2).mean(), {}


class Points(Dataset):
    """n points; ``per_patient`` consecutive points belong to one patient."""

    def __init__(self, n=64, seed=0, per_patient=1):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1)
        self.per_patient = per_patient

    def patient_ids(self):
        return [f"patient{i // self.per_patient}" for i in range(len(self.x))]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def make_trainer(seed=0, lr=0.05):
    torch.manual_seed(seed)
    cfg = TrainConfig(epochs=1, lr=lr, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
    return Trainer(Regression(), cfg, total_steps=1000)


def test_no_noise_and_no_clipping_equals_plain_sgd():
    dataset = Points(16)
    batch = {"x": dataset.x, "y": dataset.y}
    plain = make_trainer()
    private = make_trainer()
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=0.0, max_grad_norm=1e6))
    # one batch of the full dataset: expected Poisson batch size = 16 = the batch used below
    privacy.attach(private, DataLoader(dataset, batch_size=16), per_sample_loss=True, what="test")
    for trainer in (plain, private):
        trainer.train_epoch([batch])
    for a, b in zip(plain.learner.parameters(), private.learner.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert privacy.accountant.steps == 1


def test_clipping_and_noise_change_the_update_and_epsilon_grows_per_round():
    dataset = Points(64)
    cfg = PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=0.1)
    privacy = SitePrivacy(cfg)
    trainer = make_trainer()
    loader = privacy.attach(trainer, DataLoader(dataset, batch_size=8), per_sample_loss=True, what="test")
    eps = []
    for _round in range(3):
        trainer.train_epoch(loader)
        eps.append(privacy.epsilon())
    assert 0 < eps[0] < eps[1] < eps[2]
    assert privacy.accountant.steps == 3 * len(loader)
    assert privacy.sample_rate == pytest.approx(1 / 8)


def test_epsilon_composes_across_a_site_restart():
    cfg = PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0)
    dataset = Points(32)
    # uninterrupted: two rounds with one accountant
    once = SitePrivacy(cfg)
    trainer = make_trainer()
    loader = once.attach(trainer, DataLoader(dataset, batch_size=8), per_sample_loss=True, what="test")
    trainer.train_epoch(loader)
    saved = once.state_dict()
    trainer.train_epoch(loader)
    # restart after round one: a new process restores the accountant from the checkpoint
    restarted = SitePrivacy(cfg, state=saved)
    trainer2 = make_trainer()
    loader2 = restarted.attach(trainer2, DataLoader(dataset, batch_size=8), per_sample_loss=True, what="test")
    trainer2.train_epoch(loader2)
    assert restarted.epsilon() == pytest.approx(once.epsilon(), rel=1e-9)
    assert restarted.epsilon() > SitePrivacy(cfg, state=saved).epsilon()


def test_budget_stops_training_before_epsilon_exceeds_the_target():
    cfg = PrivacyConfig(mode="sample", noise_multiplier=2.0, max_grad_norm=1.0, target_epsilon=3.0)
    privacy = SitePrivacy(cfg)
    for steps in (1, 10, 100, 1000, 10_000):
        ahead = privacy.accountant.epsilon_after(cfg.delta, noise_multiplier=2.0, sample_rate=0.1, steps=steps)
        assert privacy.budget_allows(steps, 0.1)[0] == (ahead <= 3.0)
    assert privacy.budget_allows(1, 0.1)[0] and not privacy.budget_allows(10_000, 0.1)[0]
    privacy.accountant.accountant.history.append((2.0, 0.1, 400))
    allowed, why = privacy.budget_allows(1000, 0.1)
    assert not allowed and "> target 3.000" in why


def test_empty_poisson_batch_still_takes_a_noise_step():
    trainer = make_trainer()
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0))
    privacy.attach(trainer, DataLoader(Points(16), batch_size=4), per_sample_loss=True, what="test")
    before = [p.detach().clone() for p in trainer.learner.parameters()]
    result = trainer.train_epoch([{}])  # what the DP loader yields for an empty Poisson batch
    assert (result.steps, result.examples) == (1, 0)  # an epoch of empty batches is not an error under DP
    assert privacy.accountant.steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.learner.parameters(), strict=True))


def test_contrastive_losses_are_refused_with_the_alternative():
    with pytest.raises(ValueError, match="use privacy.mode=site"):
        check_sample_dp(Regression(), per_sample_loss=False, what="simclr pretraining")


def test_batchnorm_is_refused_and_frozen_batchnorm_in_train_mode_too():
    with pytest.raises(ValueError, match="model.norm=group"):
        check_sample_dp(Regression(nn.BatchNorm1d(8)), per_sample_loss=True, what="view adapter")
    frozen = Regression(nn.BatchNorm1d(8))
    for p in frozen.net[1].parameters():
        p.requires_grad_(False)
    frozen.train()
    with pytest.raises(ValueError, match="mix samples even when frozen"):
        check_sample_dp(frozen, per_sample_loss=True, what="view adapter")
    frozen.net[1].eval()
    check_sample_dp(frozen, per_sample_loss=True, what="view adapter")
