"""``fedecho train``: one site, no federation — pretraining (self-supervised) or fine-tuning a
task (full, LoRA adapter, frozen probe), with best-checkpoint selection and test evaluation."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from fedecho.config.run import RunConfig, to_dict
from fedecho.engine.build import build_pretrain_learner, build_task_learner, encoder_state_from_checkpoint
from fedecho.engine.checkpoint import load_checkpoint
from fedecho.engine.data import load_site
from fedecho.engine.loaders import pretrain_loader, task_loaders
from fedecho.engine.predictions import PredictionRun, prediction_arrays, run_predictions
from fedecho.engine.seed import resolve_device, seed_everything
from fedecho.engine.trainer import Trainer

__all__ = ["train_local"]

log = logging.getLogger(__name__)


def train_local(cfg: RunConfig) -> dict[str, Any]:
    """Train per ``cfg`` and write ``out_dir``: checkpoints/, tb/, config.json, results.json and,
    when fine-tuning with a test split, predictions/<task>.npz (fedecho.report.predictions)."""
    from fedecho.report.tensorboard import ScalarWriter

    start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1, default=str))
    finetune = cfg.mode == "finetune"
    site = load_site(cfg.data, fraction_of_train=finetune)
    encoder_state = encoder_state_from_checkpoint(cfg.init) if cfg.init else None
    writer = ScalarWriter(out / "tb")
    try:
        if finetune:
            learner = build_task_learner(cfg, encoder_state=encoder_state)
            loaders = task_loaders(cfg, site, learner.task)
        else:
            learner = build_pretrain_learner(cfg)
            if encoder_state is not None:
                from fedecho.engine.build import load_encoder

                load_encoder(learner.method.backbone, encoder_state)
            loaders = {"train": pretrain_loader(cfg, site, learner.method)}
        trainable = sum(p.numel() for p in learner.trainable_parameters())
        total = sum(p.numel() for p in learner.parameters())
        log.info("%s on %s: %d train / %d val / %d test records; %d of %d parameters trainable",
                 learner.task.name if finetune else cfg.ssl.method, device, len(site.train), len(site.val),
                 len(site.test), trainable, total)
        steps = cfg.train.epochs * len(loaders["train"])
        trainer = Trainer(learner, cfg.train, total_steps=steps, device=device, writer=writer)
        fit = trainer.fit(loaders["train"], loaders.get("val"), checkpoint_dir=out / "checkpoints")
        results: dict[str, Any] = {
            "mode": cfg.mode, "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
            "best_val": fit.best_metric, "stopped_early": fit.stopped_early, "history": fit.history,
            "trainable_parameters": trainable, "total_parameters": total,
            "skipped_items": len(site.issues),
        }
        if finetune and "test" in loaders:
            best = out / "checkpoints" / "best.pt"
            if best.is_file():
                load_checkpoint(best, trainer)
            results["selection"] = list(learner.selection)
            run = run_predictions(trainer, loaders["test"])
            results["test"] = learner.metrics(run.outputs, run.batch)  # == trainer.evaluate(loaders["test"])
            writer.scalars("test", results["test"], trainer.global_step)
            results["predictions"] = _save_test_predictions(out, learner.task, run, cfg.train.seed)
        results["seconds"] = time.perf_counter() - start
    finally:
        writer.close()
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    return results


def _save_test_predictions(out: Path, task: Any, run: PredictionRun, seed: int) -> str | None:
    """Write ``out/predictions/<task>.npz`` from the test pass; its path, or None (logged) when the
    arrays do not make a valid file (the test metrics stand)."""
    from fedecho.report.predictions import save_predictions

    try:
        path = save_predictions(out / "predictions" / f"{task.name}.npz", **prediction_arrays(task, run, seed=seed))
    except (ValueError, TypeError) as err:
        log.warning("no prediction file for %s (%s: %s)", task.name, type(err).__name__, err)
        return None
    return str(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
