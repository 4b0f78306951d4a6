"""One training engine for every method and task: local epochs/steps, evaluation, best-checkpoint
selection, early stopping, TensorBoard scalars, a progress bar. No Flower here: the ClientApp calls
the same :class:`Trainer` for each round, keeping its optimiser and schedule as site state.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedecho.config.train import TrainConfig
from fedecho.engine.learner import Learner
from fedecho.engine.precision import autocast, input_channels_last, to_channels_last, use_channels_last
from fedecho.engine.schedule import build_scheduler

__all__ = ["EpochResult", "FitResult", "Trainer", "build_optimizer", "move_batch"]

log = logging.getLogger(__name__)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if isinstance(p, dict) or p.requires_grad]  # dicts: param groups
    if not params:
        raise ValueError("nothing to train: every parameter is frozen (check the adapter / probe settings)")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def move_batch(batch: Mapping[str, Any], device: torch.device, *, channels_last: bool = False) -> dict[str, Any]:
    """Tensors to ``device`` (non-blocking); ids and other Python values unchanged. A batch from a
    ``train.augment_on=device`` loader is augmented there (:func:`fedecho.transforms.batched.augment_batch`)."""
    from fedecho.transforms.batched import AUGMENT_KEY, augment_batch

    if AUGMENT_KEY in batch:
        out = augment_batch(batch, device)
    else:
        out = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
    if channels_last:
        out.update({k: input_channels_last(out[k]) for k in ("image", "clip") if isinstance(out.get(k), Tensor)})
    return out


@dataclass
class EpochResult:
    loss: float
    steps: int
    examples: int
    seconds: float
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    stopped_early: bool
    seconds: float


class Trainer:
    """Trains a :class:`Learner` with the optimiser and schedule of a :class:`TrainConfig`.

    ``total_steps`` spans the whole run (all epochs, or all federated rounds) so the schedule is
    continuous across calls. ``proximal_mu`` > 0 adds FedProx's gradient μ(w − w_global) over the
    learner's shared trainable tensors (Li et al. 2020), anchored by :meth:`set_proximal_anchor`. It
    is added to the gradient right before the base optimiser's update (a step pre-hook), i.e. after
    DP-SGD's clipping and noise: the term touches no data, and opacus' per-sample gradients would
    otherwise drop it.
    """

    def __init__(
        self,
        learner: Learner,
        cfg: TrainConfig,
        *,
        total_steps: int,
        device: torch.device | str = "cpu",
        writer: Any | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.learner = learner.to(self.device)
        self.channels_last = use_channels_last(cfg, self.device)
        if self.channels_last:
            to_channels_last(self.learner)
        groups = self.learner.optimizer_groups(cfg.lr, cfg.weight_decay) if optimizer is None else None
        self.optimizer = optimizer or build_optimizer(groups or self.learner.parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, max(1, total_steps), cfg.schedule, cfg.warmup_steps)
        self.writer = writer
        self.global_step = 0
        self.proximal_mu = 0.0
        self._anchor: list[tuple[torch.nn.Parameter, Tensor]] = []
        self.optimizer.register_step_pre_hook(self._add_proximal_gradient)
        #: Site-private state attached to training (the DP accountant): ``state_dict()`` +
        #: ``load_state_dict()``, saved with :meth:`site_state_dict`.
        self.private_state: Any = None
        #: Called instead of a training step when a batch is empty (DP-SGD's Poisson sampling
        #: can draw one; the step must still add noise and be accounted). None: skip the batch.
        self.empty_batch_step: Any = None

    # --- federation hooks ---------------------------------------------------------------------
    def set_proximal_anchor(self, mu: float) -> None:
        """Anchor FedProx at the current (just received, global) shared weights."""
        self.proximal_mu = float(mu)
        self._anchor = [(p, p.detach().clone()) for _, p in self.learner.shared_parameters()] if mu > 0 else []

    def _add_proximal_gradient(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._anchor:
            return
        with torch.no_grad():
            for p, ref in self._anchor:
                prox = (p.detach() - ref) * self.proximal_mu
                p.grad = prox if p.grad is None else p.grad.add_(prox)

    def state_dict(self) -> dict[str, Any]:
        """Training state: optimiser, schedule and step count."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "global_step": self.global_step,
        }

    def site_state_dict(self) -> dict[str, Any]:
        """Everything a site keeps between rounds, as one unit: the learner's local tensors (never
        the declared ones, never a frozen encoder), optimiser, schedule, step and private state."""
        return {
            "learner": self.learner.local_state_dict(),
            "trainer": self.state_dict(),
            "private": self.private_state.state_dict() if self.private_state is not None else None,
        }

    def load_site_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`site_state_dict` (the private state must already be attached)."""
        self.learner.load_local_state_dict(state["learner"])
        self.load_state_dict(state["trainer"])
        if (state.get("private") is None) != (self.private_state is None):
            raise ValueError("site state and trainer disagree on DP-SGD (privacy.mode changed within a run?)")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])

    # --- training -----------------------------------------------------------------------------
    def train_epoch(self, loader: Iterable[Mapping[str, Any]], *, max_steps: int | None = None,
                    desc: str = "train") -> EpochResult:
        """One pass over ``loader`` (or ``max_steps`` batches)."""
        self.learner.train()
        start = time.perf_counter()
        total = torch.zeros((), device=self.device)
        sums: dict[str, Tensor] = {}
        steps = examples = loss_steps = 0
        bar = self._progress(loader, desc, max_steps)
        for batch in bar:
            if batch is None:  # every item of the batch was unreadable (skip policy)
                continue
            if _batch_size(batch) == 0:
                if self.empty_batch_step is not None:
                    self.empty_batch_step(self)
                    self.scheduler.step()
                    self.global_step += 1
                    steps += 1
                    if max_steps is not None and steps >= max_steps:  # a noise-only step is a step
                        break
                continue
            batch = move_batch(batch, self.device, channels_last=self.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.cfg, self.device):
                loss, logs = self.learner.loss(batch)
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.learner.trainable_parameters(), self.cfg.grad_clip)
            self.learner.before_optimizer_step(self.optimizer)
            self.optimizer.step()
            self.scheduler.step()
            self.learner.after_optimizer_step()
            detached = loss.detach()
            total += detached
            loss_steps += 1
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + (value.detach() if isinstance(value, Tensor) else value)
            steps += 1
            examples += _batch_size(batch)
            self.global_step += 1
            if self.writer is not None and self.global_step % self.cfg.log_every == 0:
                self.writer.scalars("train", {"loss": float(detached), "lr": self.scheduler.get_last_lr()[0]},
                                    self.global_step)
            if max_steps is not None and steps >= max_steps:
                break
        if loss_steps == 0:
            if steps:  # DP-SGD: every Poisson batch of this epoch was empty; the noise-only steps count
                return EpochResult(0.0, steps, 0, time.perf_counter() - start, {})
            raise ValueError("the training loader yielded no usable batch (empty split, or every item unreadable)")
        mean = float(total) / loss_steps
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss is {mean} after {steps} steps; lower train.lr or check the data")
        logs_out = {k: float(v) / loss_steps for k, v in sums.items()}
        return EpochResult(mean, steps, examples, time.perf_counter() - start, logs_out)

    @torch.no_grad()
    def predict(self, loader: Iterable[Mapping[str, Any]]) -> tuple[Tensor, dict[str, Any]]:
        """Concatenated predictions and batch entries over ``loader`` (the learner must have ``predict``)."""
        from fedecho.tasks.dataset import concat_batches

        self.learner.eval()
        outputs: list[Tensor] = []
        batches: list[Mapping[str, Any]] = []
        for batch in loader:
            if batch is None or _batch_size(batch) == 0:
                continue
            with autocast(self.cfg, self.device):
                moved = move_batch(batch, self.device, channels_last=self.channels_last)
                outputs.append(self.learner.predict(moved).float().cpu())
            batches.append(batch)
        if not outputs:
            raise ValueError("the evaluation loader yielded no usable batch")
        return torch.cat(outputs), concat_batches(batches)

    def evaluate(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        outputs, batch = self.predict(loader)
        return self.learner.metrics(outputs, batch)

    def fit(
        self,
        train_loader: Iterable[Mapping[str, Any]],
        val_loader: Iterable[Mapping[str, Any]] | None = None,
        *,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> FitResult:
        """Train for ``epochs``; evaluate on ``val_loader`` and keep the best checkpoint by the task's
        primary metric in its own direction (lower MAE is better); stop early if configured."""
        from fedecho.engine.checkpoint import save_checkpoint

        epochs = epochs or self.cfg.epochs
        start = time.perf_counter()
        history: list[dict[str, float]] = []
        metric, direction = getattr(self.learner, "selection", (None, None))
        best: float | None = None
        best_epoch: int | None = None
        stale = 0
        stopped = False
        for epoch in range(1, epochs + 1):
            if hasattr(getattr(train_loader, "dataset", None), "set_epoch"):
                train_loader.dataset.set_epoch(epoch)
            result = self.train_epoch(train_loader, desc=f"epoch {epoch}/{epochs}")
            row = {"epoch": epoch, "train_loss": result.loss, "seconds": result.seconds,
                   **{f"train_{k}": v for k, v in result.logs.items()}}
            if val_loader is not None and metric and epoch % self.cfg.eval_every == 0:
                scores = self.evaluate(val_loader)
                row.update({f"val_{k}": v for k, v in scores.items() if isinstance(v, (int, float))})
                if self.writer is not None:
                    self.writer.scalars("val", scores, self.global_step)
                value = scores[metric]
                improved = best is None or (value < best if direction == "min" else value > best)
                if improved:
                    best, best_epoch, stale = value, epoch, 0
                    if checkpoint_dir is not None:
                        save_checkpoint(Path(checkpoint_dir) / "best.pt", self, epoch=epoch, metrics=scores)
                else:
                    stale += 1
                log.info("epoch %d: train loss %.4f, val %s %.4f (best %.4f @ %d)", epoch, result.loss,
                         metric, value, best, best_epoch)
            else:
                log.info("epoch %d: train loss %.4f (%.1f s)", epoch, result.loss, result.seconds)
            if self.writer is not None:
                self.writer.scalars("epoch", {"train_loss": result.loss}, epoch)
            history.append(row)
            if checkpoint_dir is not None:
                save_checkpoint(Path(checkpoint_dir) / "last.pt", self, epoch=epoch, metrics=row)
            patience = self.cfg.early_stopping_patience
            if patience is not None and stale >= patience:
                log.info("early stopping after epoch %d: no %s improvement for %d evaluations", epoch, metric, stale)
                stopped = True
                break
        if self.writer is not None:
            self.writer.flush()
        return FitResult(history, best, best_epoch, stopped, time.perf_counter() - start)

    def _progress(self, loader: Iterable, desc: str, max_steps: int | None) -> Iterable:
        if not (self.cfg.progress and sys.stderr.isatty()):
            return loader
        from tqdm import tqdm

        total = max_steps if max_steps is not None else (len(loader) if hasattr(loader, "__len__") else None)
        return tqdm(loader, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0
