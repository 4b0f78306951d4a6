"""What a site does with each instruction of the coordinator: receive the frozen encoder (setup),
train one round, evaluate. Torch/peft/Flower-free logic over the engine; ``client/app.py`` only
unpacks messages and calls it.

Site-private state (optimiser and schedule, DINO teacher, FedBN norms, the DP accountant) is owned
by the trainer and its learner (``Trainer.site_state_dict``) and saved as one atomic snapshot per
round (:mod:`fedecho.engine.snapshots`); the received encoder and the DP noise secret
(:mod:`fedecho.privacy.secret`) are files of the site's state directory. An in-process cache
serves consecutive rounds; nothing of it is sent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedecho.config.data import DataConfig
from fedecho.config.run import RunConfig
from fedecho.engine.snapshots import SnapshotStore
from fedecho.federation.contract import MetricKey
from fedecho.federation.phases import Phase

__all__ = ["SiteRuntime", "get_runtime"]

log = logging.getLogger(__name__)

_CACHE: OrderedDict[tuple[str, int], SiteRuntime] = OrderedDict()
_CACHE_SIZE = 4


def get_runtime(cfg: RunConfig, *, site_index: int, num_sites: int, state_dir: str | Path,
                data: DataConfig | None = None) -> SiteRuntime:
    """The runtime of a site in this process (kept across rounds; bounded cache)."""
    key = (str(Path(state_dir).resolve()), site_index)
    runtime = _CACHE.get(key)
    if runtime is None or runtime.cfg != cfg or runtime.data_cfg != (data or cfg.data):  # same run, same data
        runtime = SiteRuntime(cfg, site_index=site_index, num_sites=num_sites, state_dir=state_dir, data=data)
        _CACHE[key] = runtime
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return runtime


def _seed(*parts: object) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _reseed(loader: Any, seed: int) -> None:
    """Reseed a DataLoader's shuffling / Poisson sampling generator(s)."""
    for holder in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)


@dataclasses.dataclass
class _PhaseObjects:
    learner: Any
    trainer: Any
    train_loader: Any
    eval_loaders: dict[str, Any]
    privacy: Any = None
    trained_round: int = 0
    base_skipped: int = 0
    """Items the training dataset left out when it was built (labels it cannot use)."""


class SiteRuntime:
    def __init__(self, cfg: RunConfig, *, site_index: int, num_sites: int, state_dir: str | Path,
                 data: DataConfig | None = None) -> None:
        self.cfg = cfg
        self.site_index = site_index
        self.num_sites = num_sites
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_cfg = data or cfg.data
        self.snapshots = SnapshotStore(self.state_dir)
        if (self.state_dir / "privacy.json").is_file():  # state of a FedEcho before per-round snapshots
            raise RuntimeError(
                f"{self.state_dir} holds site state of an older FedEcho (privacy.json): its accountant would "
                f"not carry over and epsilon would restart at 0; start a new run (another federation.run_dir)"
            )
        self.secret = None
        if cfg.federation.privacy.mode == "sample":  # created here, at the site, before any training
            from fedecho.privacy import SiteSecret

            self.secret = SiteSecret.load_or_create(self.state_dir)
        self._sites: dict[str, Any] = {}
        self._phases: dict[str, _PhaseObjects] = {}

    # --- data ----------------------------------------------------------------------------------
    @property
    def site(self):
        """All of the site's patients (self-supervised pretraining uses every training patient)."""
        return self._load_site(labelled=False)

    @property
    def labelled(self):
        """The site's data with ``data.label_fraction`` of its training patients (task phases)."""
        return self._load_site(labelled=True)

    def _load_site(self, *, labelled: bool):
        key = "labelled" if labelled and self.data_cfg.label_fraction < 1 else "all"
        if key not in self._sites:
            from fedecho.engine.data import load_site

            simulated = self.data_cfg is self.cfg.data and self.num_sites > 1
            site = load_site(self.data_cfg, site=self.site_index if simulated else None,
                             num_sites=self.num_sites if simulated else 1, fraction_of_train=key == "labelled")
            log.info("site %d: %d train%s / %d val / %d test records (%d unreadable skipped)", self.site_index,
                     len(site.train), " labelled" if key == "labelled" else "", len(site.val), len(site.test),
                     len(site.issues))
            self._sites[key] = site
        return self._sites[key]

    # --- state ---------------------------------------------------------------------------------
    def _encoder_path(self, phase: Phase) -> Path:
        return self.state_dir / f"encoder_{phase.name.replace(':', '_')}.pt"

    def _previous_phases(self, phase: Phase) -> list[str]:
        """Training phases planned before ``phase`` (their last snapshot holds the accountant)."""
        from fedecho.federation.phases import plan_phases

        names = [p.name for p in plan_phases(self.cfg) if p.kind != "evaluate"]
        return names[:names.index(phase.name)] if phase.name in names else []

    def _accountant_state(self, phase: Phase, snapshot: Mapping[str, Any] | None) -> Any:
        """The site's one accountant as of ``snapshot`` of ``phase`` (or, at a phase's start, as of
        the last snapshot of the phase before): ε composes over phases."""
        if snapshot is not None:
            return snapshot.get("private")
        for name in reversed(self._previous_phases(phase)):
            last = self.snapshots.latest(name)
            if last:
                return self.snapshots.load(name, last).get("private")
        return None

    # --- phases --------------------------------------------------------------------------------
    def setup(self, phase: Phase, encoder: Mapping[str, Tensor]) -> dict[str, float]:
        """Keep the frozen encoder the coordinator hands out at the start of an adapt phase."""
        path = self._encoder_path(phase)
        tmp = path.with_suffix(".tmp")
        torch.save(dict(encoder), tmp)
        tmp.replace(path)
        self._phases.pop(phase.name, None)
        return {MetricKey.NUM_EXAMPLES: 1.0, MetricKey.SITE_INDEX: float(self.site_index)}

    def _objects(self, phase: Phase, before: int | None = None) -> _PhaseObjects:
        """The phase's learner, trainer and loaders in the state of its newest snapshot before round
        ``before`` (any round if None). The in-process cache is used only if it holds that state."""
        base = self.snapshots.latest(phase.name, before)
        objects = self._phases.get(phase.name)
        if objects is not None and objects.trained_round == base:
            return objects
        from fedecho.engine.build import build_pretrain_learner, build_task_learner
        from fedecho.engine.loaders import pretrain_loader, task_loaders
        from fedecho.engine.seed import resolve_device
        from fedecho.engine.trainer import Trainer

        seed = _seed(self.cfg.train.seed, self.site_index, phase.name)
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        if phase.kind == "pretrain":
            learner = build_pretrain_learner(self.cfg)
            train_loader = pretrain_loader(self.cfg, self.site, learner.method, seed=seed)
            eval_loaders: dict[str, Any] = {}
        else:
            adapt = Phase(f"adapt:{phase.task}", "adapt", phase.task)
            path = self._encoder_path(adapt)
            if not path.is_file():
                raise RuntimeError(
                    f"site {self.site_index} has no encoder for {phase.name}: the coordinator hands it out at "
                    f"the start of the adapt phase (this site was not connected then)"
                )
            encoder = torch.load(path, map_location="cpu", weights_only=True)
            learner = build_task_learner(self.cfg, phase.task, encoder_state=encoder)
            loaders = task_loaders(self.cfg, self.labelled, learner.task, seed=seed)
            train_loader = loaders.get("train")
            eval_loaders = {k: v for k, v in loaders.items() if k != "train"}
        local_steps = phase.local_steps or len(train_loader) * phase.local_epochs
        train_cfg = dataclasses.replace(self.cfg.train, lr=phase.lr, progress=False)
        trainer = Trainer(learner, train_cfg, total_steps=max(1, phase.rounds * local_steps),
                          device=resolve_device(self.cfg.train.device))
        base_skipped = len(getattr(train_loader.dataset, "skipped", []))
        snapshot = self.snapshots.load(phase.name, base) if base else None
        privacy = None
        if self.cfg.federation.privacy.mode == "sample":
            from fedecho.privacy import SitePrivacy

            privacy = SitePrivacy(self.cfg.federation.privacy, self._accountant_state(phase, snapshot),
                                  secret=self.secret)
            per_sample = getattr(getattr(learner, "method", None), "per_sample_loss", True)
            train_loader = privacy.attach(trainer, train_loader, per_sample_loss=per_sample, what=phase.name)
            trainer.private_state = privacy
        if snapshot is not None:
            trainer.load_site_state_dict(snapshot)
        objects = _PhaseObjects(learner, trainer, train_loader, eval_loaders, privacy, base, base_skipped)
        self._phases = {phase.name: objects}  # one phase at a time in memory
        return objects

    def train(self, phase: Phase, round_: int, arrays: Mapping[str, Tensor],
              proximal_mu: float = 0.0) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Train round ``round_`` from the site's state after the round before (its snapshot), save
        the new state as one atomic snapshot, and only then return the update."""
        start, cpu_start = time.perf_counter(), time.process_time()
        objects = self._objects(phase, before=round_)
        learner, trainer, loader, privacy = objects.learner, objects.trainer, objects.train_loader, objects.privacy
        learner.load_shared_state_dict(arrays)
        metrics: dict[str, float] = {MetricKey.SITE_INDEX: float(self.site_index)}
        dataset = loader.dataset
        per_round = phase.local_steps or len(loader) * phase.local_epochs
        if privacy is not None:
            allowed, _why = privacy.budget_allows(per_round, privacy.sample_rate)
            if not allowed:  # the reason is logged at the site; the coordinator sees the flag only
                metrics.update({MetricKey.NUM_EXAMPLES: 0.0, MetricKey.BUDGET_SPENT: 1.0,
                                **self._privacy_metrics(privacy)})
                return learner.shared_state_dict(), metrics
        trainer.set_proximal_anchor(proximal_mu)
        skipped_before = len(getattr(dataset, "skipped", []))
        losses = []
        for epoch in range(phase.local_epochs):
            # Public randomness (augmentation, dropout, non-private shuffling) depends on (seed,
            # site, phase, round, epoch); DP noise and Poisson sampling on the site's secret too.
            step_seed = _seed(self.cfg.train.seed, self.site_index, phase.name, round_, epoch)
            torch.manual_seed(step_seed)
            if privacy is not None:
                privacy.reseed(phase.name, round_, epoch, trainer.global_step)
            else:
                _reseed(loader, step_seed)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(round_ * phase.local_epochs + epoch)
            result = trainer.train_epoch(loader, max_steps=phase.local_steps or None)
            losses.append(result.loss)
            if phase.local_steps:
                break
        self.snapshots.save(phase.name, round_, trainer.site_state_dict())
        objects.trained_round = round_
        skipped = len(getattr(dataset, "skipped", [])) - skipped_before
        metrics.update({MetricKey.NUM_EXAMPLES: float(len(dataset)), MetricKey.LOSS: float(sum(losses) / len(losses)),
                        MetricKey.SECONDS: time.perf_counter() - start,
                        MetricKey.CPU_SECONDS: time.process_time() - cpu_start,
                        MetricKey.SKIPPED: float(len(self.site.issues) + objects.base_skipped + skipped)})
        if privacy is not None:
            metrics.update({**self._privacy_metrics(privacy), MetricKey.BUDGET_SPENT: 0.0})
        return learner.shared_state_dict(), metrics

    def _privacy_metrics(self, privacy: Any) -> dict[str, float]:
        """ε in the configured unit and per example, δ: always finite (the budget check stops a site
        before its patient-level ε becomes unbounded)."""
        return {MetricKey.EPSILON: privacy.epsilon(), MetricKey.EPSILON_EXAMPLE: privacy.epsilon_example(),
                MetricKey.DELTA: self.cfg.federation.privacy.delta}

    @torch.no_grad()
    def evaluate(self, phase: Phase, arrays: Mapping[str, Tensor], split: str = "val") -> dict[str, float]:
        objects = self._objects(phase if phase.kind != "evaluate" else
                                Phase(f"adapt:{phase.task}", "adapt", phase.task, rounds=1))
        learner = objects.learner
        learner.load_shared_state_dict(arrays)
        metrics: dict[str, float] = {MetricKey.SITE_INDEX: float(self.site_index)}
        if phase.kind == "pretrain":
            # Self-supervised phases have no labelled metric; their progress is the training loss
            # (reported with every update). Evaluating a loss here would move DINO's centre.
            return {**metrics, MetricKey.NUM_EXAMPLES: float(len(objects.train_loader.dataset))}
        loader = objects.eval_loaders.get(split) or objects.eval_loaders.get("val") or objects.eval_loaders.get("test")
        if loader is None:
            return {**metrics, MetricKey.NUM_EXAMPLES: 0.0}
        scores = objects.trainer.evaluate(loader)
        metrics.update({k: float(v) for k, v in scores.items() if isinstance(v, (int, float))})
        metrics[MetricKey.NUM_EXAMPLES] = float(len(loader.dataset))
        return metrics
