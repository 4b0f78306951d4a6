"""LoRA adapters on FedEcho backbones through peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

How a backbone stays a backbone: :func:`apply_lora` uses peft's functional API
(``peft.functional.inject_adapter_in_model``), which swaps each targeted ``nn.Linear`` /
``nn.Conv{1,2,3}d`` *in place* for a peft LoRA layer wrapping it. No ``PeftModel`` wrapper is
created, so the object you pass in keeps its class, ``forward_embed`` and ``forward_features``;
several named adapters can live side by side (one per task), exactly one active at a time.

Before injecting, :func:`apply_lora`

- checks every target name against the module tree and fails with one error listing targets that
  match nothing, match a layer type peft cannot adapt, or match a grouped / depthwise convolution
  (e.g. Segformer's ``dwconv``: peft needs the rank divisible by the groups);
- freezes BatchNorm (:func:`fedecho.models.norm.freeze_batch_norms`): a frozen base must not move
  through its running statistics, and train-mode BatchNorm mixes samples (breaks DP-SGD). Build
  with ``BackboneConfig(norm="group")`` for trainable per-sample norms instead.

After it, every base parameter has ``requires_grad=False`` and only the new adapter is active and
trainable.

Adapter tensors travel as :func:`lora_state_dict`: keys are ``<module path>.lora_A.weight`` /
``<module path>.lora_B.weight`` relative to the module passed in, without the adapter's name (the
format of peft's ``get_peft_model_state_dict``), so a state dict from one site loads into the same
backbone elsewhere, under any adapter name. :func:`load_lora_state_dict` is strict.

Federated LoRA (:func:`configure_lora_aggregation`, ``federation.lora_aggregation``): averaging A
and B separately (``fedavg``) gives the global update B̄·Ā, which is not the average of the sites'
updates B_k·A_k. ``ffa`` (FFA-LoRA, Sun et al., ICLR 2024) freezes A at its seeded initialisation
(the same at every site and at the coordinator: ``LoraConfig.seed``) and federates only B, so the
averaged update B̄·A equals the average of the sites' B_k·A exactly (ΔW is linear in B).
``fedsa`` (FedSA-LoRA, Guo et al., ICLR 2025) federates A and keeps B at each site: B never
leaves the site, is saved with the site's own state, and each site evaluates its personal model.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.functional import inject_adapter_in_model, set_adapter
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from torch import Tensor, nn

from fedecho.config.model import LORA_AGGREGATIONS, LoraConfig
from fedecho.models.norm import freeze_batch_norms

__all__ = [
    "AdapterStateError",
    "adapter_names",
    "apply_lora",
    "LORA_AGGREGATIONS",
    "check_lora_targets",
    "compare_state_dicts",
    "configure_lora_aggregation",
    "lora_delta_weights",
    "load_lora_state_dict",
    "lora_parameters",
    "lora_state_dict",
    "set_active_adapter",
]

_FACTOR = {"ffa": ".lora_A.", "fedsa": ".lora_B."}  # the factor that stays on the site

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_LISTED = 20


class AdapterStateError(ValueError):
    """An adapter / task state dict that does not fit the model (keys, shapes or values)."""


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "name", type(model).__name__))


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapters injected into ``model``, in insertion order."""
    return list(getattr(model, "peft_config", {}))


def _check_adapter_name(adapter_name: str) -> None:
    if not isinstance(adapter_name, str) or not _NAME.match(adapter_name):
        raise ValueError(
            f"adapter name {adapter_name!r} must be non-empty letters, digits, '_' or '-' (no dots); "
            f"e.g. 'lv_seg'"
        )


def _require_adapter(model: nn.Module, adapter_name: str) -> None:
    names = adapter_names(model)
    if adapter_name not in names:
        raise ValueError(
            f"{_model_name(model)} has no LoRA adapter {adapter_name!r}; its adapters: "
            f"{', '.join(names) or 'none (call apply_lora first)'}"
        )


def _lora_unfit(module: nn.Module) -> str:
    """Why peft cannot put LoRA on ``module`` ("" if it can)."""
    if isinstance(module, nn.Linear):
        return ""
    if type(module) in _CONVS:
        return f"grouped/depthwise convolution, groups={module.groups}" if module.groups > 1 else ""
    if isinstance(module, _CONVS):
        plain = next(c for c in _CONVS if isinstance(module, c)).__name__
        return f"{type(module).__name__}: a Conv subclass peft cannot copy, use a plain {plain}"
    return f"{type(module).__name__}: not a Linear or Conv layer"


def check_lora_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    """Raise ValueError unless every target matches >= 1 layer and every match can take LoRA.

    Matching follows peft (a module's name equals the target or ends with ``"." + target``).
    Adaptable: ``nn.Linear`` (and subclasses), plain ``nn.Conv1d/2d/3d`` with ``groups == 1``.
    """
    modules = [
        (n, m.get_base_layer() if isinstance(m, LoraLayer) else m) for n, m in model.named_modules() if n
    ]
    modules = [(n, m) for n, m in modules if ".lora_" not in n and not n.endswith(".base_layer")]
    problems: list[str] = []
    for target in targets:
        probe = PeftLoraConfig(target_modules=[target])
        matches = [(n, m) for n, m in modules if check_target_module_exists(probe, n)]
        if not matches:
            adaptable = sorted(
                {n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, (nn.Linear, *_CONVS))}
            )
            shown = ", ".join(adaptable[:_MAX_LISTED]) + (" ..." if len(adaptable) > _MAX_LISTED else "")
            problems.append(f"{target!r} matches no module; Linear/Conv layer names end in: {shown}")
            continue
        rejected = [(name, reason) for name, module in matches if (reason := _lora_unfit(module))]
        if rejected:
            examples = "; ".join(f"{name} ({reason})" for name, reason in rejected[:3])
            more = f" and {len(rejected) - 3} more" if len(rejected) > 3 else ""
            problems.append(
                f"{target!r} matches {len(rejected)} module(s) that cannot take LoRA: {examples}{more}; "
                f"leave it out of target_modules or target their Linear/Conv children"
            )
    if problems:
        raise ValueError(
            f"LoRA targets do not fit {_model_name(model)}:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def set_active_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the only active adapter and the only trainable one."""
    _require_adapter(model, adapter_name)
    set_adapter(model, adapter_name)


def apply_lora(model: nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Inject a LoRA adapter named ``adapter_name`` into ``model`` in place; returns ``model``.

    ``model`` is usually a :class:`fedecho.models.Backbone`; targets are ``cfg.target_modules``
    or, when None, ``model.lora_targets``. The new adapter becomes the active one; base weights
    (and other adapters) are frozen. Its initial weights depend only on ``cfg.seed``.
    """
    _check_adapter_name(adapter_name)
    if adapter_name in adapter_names(model):
        raise ValueError(
            f"{_model_name(model)} already has a LoRA adapter {adapter_name!r}; pick another name "
            f"or load new weights into it with load_lora_state_dict"
        )
    targets = cfg.target_modules if cfg.target_modules is not None else getattr(model, "lora_targets", None)
    if not targets:
        raise ValueError(
            f"{_model_name(model)} has no default LoRA targets (lora_targets); set LoraConfig.target_modules"
        )
    targets = tuple(targets)
    check_lora_targets(model, targets)
    freeze_batch_norms(model)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(targets), bias="none"
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(cfg.seed)
        # peft warns when a second adapter is added; several named adapters are the point here
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
        inject_adapter_in_model(peft_cfg, model, adapter_name=adapter_name)
    for name, parameter in model.named_parameters():
        if ".lora_" not in name:
            parameter.requires_grad_(False)
    set_active_adapter(model, adapter_name)
    return model


def lora_parameters(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """``{stable key: parameter}`` of one adapter (keys as in :func:`lora_state_dict`)."""
    _require_adapter(model, adapter_name)
    found: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for attr in module.adapter_layer_names:
            container = getattr(module, attr)
            if adapter_name not in container:
                continue
            entry = container[adapter_name]
            prefix = f"{name}.{attr}" if name else attr
            if isinstance(entry, nn.Parameter):
                found[prefix] = entry
            else:
                for pname, parameter in entry.named_parameters():
                    found[f"{prefix}.{pname}"] = parameter
    return found


def lora_state_dict(model: nn.Module, adapter_name: str) -> dict[str, Tensor]:
    """Detached CPU copies of one adapter's tensors, keyed ``<module>.lora_A.weight`` etc."""
    return {k: p.detach().to("cpu", copy=True) for k, p in lora_parameters(model, adapter_name).items()}


def compare_state_dicts(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """Every difference that makes ``given`` unloadable where ``expected`` lives, in words:
    missing / unexpected keys, shape mismatches, non-tensor, non-float or non-finite values."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:_MAX_LISTED])}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:_MAX_LISTED])}")
    for key in sorted(set(expected) & set(given)):
        value, wanted = given[key], expected[key]
        if not isinstance(value, Tensor):
            problems.append(f"{key}: a {type(value).__name__}, not a tensor")
        elif value.shape != wanted.shape:
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(wanted.shape)}")
        elif value.is_floating_point() != wanted.is_floating_point():
            problems.append(f"{key}: dtype {value.dtype}, expected {wanted.dtype}")
        elif value.is_floating_point() and not torch.isfinite(value).all():
            problems.append(f"{key}: contains NaN or Inf")
    return problems


def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor], adapter_name: str) -> None:
    """Copy ``state`` (from :func:`lora_state_dict`, any adapter name) into adapter
    ``adapter_name`` of ``model``, in place. Strict: any key or shape difference raises
    :class:`AdapterStateError` listing all of them, and nothing is loaded."""
    targets = lora_parameters(model, adapter_name)
    problems = compare_state_dicts(targets, state)
    if problems:
        raise AdapterStateError(
            f"LoRA state for adapter {adapter_name!r} of {_model_name(model)} does not fit:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    with torch.no_grad():
        for key, parameter in targets.items():
            parameter.copy_(state[key].to(device=parameter.device, dtype=parameter.dtype))


def configure_lora_aggregation(learner: nn.Module, mode: str) -> set[str]:
    """Make a LoRA task learner federate its adapter by ``mode`` (one of :data:`LORA_AGGREGATIONS`);
    returns the state-dict names kept on the site.

    ``learner`` is a :class:`fedecho.engine.learners.TaskLearner` with ``encoder="lora"``; its
    ``_local`` names (FedBN's site-local tensors) are never declared, so they never travel and are
    saved with the site's state. ``ffa``: every ``lora_A`` is frozen (``requires_grad=False``) and
    kept local (it stays at the seeded initialisation everywhere); only ``lora_B`` (and the head)
    travel. ``fedsa``: every ``lora_B`` is kept local (trained, never sent); ``lora_A`` travels.
    ``fedavg``: unchanged (A and B both travel and are averaged separately).
    """
    if mode not in LORA_AGGREGATIONS:
        raise ValueError(f"federation.lora_aggregation={mode!r} is unknown; choose one of {', '.join(LORA_AGGREGATIONS)}")
    if mode == "fedavg":
        return set()
    if getattr(learner, "encoder", None) != "lora" or not hasattr(learner, "_local"):
        raise ValueError(f"federation.lora_aggregation={mode} needs encoder=lora (a LoRA adapter to federate); "
                         f"set encoder=lora or federation.lora_aggregation=fedavg")
    factor = _FACTOR[mode]
    kept = {name for name in learner.state_dict() if factor in name}
    if not kept:
        raise ValueError(f"federation.lora_aggregation={mode}: the learner has no {factor.strip('.')} tensors")
    if mode == "ffa":
        for name, parameter in learner.named_parameters():
            if factor in name:
                parameter.requires_grad_(False)
    learner._local = set(learner._local) | kept
    return kept


def lora_delta_weights(model: nn.Module, adapter_name: str) -> dict[str, Tensor]:
    """``{module path: ΔW}``: each adapted layer's weight update ``(alpha / r) · B·A`` (peft's
    ``get_delta_weight``; for a convolution the k×k kernel composed with the 1×1 B)."""
    _require_adapter(model, adapter_name)
    return {name: module.get_delta_weight(adapter_name).detach().cpu()
            for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and adapter_name in module.lora_A}
