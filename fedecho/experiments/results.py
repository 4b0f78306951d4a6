"""Read an experiment's arms back from their run directories and write the result table:
published · local-only (mean and worst site) · federated · pooled · federated / pooled
(``results.md`` + ``results.json``).

Local-only mean: the mean over the sites' local models of the metric on the pooled test split; its
95 % interval resamples test patients jointly for all sites (the same draw for every site's model),
which is exact for metrics that are means over items (Dice, MAE); for other metrics (accuracy,
AUROC) the row gives the mean without an interval. Worst site: the site whose model scores worst
(metric direction from fedecho.tasks.selection), with that model's own interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedecho.experiments.spec import Experiment, Target
from fedecho.federation.contract import MetricKey

__all__ = ["ArmResult", "collect_arm", "experiment_rows", "summary_table", "write_results"]


@dataclass
class ArmResult:
    arm: str
    run_dir: str
    central: dict[str, dict[str, float]]
    """task -> metrics of the global model on the pooled test split (coordinator side; simulation)."""
    sites: dict[str, dict[str, float]]
    """task -> the sites' own test patients, averaged over sites weighted by examples."""
    ci: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """task -> metric -> [estimate, low, high]: percentile bootstrap 95 % interval over test patients."""
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    """Sites' CPU time over every round (all threads) + the coordinator process's CPU time."""
    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_bytes_sent: float = 0.0
    round_bytes_received: float = 0.0
    """Mean bytes of one training round: coordinator -> sites, sites -> coordinator (all sites)."""
    encoder: str | None = None
    setting: str | None = None
    fraction: float | None = None
    site: int | None = None
    """Local-only arms: the site (of the partition) that trained alone."""
    local_of: str | None = None
    """Local-only arms: the federated arm whose partition gave the site its patients."""
    partition: str | None = None
    """Federated and local-only arms: the partition the sites come from (equal = same sites)."""

    def value(self, task: str, metric: str) -> float:
        """The run's own metric (central, else the sites'); a metric only the prediction file gives
        (e.g. ``dice/lv_cavity@ED``) is its interval's estimate."""
        central, sites = self.central.get(task, {}), self.sites.get(task, {})
        if metric not in central and metric not in sites and metric in self.ci.get(task, {}):
            return float(self.ci[task][metric][0])
        return float((central if metric in central else sites).get(metric, math.nan))


def collect_arm(exp: Experiment, arm: str, run_dir: Path, *, wall_seconds: float = 0.0,
                coordinator_cpu: float = 0.0, **extra: Any) -> ArmResult:
    """The arm's results from ``run_dir/history.json`` (+ ``predictions/<task>.npz`` for intervals)."""
    from fedecho.report.rundir import load_history

    records = load_history(run_dir)
    final = {r.phase.split(":", 1)[1]: r for r in records if r.phase.startswith("evaluate:")}
    missing = [task for task in exp.tasks if task not in final]
    if missing:
        raise ValueError(f"{run_dir}: the run has no final evaluation of {', '.join(missing)} (did it finish?)")
    timing = run_dir / "arm.json"
    if wall_seconds == 0.0 and timing.is_file():  # read back: keep the timing of the run that made it
        saved = json.loads(timing.read_text())
        wall_seconds, coordinator_cpu = saved["wall_seconds"], saved["coordinator_cpu"]
    else:
        timing.write_text(json.dumps({"wall_seconds": wall_seconds, "coordinator_cpu": coordinator_cpu}))
    training = [r for r in records if r.phase.startswith(("adapt:", "pretrain"))]
    site_cpu = sum(values.get(MetricKey.CPU_SECONDS, 0.0) for r in records for values in r.sites_train.values())
    result = ArmResult(
        arm=arm, run_dir=str(run_dir), central={t: dict(r.central) for t, r in final.items()},
        sites={t: dict(r.evaluate) for t, r in final.items()},
        wall_seconds=wall_seconds, cpu_seconds=site_cpu + coordinator_cpu,
        rounds=sum(1 for r in records if r.phase.startswith(("adapt:", "pretrain"))),
        bytes_sent=sum(r.bytes_sent for r in records), bytes_received=sum(r.bytes_received for r in records),
        round_bytes_sent=_mean([r.bytes_sent for r in training]),
        round_bytes_received=_mean([r.bytes_received for r in training]),
        **extra,
    )
    result.ci = {task: _intervals(run_dir / "predictions" / f"{task}.npz") for task in exp.tasks}
    return result


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _intervals(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    from fedecho.report.bootstrap import prediction_cis
    from fedecho.report.predictions import load_predictions

    return {k: [float(x) for x in v] for k, v in prediction_cis(load_predictions(path)).items()}


def _ci_key(exp_metric: str, ci: dict[str, list[float]]) -> str | None:
    """The interval of a metric: the same name, '/' spelled '_', or an LVH caliper's mae_mm as mae."""
    for key in (exp_metric, exp_metric.replace("/", "_"), exp_metric.replace("mae_mm", "mae")):
        if key in ci:
            return key
    return None


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _with_ci(arm: ArmResult, task: str, metric: str) -> str:
    text = _fmt(arm.value(task, metric))
    ci = arm.ci.get(task, {})
    key = _ci_key(metric, ci)
    if key is not None:
        _, low, high = ci[key]
        text += f" ({low:.3f}–{high:.3f})"
    return text


def experiment_rows(exp: Experiment, results: dict[str, ArmResult]) -> list[dict[str, Any]]:
    """One row per target and federated arm: published · local-only (mean, worst site) · federated ·
    pooled · federated / pooled."""
    if any(r.fraction is not None for r in results.values()):
        pairs = []
        for target in exp.targets:
            goal = target.published.fraction or 1.0
            fractions = sorted({r.fraction for r in results.values() if r.fraction is not None})
            nearest = min(fractions, key=lambda f: abs(math.log(f) - math.log(goal)))
            # one row per encoder arm that ran (pretraining ones in spec order, random last)
            ran = {r.encoder for r in results.values()}
            encoders = [e for e in exp.encoders if e != "random" and e in ran] + (["random"] if "random" in ran else [])
            for encoder in encoders:
                local = [r for r in results.values()
                         if r.setting == "local" and r.encoder == encoder and r.fraction == nearest]
                pairs.append((target, f"{encoder}, {nearest * 100:g} % labels",
                              results.get(f"{encoder}-pooled-{nearest:g}"),
                              results.get(f"{encoder}-federated-{nearest:g}"), local))
    else:
        pairs = [(target, arm, results.get("pooled"), result,
                  [r for r in results.values() if r.local_of is not None and r.partition == result.partition])
                 for target in exp.targets for arm, result in results.items()
                 if arm != "pooled" and result.local_of is None]
    rows = []
    for target, name, pooled, federated, local in pairs:
        p = pooled.value(target.task, target.metric) if pooled else math.nan
        f = federated.value(target.task, target.metric) if federated else math.nan
        mean, mean_text, worst, worst_text = local_summary(local, target.task, target.metric)
        rows.append({"experiment": exp.name, "arm": name, "task": target.task, "metric": target.metric,
                     "published": target.published.value, "local_mean": mean, "local_worst": worst,
                     "local_sites": len(local), "pooled": p, "federated": f,
                     "ratio": f / p if p and not math.isnan(p) else math.nan,
                     "published_text": _fmt(target.published.value), "local_mean_text": mean_text,
                     "local_worst_text": worst_text,
                     "pooled_text": _with_ci(pooled, target.task, target.metric) if pooled else "n/a",
                     "federated_text": _with_ci(federated, target.task, target.metric) if federated else "n/a"})
    return rows


def local_summary(local: list[ArmResult], task: str, metric: str) -> tuple[float, str, float, str]:
    """(mean, its text with interval, worst site's value, its text) over local-only arms."""
    if not local:
        return math.nan, "n/a", math.nan, "n/a"
    from fedecho.tasks.selection import metric_direction

    values = [arm.value(task, metric) for arm in local]
    mean = float(sum(values) / len(values))
    try:
        pick = min if metric_direction(metric) == "max" else max
    except ValueError:
        pick = min
    worst = pick(range(len(local)), key=lambda i: values[i] if not math.isnan(values[i]) else -math.inf)
    mean_text = _fmt(mean)
    interval = _joint_interval([Path(a.run_dir) / "predictions" / f"{task}.npz" for a in local], metric)
    if interval is not None:
        mean_text += f" ({interval[0]:.3f}–{interval[1]:.3f})"
    site = local[worst].site
    worst_text = _with_ci(local[worst], task, metric) + (f" [site {site}]" if site is not None else "")
    return mean, mean_text, values[worst], worst_text


def _joint_interval(paths: list[Path], metric: str) -> tuple[float, float] | None:
    """Bootstrap interval of the mean over models of a per-item-mean metric: each test item's value
    is averaged over the models (same items, same order), then patients are resampled once."""
    if not paths or not all(p.is_file() for p in paths):
        return None
    import numpy as np

    from fedecho.report.bootstrap import prediction_cis
    from fedecho.report.predictions import Predictions, load_predictions

    files = [load_predictions(p) for p in paths]
    kind, first = files[0].kind, files[0]
    patients = first.get("patients")
    if any(f.kind != kind or (patients is not None and not np.array_equal(f.get("patients"), patients)) for f in files):
        return None
    extra = {"patients": patients} if patients is not None else {}
    if kind == "segmentation" and all("sample_dice" in f for f in files):
        if any(f["sample_dice"].shape != first["sample_dice"].shape for f in files):
            return None
        arrays = {"images": first["images"], "masks": first["masks"], "pred_masks": first["pred_masks"],
                  "sample_dice": np.mean([f["sample_dice"] for f in files], axis=0),
                  "structure_names": first["structure_names"], **extra}
        phases = first.get("phases")
        if phases is not None and all(np.array_equal(f.get("phases"), phases) for f in files):
            arrays["phases"] = phases
    elif kind == "regression":
        if any(f["targets"].shape != first["targets"].shape for f in files):
            return None
        errors = np.mean([np.abs(f["preds"].astype(np.float64) - f["targets"]) for f in files], axis=0)
        # |preds - targets| of this file is the mean absolute error of the models, item by item
        arrays = {"preds": first["targets"] + errors, "targets": first["targets"], **extra}
        if "quantities" in first:
            arrays["quantities"] = first["quantities"]
    else:
        return None
    cis = prediction_cis(Predictions(first.name, kind, arrays))
    key = _ci_key(metric, cis)
    return (cis[key][1], cis[key][2]) if key else None


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| experiment | arm | task | metric | published | local-only mean | local-only worst | federated | pooled "
             "| federated / pooled |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['arm']} | {r['task']} | {r['metric']} | {r['published_text']} | "
                     f"{r.get('local_mean_text', 'n/a')} | {r.get('local_worst_text', 'n/a')} | "
                     f"{r['federated_text']} | {r['pooled_text']} | {_fmt(r['ratio'])} |")
    return lines


def write_results(exp: Experiment, size: str, out: Path, results: dict[str, ArmResult], *,
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """``provenance``: command, git commit, machine (fedecho.experiments.provenance), stored as is,
    with the CPU and wall time of every arm summed."""
    rows = experiment_rows(exp, results)
    payload = {"experiment": exp.name, "size": size, "title": exp.title, "seed": exp.seed, "dataset": exp.dataset,
               "method": exp.method, "backbone": exp.backbone, "targets": [asdict(t) for t in exp.targets],
               "rows": rows, "arms": {k: asdict(v) for k, v in results.items()},
               "cpu_seconds": sum(a.cpu_seconds for a in results.values()),
               "wall_seconds": sum(a.wall_seconds for a in results.values()),
               "provenance": provenance or {}}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
    lines = [f"# {exp.title} ({size})", "",
             f"Seed: {exp.seed}. Dataset: {exp.dataset}. Backbone: {exp.backbone}.", "", f"Method: {exp.method}", "",
             "Published:", ""]
    for target in exp.targets:
        pub = target.published
        lines.append(f"- {target.task}: {pub.metric} {_fmt(pub.value)} — {pub.source}."
                     + (f" {pub.note}" if pub.note else ""))
    if provenance:
        lines += ["", f"Command: `{provenance.get('command')}` at commit {provenance.get('commit')}"
                  + (" (with uncommitted changes)" if provenance.get("dirty") else "")
                  + f"; CPU {payload['cpu_seconds'] / 60:.1f} min, wall {payload['wall_seconds'] / 60:.1f} min "
                  f"(all arms); machine: {provenance.get('machine', {}).get('cpus')} CPUs, "
                  f"GPU {provenance.get('machine', {}).get('gpu') or 'none'}."]
    lines += ["", *summary_table(rows), "",
              "Local-only: each site trains alone on its own patients (same rounds × epochs), tested on the pooled "
              "test split; mean over sites (interval: patients resampled jointly for all sites) and the worst site.",
              "", "## Arms", "",
              "CPU time: the sites' training rounds (all threads) plus the coordinator process. "
              "kB / round: one training round's bytes, coordinator to all sites · all sites to coordinator.", ""]
    for target in exp.targets:
        metrics = [target.metric, *[m for m in target.report_metrics if m != target.metric]]
        lines += [f"### {target.task}", "",
                  "| arm | " + " | ".join(metrics) + " | CPU min | wall min | MB sent | kB / round (down · up) | report |",
                  "|---|" + "---|" * (len(metrics) + 5)]
        for name, arm in results.items():
            report = Path(arm.run_dir) / "report" / "report.md"
            link = f"[report]({report.relative_to(out)})" if report.is_file() else "-"
            lines.append(f"| {name} | " + " | ".join(_with_ci(arm, target.task, m) for m in metrics)
                         + f" | {arm.cpu_seconds / 60:.1f} | {arm.wall_seconds / 60:.1f} | "
                         f"{arm.bytes_sent / 1e6:.1f} | {arm.round_bytes_sent / 1e3:.1f} · {arm.round_bytes_received / 1e3:.1f} | {link} |")
        lines.append("")
    if any(r.fraction is not None for r in results.values()):
        for target in exp.targets:
            lines += _fraction_section(exp, target, out, results)
    lines += _clinical_section(out, results)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return payload


def _clinical_section(out: Path, results: dict[str, ArmResult]) -> list[str]:
    """LV area, volumes and EF from the arms' predicted vs expert ED/ES masks + Bland–Altman of EF
    (pooled and federated arms side by side)."""
    from fedecho.report.clinical import clinical_table, plot_clinical
    from fedecho.report.figure import save_figure

    files = {name: Path(arm.run_dir) / "clinical.npz" for name, arm in results.items()
             if (Path(arm.run_dir) / "clinical.npz").is_file()}
    if not files:
        return []
    lines = ["## Clinical read-outs (lv_seg, test patients with ED and ES)", "",
             "Single-plane Simpson (20 disks) on the model's input grid; model vs expert masks. Arms with "
             "per-site models (FedBN, fedsa) have no global model to read out.", "", *clinical_table(files), ""]
    shown = {name: path for name, path in files.items() if results[name].local_of is None and results[name].setting != "local"}
    if shown:
        path = save_figure(plot_clinical(shown, "ef_pct"), out / "bland_altman_ef.png")
        lines += [f"![Bland–Altman of EF, model vs expert]({path.name})", ""]
    return lines


def _fraction_section(exp: Experiment, target: Target, out: Path, results: dict[str, ArmResult]) -> list[str]:
    from fedecho.report.figure import save_figure
    from fedecho.report.fractions import fraction_table, plot_label_fraction_curves

    rows = []
    local: dict[tuple[str, float], list[ArmResult]] = {}
    for arm in results.values():
        if arm.fraction is None:
            continue
        if arm.setting == "local":  # one row per encoder and fraction: the mean over the sites alone
            local.setdefault((arm.encoder or "ssl", arm.fraction), []).append(arm)
            continue
        ci = arm.ci.get(target.task, {})
        key = _ci_key(target.metric, ci)
        low, high = (ci[key][1], ci[key][2]) if key else (math.nan, math.nan)
        rows.append({"arm": arm.encoder or "ssl", "setting": arm.setting, "fraction": arm.fraction, "metric": target.metric,
                     "value": arm.value(target.task, target.metric), "low": low, "high": high})
    for (encoder, fraction), arms in local.items():
        interval = _joint_interval([Path(a.run_dir) / "predictions" / f"{target.task}.npz" for a in arms], target.metric)
        low, high = interval or (math.nan, math.nan)
        rows.append({"arm": encoder, "setting": "local", "fraction": fraction, "metric": target.metric,
                     "value": _mean([a.value(target.task, target.metric) for a in arms]), "low": low, "high": high})
    figure = plot_label_fraction_curves(rows)
    path = out / f"label_fractions_{target.task}.png"
    save_figure(figure, path)
    return [f"## Label fractions: {target.task}", "", *fraction_table(rows), "",
            f"![label-fraction curves, {target.task}]({path.name})", ""]
