"""Reproduction experiments: one YAML file per published single-site result in ``simulations/``.

An experiment file names what is reproduced and how FedEcho runs it pooled and federated::

    name: camus_lv_seg                 # = the file stem
    title: Segformer-B0 + LoRA, CAMUS LV segmentation
    seed: Segformer + LoRA             # which published system
    dataset: camus                     # data format; the real data root follows
    data_root: ../shared/data/camus    # default root (relative to the repo); --data-root overrides
    method: ...                        # free text: how the encoder is obtained and trained
    backbone: segformer-b0
    task: lv_seg
    metric: dice/lv_cavity             # the central test metric compared (Trainer.evaluate name)
    report_metrics: [dice]             # further central metrics shown
    published: {value: 0.897, metric: LV Dice, source: "...", note: "..."}
    # or, for multi-task adapter experiments (one frozen encoder, one adapter per task), a list:
    # targets: [{task: view, metric: accuracy, published: {...}}, {task: lv_seg, ...}]
    config: federated                  # the conf/ config the runs start from
    overrides: [...]                   # Hydra overrides for every arm and size
    pretext: {smoke: [...], full: [...]}   # optional, per size: a one-site ``fedecho train`` (conf
                                       # train) whose encoder starts every arm
    pooled: [...]                      # extra overrides for the pooled arm
    federated: {fedavg: [...], ...}    # one federated arm per entry
    sizes: {smoke: [...], full: [...]} # size-specific overrides (smoke runs on synthetic data in CI)
    fractions: {smoke: [0.5], full: [0.01, ..., 1.0]}  # optional, per size: label-fraction curves
    encoders: {simclr: [...], dino: [...], random: [...]}  # with fractions: the encoder arms compared
                                       # (with fractions, only an encoder arm with init=pretext starts
                                       # from the pretext, e.g. pretext: [init=pretext, ...])

The pooled arm is the same run on one site holding every patient, with FedAvg (a single update is
its own average), the same rounds and local epochs: the site's optimiser state and learning-rate
schedule span all rounds, so it is single-site training with the federated run's evaluation,
checkpoints and report. The local-only arms are the same one-site run for each site of each
federated partition, on that site's patients only (see :mod:`fedecho.experiments.runner`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PRETEXT_INIT", "Experiment", "Published", "Target", "list_experiments", "load_experiment",
           "simulations_dir"]

#: an encoder arm's override that starts it from the experiment's supervised pretext encoder
PRETEXT_INIT = "init=pretext"

_REQUIRED = ("title", "seed", "dataset", "method", "backbone", "config", "federated", "sizes")
_KNOWN = (*_REQUIRED, "name", "task", "metric", "published", "targets", "data_root", "report_metrics",
          "overrides", "pretext", "pooled", "fractions", "encoders", "notes")


def simulations_dir() -> Path:
    """The project's ``simulations/`` (``$FEDECHO_SIMULATIONS`` overrides it)."""
    default = Path(__file__).resolve().parents[2] / "simulations"
    return Path(os.environ.get("FEDECHO_SIMULATIONS", default))


@dataclass(frozen=True)
class Published:
    value: float | None
    """None where the design brief gives no figure for the result (``source`` says what exists)."""
    metric: str
    source: str
    note: str = ""
    fraction: float | None = None
    """For label-fraction results: the fraction of labelled patients the figure was taken at."""


@dataclass(frozen=True)
class Target:
    """One published figure: the task whose final central test ``metric`` is compared with it."""

    task: str
    metric: str
    published: Published
    report_metrics: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    seed: str
    dataset: str
    method: str
    backbone: str
    targets: list[Target]
    config: str
    federated: dict[str, list[str]]
    sizes: dict[str, list[str]]
    data_root: str | None = None
    overrides: list[str] = field(default_factory=list)
    pretext: dict[str, list[str]] = field(default_factory=dict)
    pooled: list[str] = field(default_factory=list)
    fractions: dict[str, list[float]] = field(default_factory=dict)
    encoders: dict[str, list[str]] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None

    def size_overrides(self, size: str) -> list[str]:
        if size not in self.sizes:
            raise ValueError(f"experiment {self.name} has no size {size!r}; sizes: {', '.join(self.sizes)}")
        return list(self.sizes[size])

    @property
    def tasks(self) -> list[str]:
        return [t.task for t in self.targets]

    @property
    def task(self) -> str:
        return self.targets[0].task

    def fractions_for(self, size: str) -> list[float]:
        return list(self.fractions.get(size, []))

    def pretext_for(self, size: str) -> list[str]:
        return list(self.pretext.get(size, []))

    def uses_real_data(self, size: str) -> bool:
        """Whether ``size`` reads the dataset from disk (else it runs on generated synthetic data)."""
        return not any(o.startswith("data.format=synthetic") or o.startswith("data=synthetic")
                       for o in self.size_overrides(size))


def load_experiment(name_or_path: str | Path) -> Experiment:
    """An experiment by name (``simulations/<name>.yaml``) or path; every problem in one error."""
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = simulations_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(list_experiments()) or "none"
        raise FileNotFoundError(f"no experiment {str(name_or_path)!r} ({path} not found); known: {known}")
    raw: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an experiment file must be a mapping")
    problems = [f"missing key {k!r}" for k in _REQUIRED if k not in raw]
    problems += [f"unknown key {k!r} (known: {', '.join(_KNOWN)})" for k in raw if k not in _KNOWN]
    if raw.get("name", path.stem) != path.stem:
        problems.append(f"name {raw['name']!r} differs from the file name {path.stem!r}")
    targets = raw.get("targets")
    if targets is None:
        targets = [{k: raw[k] for k in ("task", "metric", "published", "report_metrics") if k in raw}]
    elif any(k in raw for k in ("task", "metric", "published")):
        problems.append("give either targets or task/metric/published, not both")
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        missing = [k for k in ("task", "metric", "published") if k not in target]
        if missing:
            problems.append(f"target {i + 1} misses {', '.join(missing)}")
        published = target.get("published") or {}
        if not isinstance(published, dict) or not {"value", "metric", "source"} <= set(published):
            problems.append(f"target {i + 1}: published needs value, metric and source")
        else:
            extra = sorted(set(published) - {"value", "metric", "source", "note", "fraction"})
            if extra:
                problems.append(f"target {i + 1}: unknown published key(s) {extra} (quote texts with commas)")
    if not isinstance(targets, list) or not targets:
        problems.append("targets must be a non-empty list")
    if not isinstance(raw.get("federated"), dict) or not raw.get("federated"):
        problems.append("federated must map arm names to override lists (at least one arm)")
    sizes = raw.get("sizes")
    if not isinstance(sizes, dict) or "smoke" not in sizes:
        problems.append("sizes must include 'smoke' (synthetic data, runs in CI)")
    if raw.get("fractions") and (not isinstance(raw.get("encoders"), dict) or len(raw["encoders"]) < 2
                                 or "random" not in raw["encoders"]):
        problems.append("fractions need encoders: 'random' and at least one pretraining arm")
    for key in ("pretext", "fractions"):
        value = raw.get(key) or {}
        if not isinstance(value, dict) or any(k not in (sizes or {}) for k in value):
            problems.append(f"{key} must map size names ({', '.join(sizes or {})}) to lists")
    for encoder, overrides in (raw.get("encoders") or {}).items() if isinstance(raw.get("encoders"), dict) else ():
        lacking = [s for s in (raw.get("fractions") or {}) if not (raw.get("pretext") or {}).get(s)]
        if PRETEXT_INIT in (overrides or []) and lacking:
            problems.append(f"encoder {encoder!r} starts from {PRETEXT_INIT} but pretext has no entry for size(s) "
                            f"{', '.join(lacking)}")
    for fraction in [f for v in (raw.get("fractions") or {}).values() for f in v or []]:
        if not 0 < float(fraction) <= 1:
            problems.append(f"fraction {fraction} is not in (0, 1]")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return Experiment(
        name=path.stem, title=raw["title"], seed=raw["seed"], dataset=raw["dataset"], method=raw["method"],
        backbone=raw["backbone"],
        targets=[Target(t["task"], t["metric"], Published(**t["published"]), list(t.get("report_metrics") or []))
                 for t in targets],
        config=raw["config"], federated={k: list(v or []) for k, v in raw["federated"].items()},
        sizes={k: list(v or []) for k, v in sizes.items()}, data_root=raw.get("data_root"),
        overrides=list(raw.get("overrides") or []),
        pretext={k: list(v or []) for k, v in (raw.get("pretext") or {}).items()},
        pooled=list(raw.get("pooled") or []),
        fractions={k: [float(f) for f in v or []] for k, v in (raw.get("fractions") or {}).items()},
        encoders={k: list(v or []) for k, v in (raw.get("encoders") or {}).items()},
        notes=raw.get("notes", ""), path=path,
    )


def list_experiments() -> list[str]:
    folder = simulations_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
