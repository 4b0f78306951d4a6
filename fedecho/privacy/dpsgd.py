"""Sample-level DP-SGD on a site (Abadi et al. 2016) with opacus: per-sample clipping and Gaussian
noise on the site's optimiser, Poisson-sampled batches, and one accountant for the whole run.

:class:`SitePrivacy` is built with the site's accountant state (from its per-round snapshot), so ε
keeps composing across rounds, phases and restarts. Noise and Poisson sampling draw from generators
reseeded every epoch from the site's secret (:mod:`fedecho.privacy.secret`): the coordinator cannot
recompute them. opacus' ``secure_mode=True`` would instead draw from a CSPRNG (torchcsprng) and
sample noise robustly to floating-point attacks; torchcsprng is not installable here (and is
archived upstream), so secure mode stays off — see the README's Privacy section.

The unit of ε is the patient by default: the loader samples whole patients and the accountant keeps
a patient ledger (:mod:`fedecho.privacy.accountant`); ``privacy.unit=example`` samples examples.

The Poisson loader is FedEcho's own (:func:`poisson_loader`): opacus' empty-batch builder copies
the first batch's structure and fails on the task batches' 0-d ``num_skipped`` tensor and lists of
ids. An empty batch here is ``{}``; the trainer then takes a noise-only step, which clears the
previous step's gradients first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from fedecho.config.federation import PrivacyConfig
from fedecho.privacy.accountant import SiteAccountant
from fedecho.privacy.compat import check_sample_dp
from fedecho.privacy.secret import SiteSecret
from fedecho.privacy.unit import patient_groups

__all__ = ["PatientPoissonSampler", "SitePrivacy", "poisson_loader"]

log = logging.getLogger(__name__)


class _EmptySafeCollate:
    """The dataset's collate for non-empty Poisson batches, ``{}`` for an empty one."""

    def __init__(self, collate: Callable | None) -> None:
        self.collate = collate

    def __call__(self, examples: Sequence[Any]) -> Any:
        if len(examples) == 0:
            return {}
        return self.collate(examples) if self.collate is not None else examples


class PatientPoissonSampler:
    """Batches of whole patients: each step draws every patient with probability ``sample_rate``
    (from ``generator``) and yields the indices of all of the drawn patients' examples."""

    def __init__(self, groups: Sequence[Sequence[int]], *, sample_rate: float, steps: int,
                 generator: torch.Generator) -> None:
        self.groups = [list(g) for g in groups]
        self.sample_rate = sample_rate
        self.steps = steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            drawn = torch.rand(len(self.groups), generator=self.generator) < self.sample_rate
            yield [i for group, take in zip(self.groups, drawn.tolist(), strict=True) if take for i in group]


def poisson_loader(loader: DataLoader, generator: torch.Generator,
                   groups: Sequence[Sequence[int]] | None = None) -> DataLoader:
    """A DataLoader over ``loader``'s dataset with len(loader) Poisson-sampled steps per pass at rate
    q = 1/len(loader): each example (``groups=None``, opacus' UniformWithReplacementSampler) or each
    group of example indices (a patient's examples, all or none) is drawn with probability q."""
    steps = len(loader)
    if groups is None:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        sampler = UniformWithReplacementSampler(num_samples=len(loader.dataset), sample_rate=1 / steps,
                                                generator=generator, steps=steps)
    else:
        sampler = PatientPoissonSampler(groups, sample_rate=1 / steps, steps=steps, generator=generator)
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=_EmptySafeCollate(loader.collate_fn),
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      persistent_workers=loader.num_workers > 0)


class SitePrivacy:
    """DP-SGD state of one site: its accountant, the unit of ε and the secret-seeded generators."""

    def __init__(self, cfg: PrivacyConfig, state: Mapping[str, Any] | None = None,
                 secret: SiteSecret | None = None) -> None:
        if cfg.mode != "sample":
            raise ValueError(f"SitePrivacy is sample-level DP-SGD; privacy.mode is {cfg.mode!r}")
        self.cfg = cfg
        self.accountant = SiteAccountant(state)
        self.secret = secret or SiteSecret.ephemeral()
        self.sample_rate: float | None = None
        #: Examples of the patient with the most examples at this site (1 for ``unit=example``):
        #: with patient sampling, one patient moves a step's gradient sum by at most this × C.
        self.group_size = 1
        self._attached: set[int] = set()
        self._noise: torch.Generator | None = None
        self._sampler = torch.Generator()

    def attach(self, trainer: Any, loader: DataLoader, *, per_sample_loss: bool, what: str) -> DataLoader:
        """Make ``trainer``'s optimiser private (once per trainer) and return a Poisson-sampled loader."""
        from opacus import PrivacyEngine

        groups = None
        if self.cfg.unit == "patient":
            groups = patient_groups(loader.dataset, what=what)
            self.group_size = max(len(g) for g in groups)
        dp_loader = poisson_loader(loader, self._sampler, groups)
        self.sample_rate = 1 / len(dp_loader)
        if id(trainer) in self._attached:
            return dp_loader
        check_sample_dp(trainer.learner, per_sample_loss=per_sample_loss, what=what)
        self._noise = torch.Generator(device=trainer.device)
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant = self.accountant.accountant  # the site's one accountant, not a fresh one
        _, optimizer, _ = engine.make_private(
            module=trainer.learner,
            optimizer=trainer.optimizer,
            data_loader=dp_loader,
            noise_multiplier=self.cfg.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            poisson_sampling=False,  # dp_loader already samples (Poisson) and handles empty batches
            noise_generator=self._noise,
        )
        count_example = optimizer.step_hook

        def count(opt: Any) -> None:  # every private step, in both ledgers
            count_example(opt)
            if self.cfg.unit == "patient":
                self.accountant.patient_step(noise_multiplier=opt.noise_multiplier, sample_rate=self.sample_rate,
                                             group_size=self.group_size)

        optimizer.attach_step_hook(count)
        trainer.optimizer = optimizer
        trainer.empty_batch_step = self._noise_only_step
        self._attached.add(id(trainer))
        return dp_loader

    def reseed(self, *where: object) -> None:
        """Seed noise and sampling for one epoch from the site's secret and ``where``
        (phase, round, epoch, step)."""
        self.secret.reseed(self._sampler, "sampler", *where)
        if self._noise is not None:
            self.secret.reseed(self._noise, "noise", *where)

    @staticmethod
    def _noise_only_step(trainer: Any) -> None:
        """A Poisson batch can be empty: the step still happens (noise only) and is accounted.
        The previous step's gradients are cleared first (else they would be applied again)."""
        trainer.optimizer.zero_grad(set_to_none=True)
        for p in trainer.learner.trainable_parameters():
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    @property
    def unit(self) -> str:
        return self.cfg.unit

    def epsilon(self) -> float:
        """ε spent so far in the configured unit (patient or example)."""
        return self.accountant.epsilon(self.cfg.delta, self.cfg.unit)

    def epsilon_example(self) -> float:
        return self.accountant.epsilon(self.cfg.delta)

    def budget_allows(self, steps: int, sample_rate: float) -> tuple[bool, str]:
        """Whether ``steps`` more steps keep ε (in the configured unit) finite and within
        ``target_epsilon``; else ``(False, why)``."""
        ahead = self.accountant.epsilon_after(self.cfg.delta, noise_multiplier=self.cfg.noise_multiplier,
                                              sample_rate=sample_rate, steps=steps, unit=self.cfg.unit,
                                              group_size=self.group_size)
        if not math.isfinite(ahead):
            why = (f"epsilon per {self.cfg.unit} cannot be bounded at delta {self.cfg.delta:g} (noise multiplier "
                   f"{self.cfg.noise_multiplier:g}, up to {self.group_size} examples per {self.cfg.unit}); raise "
                   f"privacy.noise_multiplier")
        elif self.cfg.target_epsilon is not None and ahead > self.cfg.target_epsilon:
            why = (f"{steps} more steps would spend epsilon {ahead:.3f} per {self.cfg.unit} > target "
                   f"{self.cfg.target_epsilon:.3f}")
        else:
            return True, ""
        log.warning("privacy budget: %s; not training", why)
        return False, why

    def state_dict(self) -> dict[str, Any]:
        return self.accountant.state_dict()
