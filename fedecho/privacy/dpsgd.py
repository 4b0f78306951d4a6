"""Sample-level DP-SGD on a site (Abadi et al. 2016) with opacus: per-sample clipping and Gaussian
noise on the site's optimiser, Poisson-sampled batches, and one accountant for the whole run.

:class:`SitePrivacy` is created once per site process and keeps the accountant; its state goes into
the site's checkpoint, so ε keeps composing when the site process restarts. opacus'
``secure_mode=True`` needs torchcsprng, which is not installable here: noise comes from torch's
default generator, which is what opacus itself does without secure mode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from fedecho.config.federation import PrivacyConfig
from fedecho.privacy.accountant import SiteAccountant
from fedecho.privacy.compat import check_sample_dp

__all__ = ["SitePrivacy"]

log = logging.getLogger(__name__)


class SitePrivacy:
    def __init__(self, cfg: PrivacyConfig, state: Mapping[str, Any] | None = None) -> None:
        if cfg.mode != "sample":
            raise ValueError(f"SitePrivacy is sample-level DP-SGD; privacy.mode is {cfg.mode!r}")
        self.cfg = cfg
        self.accountant = SiteAccountant(state)
        self.sample_rate: float | None = None
        self._attached: set[int] = set()

    def attach(self, trainer: Any, loader: DataLoader, *, per_sample_loss: bool, what: str) -> DataLoader:
        """Make ``trainer``'s optimiser private (once per trainer) and return a Poisson-sampled loader."""
        from opacus import PrivacyEngine
        from opacus.data_loader import DPDataLoader

        if id(trainer) in self._attached:
            dp_loader = DPDataLoader.from_data_loader(loader)
            self.sample_rate = dp_loader.sample_rate
            return dp_loader
        check_sample_dp(trainer.learner, per_sample_loss=per_sample_loss, what=what)
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant = self.accountant.accountant  # the site's one accountant, not a fresh one
        _, optimizer, dp_loader = engine.make_private(
            module=trainer.learner,
            optimizer=trainer.optimizer,
            data_loader=loader,
            noise_multiplier=self.cfg.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            poisson_sampling=True,
        )
        trainer.optimizer = optimizer
        trainer.empty_batch_step = self._noise_only_step
        self._attached.add(id(trainer))
        self.sample_rate = dp_loader.sample_rate
        return dp_loader

    @staticmethod
    def _noise_only_step(trainer: Any) -> None:
        """A Poisson batch can be empty: the step still happens (noise only) and is accounted."""
        for p in trainer.learner.trainable_parameters():
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.cfg.delta)

    def budget_allows(self, steps: int, sample_rate: float) -> bool:
        """Whether ``steps`` more steps keep ε within ``target_epsilon`` (always, without a target)."""
        if self.cfg.target_epsilon is None:
            return True
        ahead = self.accountant.epsilon_after(self.cfg.delta, noise_multiplier=self.cfg.noise_multiplier,
                                              sample_rate=sample_rate, steps=steps)
        if ahead > self.cfg.target_epsilon:
            log.warning("privacy budget: %d more steps would spend epsilon %.3f > target %.3f; not training",
                        steps, ahead, self.cfg.target_epsilon)
            return False
        return True

    def state_dict(self) -> dict[str, Any]:
        return self.accountant.state_dict()
