"""Run one reproduction experiment: the pooled arm, every federated arm and the local-only arms
(and, for label-fraction experiments, each encoder arm at each fraction), then collect one table
row per federated arm.

Local-only arms: for each distinct partition of the federated arms run, one one-site run per site
(``local-<first federated arm with that partition>-<k>``) that trains and validates on site k's
patients of exactly that partition alone (``data.partition.only_site=k``), for the same rounds ×
local epochs, and is tested on the pooled test split like every other arm. A one-site Flower
simulation (not a separate ``fedecho train``) so that the optimiser, schedule, evaluation and CPU
accounting are those of the pooled and federated arms; only the data differs.

Every arm is a Flower simulation of the experiment's config (:func:`fedecho.federation.simulation.
simulate`), in its own run directory under ``OUT/<arm>``. An arm whose run directory already holds a
finished run is read back, not run again; one that holds a checkpoint is resumed — so a long
experiment interrupted half-way continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fedecho.experiments.results import ArmResult, collect_arm, write_results
from fedecho.experiments.spec import PRETEXT_INIT, Experiment
from fedecho.federation.ray_session import shared_ray

__all__ = ["LOCAL", "POOLED", "PRETEXT_INIT", "arm_overrides", "local_arms", "run_experiment"]

log = logging.getLogger(__name__)

#: overrides that turn any federated arm into the pooled (one-site) arm
POOLED = ["federation.num_sites=1", "federation.strategy.name=fedavg", "federation.strategy.min_sites=1",
          "federation.strategy.local_norms=false", "federation.lora_aggregation=fedavg", "data.partition.method=iid"]
#: overrides that turn a federated arm into the local-only run of one of its sites (+ the partition's
#: num_sites and only_site): one site, and a single update is its own average under any aggregation
LOCAL = ["federation.num_sites=1", "federation.strategy.name=fedavg", "federation.strategy.min_sites=1",
         "federation.strategy.local_norms=false", "federation.lora_aggregation=fedavg", "federation.central_eval=true"]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def data_overrides(exp: Experiment, size: str, data_root: str | None) -> list[str]:
    """``data.root=...`` for sizes that read the real dataset; a clear error where it is absent."""
    if not exp.uses_real_data(size):
        return []
    root = data_root or exp.data_root
    if root is None:
        raise FileNotFoundError(f"experiment {exp.name} ({size}) reads {exp.dataset} data: pass --data-root PATH")
    path = Path(root)
    if not path.is_absolute():
        path = (_repo_root() / path) if (_repo_root() / path).exists() else path.resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"experiment {exp.name} ({size}) reads the {exp.dataset} dataset, not found at {path}; download it "
            f"(see README, 'Data') and pass --data-root PATH, or run --size smoke (synthetic data)")
    return [f"data.root={path}"]


def arm_overrides(exp: Experiment, size: str, arm: str, *, data_root: str | None = None,
                  extra: list[str] | None = None) -> list[str]:
    """The Hydra overrides of one arm (``pooled`` or a federated arm's name), without run_dir/init."""
    base = [*exp.overrides, *exp.size_overrides(size), *data_overrides(exp, size, data_root)]
    if arm == "pooled":
        return [*base, *exp.pooled, *POOLED, *(extra or [])]
    if arm not in exp.federated:
        raise ValueError(f"experiment {exp.name} has no arm {arm!r}; arms: pooled, {', '.join(exp.federated)}")
    return [*base, *exp.federated[arm], *(extra or [])]


def local_arms(exp: Experiment, size: str, federated: list[str], *, data_root: str | None = None,
               extra: list[str] | None = None, encoder: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The local-only arms of ``federated`` arms: ``{name: {"of": arm, "site": k, "partition": key,
    "overrides": [...]}}``, one per site of each distinct partition (arms sharing a partition share
    its local arms; they are named after the first)."""
    from fedecho.config.compose import compose_run_config

    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for arm in federated:
        overrides = arm_overrides(exp, size, arm, data_root=data_root, extra=extra)
        cfg = compose_run_config([*overrides, *(encoder or [])], config_name=exp.config)
        key = partition_key(cfg)
        if key in seen:
            continue
        seen.add(key)
        n = cfg.federation.num_sites
        for k in range(n):
            out[f"local-{arm}-{k}"] = {"of": arm, "site": k, "partition": key, "overrides": [
                *overrides, *LOCAL, f"data.partition.num_sites={n}", f"data.partition.only_site={k}"]}
    return out


def partition_key(cfg: Any) -> str:
    """The partition a run's sites come from (arms with equal keys have the same sites)."""
    import dataclasses

    partition = dataclasses.replace(cfg.data.partition, num_sites=cfg.federation.num_sites, only_site=None)
    return f"{partition!r} label_fraction={cfg.data.label_fraction}"


def _finished(run_dir: Path, tasks: list[str]) -> bool:
    history = run_dir / "history.json"
    if not history.is_file():
        return False
    evaluated = {r.get("phase") for r in json.loads(history.read_text())}
    return all(f"evaluate:{task}" in evaluated for task in tasks)


def _simulate(exp: Experiment, overrides: list[str], run_dir: Path, *, cpus: int | None,
              cpus_per_site: float) -> tuple[float, float]:
    """Run (or resume, or reuse) one simulation; (wall seconds, coordinator-process CPU seconds)."""
    from fedecho.federation.simulation import simulate

    if _finished(run_dir, exp.tasks):
        log.info("%s: finished run found, reading it back", run_dir)
        return 0.0, 0.0
    resume = (run_dir / "checkpoint").is_dir()
    cpu = time.process_time()
    result = simulate(exp.config, [*overrides, f"federation.run_dir={run_dir}"], cpus_per_site=cpus_per_site,
                      total_cpus=cpus, resume=resume)
    return result["seconds"], time.process_time() - cpu


def _clinical(exp: Experiment, overrides: list[str], run_dir: Path) -> None:
    """LV area / volume / EF read-outs of an lv_seg arm's global model (``run_dir/clinical.npz``);
    arms without a central model (FedBN, fedsa: per-site models) or without ED/ES pairs get none."""
    if "lv_seg" not in exp.tasks or (run_dir / "clinical.npz").is_file():
        return
    from fedecho.config.compose import compose_run_config
    from fedecho.report.clinical import predict_clinical

    cfg = compose_run_config(overrides, config_name=exp.config)
    if not cfg.federation.central_eval:
        return
    try:
        path = predict_clinical(cfg, run_dir)
    except (ValueError, FileNotFoundError) as err:
        log.warning("%s: no clinical read-out (%s)", run_dir, err)
        return
    if path is not None:
        log.info("%s: clinical read-outs in %s", run_dir, path)


def _pretext(exp: Experiment, size: str, out: Path) -> Path | None:
    """The one-site supervised pretext of the experiment (``fedecho train``), trained once per size."""
    overrides = exp.pretext_for(size)
    if not overrides:
        return None
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.local import train_local

    folder = out / "pretext"
    for name in ("best.pt", "last.pt"):
        if (folder / "checkpoints" / name).is_file() and (folder / "results.json").is_file():
            return folder / "checkpoints" / name
    cfg = compose_run_config([*overrides, f"train.out_dir={folder}"], config_name="train")
    log.info("%s: pretext training (%s)", exp.name, " ".join(overrides))
    train_local(cfg)
    best = folder / "checkpoints" / "best.pt"
    return best if best.is_file() else folder / "checkpoints" / "last.pt"


def _export_pretrained(exp: Experiment, overrides: list[str], run_dir: Path) -> Path:
    """The pretrain phase's global encoder of ``run_dir`` as a checkpoint ``init=`` can start from."""
    import torch

    from fedecho.config.compose import compose_run_config
    from fedecho.engine.build import build_pretrain_learner
    from fedecho.federation.state import RunCheckpoint

    path = run_dir / "pretrained_encoder.pt"
    if path.is_file():
        return path
    checkpoint = RunCheckpoint.load(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: the pretraining run left no checkpoint")
    learner = build_pretrain_learner(compose_run_config(overrides, config_name=exp.config))
    learner.load_shared_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                                    checkpoint.phase_arrays("pretrain").items()})
    torch.save({"learner": learner.state_dict()}, path)
    return path


def run_experiment(exp: Experiment, size: str = "smoke", *, out: str | Path | None = None,
                   arms: list[str] | None = None, data_root: str | None = None, extra: list[str] | None = None,
                   cpus: int | None = None, cpus_per_site: float = 1.0, first_arm: bool = False,
                   argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``exp`` at ``size``; returns the results written to ``OUT/results.json`` (+ results.md).
    ``first_arm``: only the pooled arm and the first federated arm (CI's smoke runs; label-fraction
    experiments: the first encoder in every setting, the others federated only). ``argv``: the
    command recorded with the results (default: this process's command line)."""
    from datetime import datetime, timezone

    from fedecho.experiments.provenance import provenance

    started = datetime.now(timezone.utc)
    out = Path(out or Path("runs") / "experiments" / exp.name / size).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Label-fraction experiments: only the encoder arms that ask for it (init=pretext) start from the
    # pretext, trained when the first of them runs; other experiments: every arm starts from it.
    init = None if exp.fractions_for(size) else _pretext(exp, size, out)
    init_override = [f"init={init}"] if init else []
    # One Ray instance for every arm (Flower's backend alone starts and stops Ray once per arm).
    with shared_ray(cpus or os.cpu_count() or 1):
        results = _run_arms(exp, size, out, arms=arms, data_root=data_root, extra=extra, init_override=init_override,
                            cpus=cpus, cpus_per_site=cpus_per_site, first_arm=first_arm)
    return write_results(exp, size, out, results, provenance=provenance(_repo_root(), started=started, argv=argv))


def _run_arms(exp: Experiment, size: str, out: Path, *, arms: list[str] | None, data_root: str | None,
              extra: list[str] | None, init_override: list[str], cpus: int | None, cpus_per_site: float,
              first_arm: bool) -> dict[str, ArmResult]:
    """Every arm of ``exp`` that is asked for, in order (see :func:`run_experiment`)."""
    from fedecho.config.compose import compose_run_config

    results: dict[str, ArmResult] = {}
    if exp.fractions_for(size):
        results = _fraction_arms(exp, size, out, data_root=data_root, extra=[*init_override, *(extra or [])],
                                 cpus=cpus, cpus_per_site=cpus_per_site, only=arms, first_arm=first_arm)
    else:
        federated = [a for a in exp.federated if not arms or a in arms][:1 if first_arm else None]
        locals_ = local_arms(exp, size, list(exp.federated) if arms else federated, data_root=data_root, extra=extra)
        wanted = arms or ["pooled", *federated, *locals_]
        unknown = [a for a in wanted if a != "pooled" and a not in exp.federated and a not in locals_]
        if unknown:
            raise ValueError(f"experiment {exp.name} has no arm(s) {', '.join(unknown)}; arms: pooled, "
                             f"{', '.join([*exp.federated, *locals_])}")
        for arm in wanted:
            local = locals_.get(arm)
            overrides = [*(local["overrides"] if local else arm_overrides(exp, size, arm, data_root=data_root,
                                                                          extra=extra)), *init_override]
            run_dir = out / arm
            wall, cpu = _simulate(exp, overrides, run_dir, cpus=cpus, cpus_per_site=cpus_per_site)
            info = {"partition": local["partition"], "site": local["site"], "local_of": local["of"]} if local else {}
            if arm in exp.federated:
                info = {"partition": partition_key(compose_run_config(overrides, config_name=exp.config))}
            results[arm] = collect_arm(exp, arm, run_dir, wall_seconds=wall, coordinator_cpu=cpu, **info)
            _clinical(exp, overrides, run_dir)
    return results


def _fraction_arms(exp: Experiment, size: str, out: Path, *, data_root: str | None, extra: list[str],
                   cpus: int | None, cpus_per_site: float, only: list[str] | None,
                   first_arm: bool = False) -> dict[str, ArmResult]:
    """Encoder arm × setting (pooled, the first federated arm, each of its sites alone) × label
    fraction. A pretraining encoder arm pretrains once per setting (all the setting's patients, no
    labels used) and every fraction's adapter run starts from that encoder. An encoder arm with
    ``init=pretext`` starts every run from the experiment's supervised pretext encoder, trained once
    (in ``OUT/pretext``) when the first such run starts. ``first_arm``: the first encoder in every
    setting, every other encoder in the federated setting only."""
    from fedecho.config.compose import compose_run_config

    first = next(iter(exp.federated))
    results: dict[str, ArmResult] = {}
    for encoder, encoder_overrides in exp.encoders.items():
        # (setting, arm name stem, overrides, site): pooled, the first federated arm, and its sites alone
        settings = [("pooled", "pooled", arm_overrides(exp, size, "pooled", data_root=data_root, extra=extra), None),
                    ("federated", "federated", arm_overrides(exp, size, first, data_root=data_root, extra=extra), None)]
        settings += [("local", f"local{v['site']}", v["overrides"], v["site"]) for v in
                     local_arms(exp, size, [first], data_root=data_root, extra=extra, encoder=encoder_overrides).values()]
        if first_arm and encoder != next(iter(exp.encoders)):
            settings = [s for s in settings if s[0] == "federated"]
        for setting, stem, arm_base, site in settings:
            base = [*arm_base, *encoder_overrides]
            pretrains = compose_run_config(base, config_name=exp.config).federation.pretrain.rounds > 0
            init: list[str] = []
            fractions = exp.fractions_for(size)
            for index, fraction in enumerate(fractions):
                name = f"{encoder}-{stem}-{fraction:g}"
                run_dir = out / name
                overrides = [*base, *init, f"data.label_fraction={fraction}"]
                if not only or name in only:
                    overrides = _resolve_pretext(exp, size, out, encoder, overrides)
                    wall, cpu = _simulate(exp, overrides, run_dir, cpus=cpus, cpus_per_site=cpus_per_site)
                    results[name] = collect_arm(exp, name, run_dir, wall_seconds=wall, coordinator_cpu=cpu,
                                                encoder=encoder, setting=setting, fraction=fraction, site=site)
                later = [f"{encoder}-{stem}-{f:g}" for f in fractions[index + 1:]]
                if pretrains and not init and later and (not only or any(n in only for n in later)):
                    # The first fraction's run pretrained the encoder (all patients, no labels): the
                    # other fractions start from it instead of pretraining again (one fraction: none;
                    # a setting none of whose later fractions is asked for: none).
                    if not (run_dir / "checkpoint").is_dir():
                        _simulate(exp, _resolve_pretext(exp, size, out, encoder, overrides), run_dir, cpus=cpus,
                                  cpus_per_site=cpus_per_site)
                    init = [f"init={_export_pretrained(exp, overrides, run_dir)}", "federation.pretrain.rounds=0"]
    return results


def _resolve_pretext(exp: Experiment, size: str, out: Path, encoder: str, overrides: list[str]) -> list[str]:
    """``overrides`` with ``init=pretext`` replaced by the experiment's supervised pretext checkpoint
    (:func:`_pretext`: trained on first use, then read back). Composing a config with the token itself
    is harmless: ``init`` is read only when a run starts."""
    if PRETEXT_INIT not in overrides:
        return overrides
    checkpoint = _pretext(exp, size, out)
    if checkpoint is None:
        raise ValueError(f"experiment {exp.name}: encoder {encoder!r} starts from {PRETEXT_INIT} but the experiment "
                         f"has no pretext at size {size!r} (add pretext: {{{size}: [...]}} to {exp.path})")
    return [f"init={checkpoint}" if o == PRETEXT_INIT else o for o in overrides]
