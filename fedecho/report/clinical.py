"""Clinical read-outs from LV masks: end-diastolic / end-systolic LV area, single-plane Simpson
volumes (method of disks, :mod:`fedecho.data.geometry`) and ejection fraction, from a model's
predicted ED/ES masks against the same quantities from the expert masks.

Per patient (and apical view) with an ED and an ES image:

- ``ed_area_cm2`` / ``es_area_cm2``: LV-cavity pixels × pixel area;
- ``edv_ml`` / ``esv_ml``: single-plane Simpson, ``pi/4 · sum d_i² · L / n`` (20 disks);
- ``ef_pct``: ``100 · (EDV - ESV) / EDV``.

Agreement per quantity (:func:`agreement`): MAE, bias (mean of predicted - expert), SD of the
differences and the 95 % limits of agreement ``bias ± 1.96 SD`` (Bland & Altman, Lancet 1986).

:func:`predict_clinical` runs a finished simulation's global model on the pooled test split:
masks are predicted at the task's input size, and the expert masks are taken at the same size
(the task's nearest-neighbour resize), with the pixel spacing scaled to that size — so predicted
and expert quantities are measured on the same grid. The file ``RUN_DIR/clinical.npz`` keeps the
per-patient values (``patients``, ``views`` and ``pred_<q>`` / ``ref_<q>`` for each quantity).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QUANTITIES", "agreement", "clinical_table", "lv_indices", "plot_clinical", "predict_clinical",
           "read_clinical", "write_clinical"]

#: quantity -> (label, unit)
QUANTITIES: dict[str, tuple[str, str]] = {
    "ed_area_cm2": ("LV area ED", "cm²"),
    "es_area_cm2": ("LV area ES", "cm²"),
    "edv_ml": ("EDV (single-plane Simpson)", "mL"),
    "esv_ml": ("ESV (single-plane Simpson)", "mL"),
    "ef_pct": ("EF", "%"),
}


def lv_indices(ed_mask: np.ndarray, es_mask: np.ndarray, spacing: tuple[float, float], *, label: int = 1,
               n_disks: int = 20) -> dict[str, float]:
    """The :data:`QUANTITIES` of one view from its ED and ES masks (H, W) with ``spacing``
    (row_mm, col_mm). A mask without LV pixels gives NaN volumes and EF (area 0)."""
    from fedecho.data.geometry import area_mm2, simpson_volume_ml

    out = {"ed_area_cm2": area_mm2(ed_mask, spacing, label) / 100.0,
           "es_area_cm2": area_mm2(es_mask, spacing, label) / 100.0}
    for phase, mask in (("ed", ed_mask), ("es", es_mask)):
        try:
            out[f"{phase}v_ml"] = simpson_volume_ml(mask, spacing, label=label, n_disks=n_disks)
        except ValueError:  # no LV pixel: no long axis
            out[f"{phase}v_ml"] = math.nan
    edv, esv = out["edv_ml"], out["esv_ml"]
    out["ef_pct"] = 100.0 * (edv - esv) / edv if edv and math.isfinite(edv) and math.isfinite(esv) else math.nan
    return out


def agreement(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    """MAE, bias, SD and 95 % limits of agreement of ``pred`` against ``ref`` (pairs with a NaN
    on either side are left out and counted in ``missing``)."""
    from fedecho.tasks.metrics.agreement import bland_altman

    p, r = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if p.shape != r.shape:
        raise ValueError(f"agreement: {p.size} predicted but {r.size} expert values")
    ok = np.isfinite(p) & np.isfinite(r)
    out = {"n": float(ok.sum()), "missing": float((~ok).sum())}
    if not ok.any():
        return {**out, "mae": math.nan, "bias": math.nan, "sd": math.nan, "loa_low": math.nan, "loa_high": math.nan}
    stats = bland_altman(p[ok], r[ok])
    return {**out, "mae": float(np.abs(p[ok] - r[ok]).mean()), "bias": stats.bias, "sd": stats.sd,
            "loa_low": stats.loa_low, "loa_high": stats.loa_high}


def write_clinical(path: Path, patients: Sequence[str], views: Sequence[str], pred: Mapping[str, Sequence[float]],
                   ref: Mapping[str, Sequence[float]]) -> Path:
    """Save per-patient predicted and expert quantities (no pixels) as ``path`` (.npz)."""
    arrays: dict[str, np.ndarray] = {"patients": np.asarray(patients, dtype=str), "views": np.asarray(views, dtype=str)}
    for q in QUANTITIES:
        arrays[f"pred_{q}"] = np.asarray(pred[q], np.float64)
        arrays[f"ref_{q}"] = np.asarray(ref[q], np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def read_clinical(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a :func:`write_clinical` file; a clear error names a missing key."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [k for k in ("patients", *(f"{s}_{q}" for q in QUANTITIES for s in ("pred", "ref"))) if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a clinical read-out file (missing {', '.join(missing)})")
    return arrays


def clinical_table(arms: Mapping[str, Path]) -> list[str]:
    """Markdown: one row per arm and quantity with MAE, bias and limits of agreement."""
    lines = ["| arm | quantity | n | MAE | bias | limits of agreement |", "|---|---|---|---|---|---|"]
    for name, path in arms.items():
        data = read_clinical(path)
        for q, (label, unit) in QUANTITIES.items():
            a = agreement(data[f"pred_{q}"], data[f"ref_{q}"])
            lines.append(f"| {name} | {label} ({unit}) | {a['n']:.0f} | {a['mae']:.2f} | {a['bias']:+.2f} | "
                         f"{a['loa_low']:+.2f} to {a['loa_high']:+.2f} |")
    return lines


def plot_clinical(arms: Mapping[str, Path], quantity: str = "ef_pct"):
    """Bland–Altman plots of ``quantity`` side by side, one panel per arm (e.g. pooled vs federated)."""
    from fedecho.report.figure import new_figure
    from fedecho.tasks.metrics.agreement import bland_altman

    label, unit = QUANTITIES[quantity]
    fig, axes = new_figure(ncols=len(arms))
    for ax, (name, path) in zip(axes, arms.items(), strict=True):
        data = read_clinical(path)
        p, r = data[f"pred_{quantity}"], data[f"ref_{quantity}"]
        ok = np.isfinite(p) & np.isfinite(r)
        if ok.sum() < 2:
            ax.set_title(f"{name}: fewer than 2 pairs")
            continue
        stats = bland_altman(p[ok], r[ok])
        ax.scatter((p[ok] + r[ok]) / 2, p[ok] - r[ok], s=10, alpha=0.6)
        for value, style in ((stats.bias, "-"), (stats.loa_low, "--"), (stats.loa_high, "--")):
            ax.axhline(value, color="black", linestyle=style, linewidth=1)
        ax.set_xlabel(f"mean of model and expert {label} ({unit})")
        ax.set_ylabel(f"model − expert ({unit})")
        ax.set_title(f"{name}: bias {stats.bias:+.1f}, LoA {stats.loa_low:+.1f} to {stats.loa_high:+.1f}",
                     fontsize=9)
    return fig


def _frozen_encoder(cfg: Any, checkpoint: Any) -> dict[str, Any] | None:
    """The encoder the run's adapt phase started from, as the coordinator chose it: the pretrain
    phase's result, else ``cfg.init``, else None (the seeded initialisation)."""
    import torch

    if "pretrain" in checkpoint.finished:
        from fedecho.engine.build import build_pretrain_learner

        learner = build_pretrain_learner(cfg)
        learner.load_shared_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                        checkpoint.phase_arrays("pretrain").items()})
        return {k: v.detach().clone() for k, v in learner.method.backbone.state_dict().items()}
    if cfg.init:
        from fedecho.engine.build import encoder_state_from_checkpoint

        return encoder_state_from_checkpoint(cfg.init)
    return None


def predict_clinical(cfg: Any, run_dir: Path, task_name: str = "lv_seg") -> Path | None:
    """Predict ED/ES masks of the pooled test split with ``run_dir``'s final global ``task_name``
    model and write ``run_dir/clinical.npz``; None when the data has no ED/ES pairs (labels
    ``phase`` ED and ES of one patient and view, with masks) or the run has no final model."""
    import torch

    from fedecho.engine.build import build_task_learner
    from fedecho.engine.data import load_site
    from fedecho.engine.loaders import _augment
    from fedecho.federation.state import RunCheckpoint
    from fedecho.tasks import TaskDataset
    from fedecho.transforms.presets import build_transform

    checkpoint = RunCheckpoint.load(run_dir)
    if checkpoint is None or f"adapt:{task_name}" not in checkpoint.finished:
        return None
    pairs: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    site = load_site(cfg.data)
    for record in site.test:
        phase = record.labels.get("phase")
        if phase in ("ED", "ES") and "mask" in record.files:
            pairs[(record.patient_id, str(record.labels.get("view", "")))][phase] = record
    pairs = {k: v for k, v in pairs.items() if len(v) == 2}
    if not pairs:
        return None
    encoder = _frozen_encoder(cfg, checkpoint)
    learner = build_task_learner(cfg, task_name, encoder_state=encoder)
    arrays = checkpoint.phase_arrays(f"adapt:{task_name}")
    learner.load_shared_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    learner.eval()
    task = learner.task
    if "lv_cavity" not in task.classes:
        return None
    lv = task.classes.index("lv_cavity")
    keys = sorted(pairs)
    records = [pairs[key][phase] for key in keys for phase in ("ED", "ES")]
    size = cfg.task_config(task_name).image_size
    side = size if isinstance(size, int) else max(size)
    # the evaluation loaders' own examples: the same resize and intensity transform as the test metrics
    dataset = TaskDataset(site.reader, records, task, transform=build_transform("eval", _augment(cfg, side)),
                          seed=cfg.train.seed, on_error="raise")
    by_record: dict[int, tuple[np.ndarray, np.ndarray, tuple[float, float]]] = {}
    for index in range(len(dataset)):
        record_index = dataset.examples[index][0]
        example = dataset[index]
        with torch.no_grad():
            predicted = learner.predict({"image": example["image"][None]}).argmax(dim=1)[0].numpy()
        expert = example["mask"].numpy()
        sample = site.reader.load(records[record_index])
        height, width = sample.frames.shape[-2:]
        spacing = (sample.spacing[0] * height / expert.shape[0], sample.spacing[1] * width / expert.shape[1])
        by_record[record_index] = (predicted, expert, spacing)
    pred: dict[str, list[float]] = defaultdict(list)
    ref: dict[str, list[float]] = defaultdict(list)
    patients, views = [], []
    for i, (patient, view) in enumerate(keys):
        if 2 * i not in by_record or 2 * i + 1 not in by_record:
            continue
        (ed_pred, ed_ref, spacing), (es_pred, es_ref, _) = by_record[2 * i], by_record[2 * i + 1]
        predicted_q = lv_indices(ed_pred, es_pred, spacing, label=lv)
        truth_q = lv_indices(ed_ref, es_ref, spacing, label=lv)
        for q in QUANTITIES:
            pred[q].append(predicted_q[q])
            ref[q].append(truth_q[q])
        patients.append(patient)
        views.append(view)
    return write_clinical(Path(run_dir) / "clinical.npz", patients, views, pred, ref)
