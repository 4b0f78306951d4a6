"""Prediction files from a final evaluation: one pass over an evaluation loader gives the task's
outputs, the batch (targets, patient ids) and the pooled encoder embeddings, turned into the
arrays of :mod:`fedecho.report.predictions` for the task's kind.

The embeddings are what the task head receives, caught by a forward pre-hook on
``learner.head`` (no second forward pass): the backbone's pooled ``forward_embed`` output
(B, D), averaged over time for clip tasks on image backbones ((B, T, D) -> (B, D)), or the
deepest feature map averaged over space for heads that take feature maps ((B, C, h, w) -> (B, C)).

>>> run = run_predictions(trainer, loaders["test"])  # doctest: +SKIP
>>> metrics = trainer.learner.metrics(run.outputs, run.batch)  # == trainer.evaluate(loader)
>>> arrays = prediction_arrays(task, run, site_names={"p01": "site_0"})  # doctest: +SKIP
>>> save_predictions(out / "predictions" / f"{task.name}.npz", **arrays)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedecho.config.data import DataConfig
from fedecho.tasks.base import Task

__all__ = [
    "MAX_EMBEDDINGS",
    "REGRESSION_UNITS",
    "PredictionRun",
    "collect_predictions",
    "partition_site_names",
    "prediction_arrays",
    "run_predictions",
]

log = logging.getLogger(__name__)

#: at most this many embedding rows per file (a seeded subset beyond; t-SNE draws 2000 anyway)
MAX_EMBEDDINGS = 2000
#: unit of each regression task's outputs (axis labels of the Bland–Altman plot)
REGRESSION_UNITS = {"ef": "%", "volumes": "mL", "age": "y"}


@dataclass(frozen=True)
class PredictionRun:
    """Outputs (N, ...) of the task over a loader, its concatenated batch, and the embeddings
    (N, D) (None when not collected or when the head takes no tensor)."""

    outputs: Tensor
    batch: Mapping[str, Any]
    embeddings: Tensor | None


def run_predictions(trainer: Any, loader: Iterable[Mapping[str, Any]], *, embed: bool = True) -> PredictionRun:
    """:meth:`Trainer.predict` over ``loader``, catching the head's input as embeddings.

    ``trainer.learner.metrics(run.outputs, run.batch)`` equals ``trainer.evaluate(loader)``.
    """
    learner = trainer.learner
    head = getattr(learner, "head", None) if embed else None
    caught: list[Tensor | None] = []
    handle = None
    if isinstance(head, torch.nn.Module):
        handle = head.register_forward_pre_hook(lambda _module, args: caught.append(_pooled(args[0]) if args else None))
    try:
        outputs, batch = trainer.predict(loader)
    finally:
        if handle is not None:
            handle.remove()
    embeddings = None
    if caught and all(c is not None for c in caught):
        embeddings = torch.cat(caught)  # type: ignore[arg-type]
        if len(embeddings) != len(outputs):  # a head called more than once per batch: not a per-sample embedding
            embeddings = None
    return PredictionRun(outputs, batch, embeddings)


def _pooled(value: Any) -> Tensor | None:
    """(B, D) -> itself; (B, T, D) -> mean over T; [..., (B, C, h, w)] -> mean of the last over space."""
    if isinstance(value, list | tuple) and value and isinstance(value[-1], Tensor):
        value = value[-1]
    if not isinstance(value, Tensor) or value.ndim < 2 or not value.is_floating_point():
        return None
    value = value.detach().float().cpu()
    if value.ndim == 2:
        return value
    if value.ndim == 3:
        return value.mean(dim=1)
    return value.flatten(2).mean(dim=2)


def collect_predictions(
    trainer: Any,
    loader: Iterable[Mapping[str, Any]],
    task: Task,
    *,
    site_names: Mapping[str, str] | None = None,
    max_examples: int = 8,
    embed: bool = True,
    max_embeddings: int = MAX_EMBEDDINGS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The prediction-file arrays of ``task`` over ``loader`` (one evaluation pass); see
    :func:`prediction_arrays` for the arguments."""
    run = run_predictions(trainer, loader, embed=embed)
    return prediction_arrays(task, run, site_names=site_names, max_examples=max_examples,
                             max_embeddings=max_embeddings, seed=seed)


def prediction_arrays(
    task: Task,
    run: PredictionRun,
    *,
    site_names: Mapping[str, str] | None = None,
    max_examples: int = 8,
    max_embeddings: int = MAX_EMBEDDINGS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Arrays in the :mod:`fedecho.report.predictions` format for ``task``'s kind.

    ``site_names`` maps patient id -> site name (the virtual site of each test patient); every
    patient of the batch must be in it (ValueError naming the missing ones). Classification:
    ``probs`` = softmax of the logits. Regression: outputs already in physical units.
    Segmentation: ``max_examples`` evenly spaced items as examples (images min–max scaled to
    [0, 1] for display) and ``sample_dice`` of every item (empty structure = 1, as in the task's
    metrics), with ``phases`` when the items have a cardiac phase (CAMUS ED/ES). LVH: a regression file of caliper lengths (mm when the spacing is known, else px),
    one row per annotated measurement, ``quantities`` naming it; no embeddings.
    Above ``max_embeddings`` samples a subset drawn with ``np.random.default_rng(seed)`` keeps
    embeddings, listed in ``embedding_index``.
    """
    from fedecho.tasks.classification import ClassificationTask
    from fedecho.tasks.lvh import LVHTask
    from fedecho.tasks.regression import RegressionTask
    from fedecho.tasks.segmentation import LVSegmentationTask

    batch = run.batch
    patients = np.asarray([str(p) for p in batch["patient_id"]]) if "patient_id" in batch else None
    sites = _sites(patients, site_names)
    if isinstance(task, LVSegmentationTask):
        return _segmentation(task, run, patients, sites, max_examples)
    if isinstance(task, LVHTask):
        return _lvh(task, run, patients, sites)
    if isinstance(task, ClassificationTask):
        arrays: dict[str, np.ndarray] = {
            "probs": torch.softmax(run.outputs.float(), dim=1).numpy(),
            "targets": batch["label"].reshape(-1).long().numpy(),
            "class_names": np.asarray(task.classes, dtype=str),
        }
    elif isinstance(task, RegressionTask):
        arrays = {
            "preds": run.outputs.float().reshape(-1).numpy(),
            "targets": batch["target"].float().reshape(-1).numpy(),
        }
        if task.name in REGRESSION_UNITS:
            arrays["unit"] = np.asarray(REGRESSION_UNITS[task.name])
    else:
        raise TypeError(f"no prediction file format for task {task.name!r} ({type(task).__name__})")
    arrays.update(_per_sample(patients, sites))
    if run.embeddings is not None:
        arrays.update(_embeddings(run.embeddings.numpy(), max_embeddings, seed))
    return arrays


def partition_site_names(data: DataConfig, num_sites: int) -> dict[str, str] | None:
    """Patient id -> ``site_<k>``: the virtual site of each patient in a simulation of
    ``num_sites`` sites over ``data`` (named as the sites name themselves in the run history).

    None when there is one site, or when the partition cannot be made here (logged).
    """
    if num_sites <= 1:
        return None
    from fedecho.engine.data import load_site

    try:
        partition = load_site(data, site=0, num_sites=num_sites).partition
    except (ValueError, FileNotFoundError) as err:  # EchoDataError is a ValueError
        log.info("test samples get no site: the partition of %d sites cannot be made (%s)", num_sites, err)
        return None
    if partition is None:
        return None
    return {patient: f"site_{k}" for patient, k in partition.site_of().items()}


def _sites(patients: np.ndarray | None, site_names: Mapping[str, str] | None) -> np.ndarray | None:
    if site_names is None or patients is None:
        return None
    missing = sorted({p for p in patients.tolist() if p not in site_names})
    if missing:
        raise ValueError(f"site_names has no site for patients {missing[:10]} ({len(missing)} in all)")
    return np.asarray([str(site_names[p]) for p in patients.tolist()])


def _per_sample(patients: np.ndarray | None, sites: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {}
    if patients is not None:
        out["patients"] = patients
    if sites is not None:
        out["sites"] = sites
    return out


def _embeddings(embeddings: np.ndarray, max_rows: int, seed: int) -> dict[str, np.ndarray]:
    if max_rows < 1:
        raise ValueError(f"max_embeddings must be >= 1, got {max_rows}")
    embeddings = embeddings.astype(np.float32)
    if len(embeddings) <= max_rows:
        return {"embeddings": embeddings}
    index = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_rows, replace=False))
    return {"embeddings": embeddings[index], "embedding_index": index.astype(np.int64)}


def _segmentation(task: Any, run: PredictionRun, patients: np.ndarray | None, sites: np.ndarray | None,
                  max_examples: int) -> dict[str, np.ndarray]:
    from fedecho.tasks.metrics.segmentation import dice_per_label

    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    outputs = run.outputs
    pred = (outputs.argmax(dim=1) if outputs.is_floating_point() else outputs).long().numpy()  # (N, H, W)
    masks = run.batch["mask"].long().numpy()
    structures = list(range(1, len(task.classes)))
    chosen = np.unique(np.linspace(0, len(pred) - 1, min(max_examples, len(pred))).round().astype(np.int64))
    images = run.batch["image"][chosen, 0].double().numpy()  # (K, H, W), grey channel
    low = images.min(axis=(1, 2), keepdims=True)
    span = images.max(axis=(1, 2), keepdims=True) - low
    images = np.where(span > 0, (images - low) / np.where(span > 0, span, 1.0), 0.0)
    return {
        "images": images.astype(np.float32),
        "masks": masks[chosen],
        "pred_masks": pred[chosen],
        "class_names": np.asarray(task.classes, dtype=str),
        "sample_dice": np.clip(dice_per_label(pred, masks, structures), 0.0, 1.0),
        "structure_names": np.asarray(task.classes[1:], dtype=str),
        **_per_sample(patients, sites),
        **_phases(run.batch.get("phase")),
    }


def _phases(phases: Any) -> dict[str, np.ndarray]:
    """``phases`` (N,) str when the items carry a cardiac phase (CAMUS ED/ES images), else nothing."""
    if phases is None or not any(phases):
        return {}
    return {"phases": np.asarray([str(p) for p in phases])}


def _lvh(task: Any, run: PredictionRun, patients: np.ndarray | None,
         sites: np.ndarray | None) -> dict[str, np.ndarray]:
    pred = run.outputs.double().numpy()  # (N, K, 2) pixel (x, y)
    true = run.batch["points"].double().numpy()
    mask = run.batch["point_mask"].numpy() > 0
    mm = run.batch["mm_per_pixel"].double().numpy()[:, ::-1]  # (N, 2) as (x, y)
    in_mm = bool(np.isfinite(mm).all(axis=1).any())
    scale = mm if in_mm else np.ones_like(mm)
    rows: list[tuple[int, str, float, float]] = []
    for j, name in enumerate(task.measurements):
        both = mask[:, 2 * j] & mask[:, 2 * j + 1] & np.isfinite(scale).all(axis=1)
        lengths = [np.linalg.norm((points[:, 2 * j + 1] - points[:, 2 * j]) * scale, axis=-1) for points in (pred, true)]
        rows += [(i, name, float(lengths[0][i]), float(lengths[1][i])) for i in np.flatnonzero(both)]
    if not rows:
        raise ValueError(f"task {task.name!r}: no evaluated item has both endpoints of a measurement annotated")
    index = np.array([r[0] for r in rows])
    arrays = {
        "preds": np.array([r[2] for r in rows]),
        "targets": np.array([r[3] for r in rows]),
        "unit": np.asarray("mm" if in_mm else "px"),
        "quantities": np.asarray([r[1] for r in rows], dtype=str),
    }
    arrays.update(_per_sample(None if patients is None else patients[index], None if sites is None else sites[index]))
    return arrays
