"""DP-SGD training paths of issue 12: empty Poisson batches of real task batches through the DP
loader (batch 1-2, many steps), the noise-only step clears old gradients, FedProx's proximal
gradient survives DP-SGD (closed form on a linear model), patient-level ε (patient sampling)."""

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
from fedecho.privacy import SitePrivacy, examples_per_patient
from fedecho.tasks.dataset import collate_examples


class Linear(Learner):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1)

    def is_shared(self, name):
        return True

    def loss(self, batch):
        return (self.net(batch["x"]).squeeze(-1) - batch["y"]).pow(2).mean(), {}


class TaskLike(Dataset):
    """Examples shaped like FedEcho's task examples: tensors plus an id string; batches made by
    the real ``collate_examples`` (0-d ``num_skipped`` tensor, lists of ids)."""

    def __init__(self, n=6, per_patient=2):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.per_patient = per_patient

    def patient_ids(self):
        return [f"p{i // self.per_patient}" for i in range(len(self.x))]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.x[i].sum(), "item_id": f"item{i}"}


def trainer_for(learner, lr=0.1):
    cfg = TrainConfig(epochs=1, lr=lr, optimizer="sgd", schedule="constant", weight_decay=0.0, progress=False)
    return Trainer(learner, cfg, total_steps=10_000)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_dp_rounds_with_tiny_batches_survive_empty_poisson_batches(batch_size):
    torch.manual_seed(0)
    dataset = TaskLike(6)
    trainer = trainer_for(Linear())
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0))
    loader = privacy.attach(trainer, DataLoader(dataset, batch_size=batch_size, collate_fn=collate_examples),
                            per_sample_loss=True, what="test")
    empty = nonempty = 0
    for round_ in range(25):
        privacy.reseed("adapt:view", round_, 0, trainer.global_step)
        for batch in loader:  # the loader DP really uses
            if batch:
                assert batch["num_skipped"].ndim == 0 and isinstance(batch["item_id"], list)
                nonempty += 1
            else:
                empty += 1
        privacy.reseed("adapt:view", round_, 0, trainer.global_step)
        trainer.train_epoch(loader)  # a round whose batches were all empty takes its noise-only steps
    assert empty > 0 and nonempty > 0
    assert privacy.accountant.steps == trainer.global_step == 25 * len(loader)
    assert all(torch.isfinite(p).all() for p in trainer.learner.parameters())


def test_noise_only_step_does_not_apply_the_previous_gradient_again():
    dataset = TaskLike(4)
    trainer = trainer_for(Linear())
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=0.0, max_grad_norm=10.0))
    privacy.attach(trainer, DataLoader(dataset, batch_size=4, collate_fn=collate_examples),
                   per_sample_loss=True, what="test")
    seen = []
    trainer.optimizer.original_optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.clone() for p in trainer.learner.parameters()]))
    trainer.train_epoch([collate_examples([dataset[i] for i in range(4)]), {}], max_steps=2)
    real, noise_only = seen
    assert any(g.abs().sum() > 0 for g in real)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in noise_only)  # no noise, no data: zero


def prox_run(mu, private, steps=3, lr=0.1):
    """A linear model whose data gradient is zero (no data term), displaced by d from the anchor:
    only FedProx's gradient moves it."""
    torch.manual_seed(0)

    class Still(Linear):
        def loss(self, batch):
            return 0.0 * self.net(batch["x"]).sum(), {}

    trainer = trainer_for(Still(), lr=lr)
    if private:
        # no noise, a tiny clipping norm: the proximal gradient (|mu d| >> 0.01) must not be clipped
        privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=0.0, max_grad_norm=0.01))
        privacy.attach(trainer, DataLoader(TaskLike(4), batch_size=4, collate_fn=collate_examples),
                       per_sample_loss=True, what="test")
    trainer.set_proximal_anchor(mu)
    anchor = [p.detach().clone() for p in trainer.learner.parameters()]
    with torch.no_grad():
        for p in trainer.learner.parameters():
            p.add_(1.0)  # d = 1 on every coordinate
    batch = collate_examples([TaskLike(4)[i] for i in range(4)])
    trainer.train_epoch([batch] * steps)
    return [p.detach() - a for p, a in zip(trainer.learner.parameters(), anchor, strict=True)]


def closed_form_displacement(mu, steps, lr=0.1, momentum=0.9):
    """SGD with momentum on f(w) = mu/2 (w - a)^2 from d0 = 1: g = mu d, v = m v + g, d -= lr v."""
    d, v = 1.0, 0.0
    for _ in range(steps):
        v = momentum * v + mu * d
        d -= lr * v
    return d


@pytest.mark.parametrize("private", [False, True])
def test_fedprox_proximal_gradient_matches_the_closed_form_with_and_without_dp(private):
    for mu in (0.0, 10.0):
        expected = closed_form_displacement(mu, 3)
        for d in prox_run(mu, private):
            assert torch.allclose(d, torch.full_like(d, expected), atol=1e-5), (mu, private, d, expected)
    assert closed_form_displacement(10.0, 3) != pytest.approx(1.0)


def test_fedprox_mu_changes_a_noisy_dp_update():
    def run(mu):
        torch.manual_seed(0)
        trainer = trainer_for(Linear())
        privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0))
        loader = privacy.attach(trainer, DataLoader(TaskLike(6), batch_size=2, collate_fn=collate_examples),
                                per_sample_loss=True, what="test")
        privacy.secret = type(privacy.secret)(b"k" * 32)
        trainer.set_proximal_anchor(mu)
        for epoch in range(3):
            privacy.reseed("p", 1, epoch, trainer.global_step)
            trainer.train_epoch(loader)
        return torch.cat([p.detach().flatten() for p in trainer.learner.parameters()])

    assert torch.equal(run(0.0), run(0.0))  # same secret, same draws: the difference below is mu's
    assert not torch.allclose(run(0.0), run(10.0))


def test_examples_per_patient_counts_the_largest_patient():
    assert examples_per_patient(TaskLike(6, per_patient=3), what="t") == 3
    assert examples_per_patient(TaskLike(5, per_patient=2), what="t") == 2
    with pytest.raises(ValueError, match="privacy.unit=example"):
        examples_per_patient(torch.utils.data.TensorDataset(torch.zeros(3)), what="t")


def rdp_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of one Poisson-subsampled Gaussian step at integer order alpha (Mironov, Talwar, Zhang
    2019): log(sum_j C(a,j) (1-q)^(a-j) q^j exp((j^2-j)/(2 sigma^2))) / (a-1)."""
    terms = [math.lgamma(alpha + 1) - math.lgamma(j + 1) - math.lgamma(alpha - j + 1)
             + (alpha - j) * math.log1p(-q) + j * math.log(q) + (j * j - j) / (2 * sigma**2)
             for j in range(alpha + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def reference_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """Integer orders 2..63, RDP -> (epsilon, delta) as in Balle et al. 2020 (Theorem 21)."""
    return min(steps * rdp_gaussian(q, sigma, a) - (math.log(delta) + math.log(a)) / (a - 1)
               + math.log((a - 1) / a) for a in range(2, 64))


def test_patient_epsilon_with_several_examples_per_patient_matches_the_closed_form():
    """4 examples per patient, patients sampled whole at q, examples clipped to C, noise σC: a
    patient moves the sum by <= 4C, so its ε is the subsampled Gaussian's at σ/4."""
    sigma, delta, k = 2.0, 1e-5, 4
    dataset = TaskLike(16, per_patient=k)
    trainer = trainer_for(Linear())
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=sigma, max_grad_norm=1.0, delta=delta))
    loader = privacy.attach(trainer, DataLoader(dataset, batch_size=4, collate_fn=collate_examples),
                            per_sample_loss=True, what="test")
    assert privacy.group_size == k
    drawn = 0
    for epoch in range(3):
        privacy.reseed("adapt:view", 1, epoch, trainer.global_step)
        for batch in loader:  # whole patients only: ids come in complete groups of k
            ids = {int(i.removeprefix("item")) for i in batch.get("item_id", [])}
            assert ids == {p * k + j for p in {i // k for i in ids} for j in range(k)}
            drawn += len(ids)
        privacy.reseed("adapt:view", 1, epoch, trainer.global_step)
        try:
            trainer.train_epoch(loader)
        except ValueError:  # every batch of the epoch empty: steps taken, no loss
            pass
    assert drawn > 0
    steps, q = trainer.global_step, privacy.sample_rate
    acc = privacy.accountant
    ours_patient = acc.patients.get_epsilon(delta=delta, alphas=list(range(2, 64)))
    ours_example = acc.accountant.get_epsilon(delta=delta, alphas=list(range(2, 64)))
    assert ours_patient == pytest.approx(reference_epsilon(q, sigma / k, steps, delta), rel=1e-6)
    assert ours_example == pytest.approx(reference_epsilon(q, sigma, steps, delta), rel=1e-6)
    assert privacy.epsilon() > privacy.epsilon_example() > 0
    assert privacy.epsilon() <= ours_patient + 1e-9  # default orders include fractional ones


def test_example_unit_reports_the_example_epsilon():
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.1, max_grad_norm=1.0, unit="example"))
    trainer = trainer_for(Linear())
    loader = privacy.attach(trainer, DataLoader(TaskLike(8, per_patient=4), batch_size=2,
                                                collate_fn=collate_examples), per_sample_loss=True, what="test")
    trainer.train_epoch([collate_examples([TaskLike(8)[i] for i in range(2)])] * 3)
    assert privacy.group_size == 1 and len(loader) == 4
    assert privacy.epsilon() == privacy.epsilon_example() > 0


def test_unbounded_patient_epsilon_stops_training_with_a_clear_reason():
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=0.0, max_grad_norm=1.0))
    trainer = trainer_for(Linear())
    privacy.attach(trainer, DataLoader(TaskLike(40, per_patient=20), batch_size=20, collate_fn=collate_examples),
                   per_sample_loss=True, what="test")
    allowed, why = privacy.budget_allows(100, privacy.sample_rate)
    assert not allowed and "cannot be bounded" in why and "noise_multiplier" in why
    assert math.isfinite(privacy.epsilon())


def test_local_steps_count_noise_only_steps():
    """``max_steps`` (federation local_steps) bounds every private step, empty batches included:
    the budget look-ahead assumes exactly that many."""
    dataset = TaskLike(4)
    trainer = trainer_for(Linear())
    privacy = SitePrivacy(PrivacyConfig(mode="sample", noise_multiplier=1.0, max_grad_norm=1.0))
    privacy.attach(trainer, DataLoader(dataset, batch_size=2, collate_fn=collate_examples),
                   per_sample_loss=True, what="test")
    real = collate_examples([dataset[i] for i in range(2)])
    trainer.train_epoch([{}, real, {}, real, real], max_steps=3)
    assert trainer.global_step == privacy.accountant.steps == 3
