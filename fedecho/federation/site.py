"""What a site does with each instruction of the coordinator: receive the frozen encoder (setup),
train one round, evaluate. Torch/peft/Flower-free logic over the engine; ``client/app.py`` only
unpacks messages and calls it.

Site-private state (optimiser and schedule, DINO teacher, FedBN norms, the DP accountant, the
received encoder) lives in an in-process cache (rounds in one process) and in the site's state
directory (rounds in new processes, restarts): nothing of it is sent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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


class SiteRuntime:
    def __init__(self, cfg: RunConfig, *, site_index: int, num_sites: int, state_dir: str | Path,
                 data: DataConfig | None = None) -> None:
        self.cfg = cfg
        self.site_index = site_index
        self.num_sites = num_sites
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_cfg = data or cfg.data
        self._sites: dict[str, Any] = {}
        self._phases: dict[str, _PhaseObjects] = {}
        self._privacy = None

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
    def _path(self, what: str, phase: Phase) -> Path:
        return self.state_dir / f"{what}_{phase.name.replace(':', '_')}.pt"

    def _save(self, path: Path, payload: Any) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    def _load(self, path: Path) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def _local_state(self, learner) -> dict[str, Tensor]:
        """Non-shared learner state worth keeping: not the frozen encoder (it comes from setup)."""
        keep_encoder = getattr(learner, "encoder", "full") == "full" or not hasattr(learner, "task")
        local_norms = getattr(learner, "_local", set())
        return {k: v.detach().cpu() for k, v in learner.state_dict().items()
                if not learner.is_shared(k) and (keep_encoder or not k.startswith("backbone.") or k in local_norms)}

    # --- phases --------------------------------------------------------------------------------
    def setup(self, phase: Phase, encoder: Mapping[str, Tensor]) -> dict[str, float]:
        """Keep the frozen encoder the coordinator hands out at the start of an adapt phase."""
        self._save(self._path("encoder", phase), dict(encoder))
        self._phases.pop(phase.name, None)
        return {MetricKey.NUM_EXAMPLES: 1.0, "site-index": float(self.site_index)}

    def _trained_round(self, phase: Phase) -> int:
        path = self._path("progress", phase).with_suffix(".json")
        return int(json.loads(path.read_text())["round"]) if path.is_file() else 0

    def _objects(self, phase: Phase) -> _PhaseObjects:
        objects = self._phases.get(phase.name)
        # A simulation may serve one site from several worker processes: the cache is only good
        # if no other process trained this site since (the state directory says).
        if objects is not None and objects.trained_round == self._trained_round(phase):
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
            encoder = self._load(self._path("encoder", Phase(f"adapt:{phase.task}", "adapt", phase.task)))
            if encoder is None:
                raise RuntimeError(
                    f"site {self.site_index} has no encoder for {phase.name}: the coordinator hands it out at "
                    f"the start of the adapt phase (this site was not connected then)"
                )
            learner = build_task_learner(self.cfg, phase.task, encoder_state=encoder)
            loaders = task_loaders(self.cfg, self.labelled, learner.task, seed=seed)
            train_loader = loaders.get("train")
            eval_loaders = {k: v for k, v in loaders.items() if k != "train"}
        local_steps = phase.local_steps or len(train_loader) * phase.local_epochs
        train_cfg = dataclasses.replace(self.cfg.train, lr=phase.lr, progress=False)
        trainer = Trainer(learner, train_cfg, total_steps=max(1, phase.rounds * local_steps),
                          device=resolve_device(self.cfg.train.device))
        state = self._load(self._path("trainer", phase))
        local = self._load(self._path("local", phase))
        if local:
            learner.load_state_dict(local, strict=False)
        privacy = None
        if self.cfg.federation.privacy.mode == "sample":
            self._privacy = None  # (re)building: the accountant's truth is the state directory
            privacy = self._site_privacy()
            per_sample = getattr(getattr(learner, "method", None), "per_sample_loss", True)
            train_loader = privacy.attach(trainer, train_loader, per_sample_loss=per_sample, what=phase.name)
        if state:
            trainer.load_state_dict(state)
        objects = _PhaseObjects(learner, trainer, train_loader, eval_loaders, privacy, self._trained_round(phase))
        self._phases = {phase.name: objects}  # one phase at a time in memory
        return objects

    def _site_privacy(self):
        if self._privacy is None:
            from fedecho.privacy import SitePrivacy

            path = self.state_dir / "privacy.json"
            state = json.loads(path.read_text()) if path.is_file() else None
            self._privacy = SitePrivacy(self.cfg.federation.privacy, state)
        return self._privacy

    def train(self, phase: Phase, round_: int, arrays: Mapping[str, Tensor],
              proximal_mu: float = 0.0) -> tuple[dict[str, Tensor], dict[str, float]]:
        start, cpu_start = time.perf_counter(), time.process_time()
        objects = self._objects(phase)
        learner, trainer, loader = objects.learner, objects.trainer, objects.train_loader
        learner.load_shared_state_dict(arrays)
        metrics: dict[str, float] = {"site-index": float(self.site_index)}
        dataset = loader.dataset
        per_round = phase.local_steps or len(loader) * phase.local_epochs
        if objects.privacy is not None:
            if not objects.privacy.budget_allows(per_round, objects.privacy.sample_rate):
                metrics.update({MetricKey.NUM_EXAMPLES: 0.0, MetricKey.BUDGET_SPENT: 1.0,
                                MetricKey.EPSILON: objects.privacy.epsilon(),
                                MetricKey.DELTA: self.cfg.federation.privacy.delta})
                return learner.shared_state_dict(), metrics
        trainer.set_proximal_anchor(proximal_mu)
        losses = []
        for epoch in range(phase.local_epochs):
            # Every draw of a round (shuffle, augmentation, dropout, DP noise) depends only on
            # (seed, site, phase, round, epoch): a resumed run repeats an uninterrupted one.
            step_seed = _seed(self.cfg.train.seed, self.site_index, phase.name, round_, epoch)
            torch.manual_seed(step_seed)
            _reseed(loader, step_seed)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(round_ * phase.local_epochs + epoch)
            result = trainer.train_epoch(loader, max_steps=phase.local_steps or None)
            losses.append(result.loss)
            if phase.local_steps:
                break
        self._save(self._path("trainer", phase), trainer.state_dict())
        self._save(self._path("local", phase), self._local_state(learner))
        self._path("progress", phase).with_suffix(".json").write_text(json.dumps({"round": round_}))
        objects.trained_round = round_
        metrics.update({MetricKey.NUM_EXAMPLES: float(len(dataset)), MetricKey.LOSS: float(sum(losses) / len(losses)),
                        MetricKey.SECONDS: time.perf_counter() - start,
                        MetricKey.CPU_SECONDS: time.process_time() - cpu_start,
                        MetricKey.SKIPPED: float(len(getattr(dataset, "skipped", [])) + len(self.site.issues))})
        if objects.privacy is not None:
            (self.state_dir / "privacy.json").write_text(json.dumps(objects.privacy.state_dict()))
            metrics.update({MetricKey.EPSILON: objects.privacy.epsilon(),
                            MetricKey.DELTA: self.cfg.federation.privacy.delta, MetricKey.BUDGET_SPENT: 0.0})
        return learner.shared_state_dict(), metrics

    @torch.no_grad()
    def evaluate(self, phase: Phase, arrays: Mapping[str, Tensor], split: str = "val") -> dict[str, float]:
        objects = self._objects(phase if phase.kind != "evaluate" else
                                Phase(f"adapt:{phase.task}", "adapt", phase.task, rounds=1))
        learner = objects.learner
        learner.load_shared_state_dict(arrays)
        metrics: dict[str, float] = {"site-index": float(self.site_index)}
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
