"""Multi-task adapters: one frozen encoder, one named LoRA adapter and one head per task.

The ``adapt`` phase trains, per task, a LoRA adapter on a shared frozen encoder plus the task's
head (built by :mod:`fedecho.tasks` and handed to the bank). Federation aggregates each task's
tensors with the same task's tensors from other sites only: :meth:`AdapterBank.task_state_dict`
is exactly what travels for one task.

Tasks never mix:

- the encoder's base weights are frozen (``requires_grad=False``) and its BatchNorm layers are
  frozen too (running statistics fixed), so training one task cannot move shared tensors;
- :meth:`AdapterBank.activate` routes the forward pass through one adapter and one head and makes
  only those trainable; the other tasks' tensors take no part in the graph and get no gradient.
  Build optimizers from :meth:`AdapterBank.trainable_parameters` after activating.

Use with a task (``Task.forward(backbone, head, batch)``)::

    bank.activate("lv_seg")
    outputs = task.forward(bank.encoder, bank.head(), batch)

or ``bank(x)``, which feeds the active head with ``encoder.forward_embed(x)`` or, for heads added
with ``head_input="features"``, with ``encoder.forward_features(x)``.

Files: :meth:`AdapterBank.save` writes ``<task>.safetensors`` per task (its task state dict, with
its LoRA config and head input in the metadata); :meth:`AdapterBank.load` reads them back into
tasks already added (heads are code, so the caller builds them). The encoder is not saved here:
it is the pretraining phase's checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fedecho.adapters.lora import (
    AdapterStateError,
    apply_lora,
    compare_state_dicts,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    set_active_adapter,
)
from fedecho.config.model import LoraConfig
from fedecho.models.base import Backbone
from fedecho.models.norm import freeze_batch_norms

__all__ = ["AdapterBank", "HeadInput"]

HeadInput = Literal["embed", "features"]
_ADAPTER, _HEAD = "adapter.", "head."
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_FORMAT = "fedecho-task-adapter/1"


class AdapterBank(nn.Module):
    """A frozen :class:`~fedecho.models.Backbone` with per-task LoRA adapters and heads.

    ``encoder`` is frozen and its BatchNorm layers turned into fixed affine maps at construction;
    it is modified in place (adapters are injected into it).
    """

    def __init__(self, encoder: Backbone) -> None:
        super().__init__()
        freeze_batch_norms(encoder)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        self._lora: dict[str, LoraConfig] = {}
        self._head_input: dict[str, HeadInput] = {}
        self._head_trainable: dict[str, dict[str, bool]] = {}
        self._active: str | None = None

    # --- tasks ---------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """Task names in the order they were added."""
        return list(self._lora)

    @property
    def active(self) -> str | None:
        """The active task (None before the first :meth:`add_task`)."""
        return self._active

    def _require(self, name: str) -> None:
        if name not in self._lora:
            raise ValueError(
                f"unknown task {name!r}; the bank holds: {', '.join(self.tasks) or 'no task yet'}"
            )

    def add_task(
        self, name: str, lora_cfg: LoraConfig, head: nn.Module, *, head_input: HeadInput = "embed"
    ) -> None:
        """Add task ``name``: a LoRA adapter (``lora_cfg``) on the encoder and ``head``.

        ``head`` is called on ``encoder.forward_embed(x)`` (B, embed_dim) or, with
        ``head_input="features"``, on ``encoder.forward_features(x)``. The new task becomes active.
        """
        if name in self._lora:
            raise ValueError(f"task {name!r} is already in the bank; pick another name")
        if not isinstance(name, str) or not _TASK_NAME.match(name) or hasattr(self.heads, name):
            raise ValueError(
                f"task name {name!r} must be letters, digits, '_' or '-' (no dots, not a ModuleDict "
                f"attribute such as 'keys'); e.g. 'lv_seg'"
            )
        if head_input not in ("embed", "features"):
            raise ValueError(f"head_input={head_input!r} must be 'embed' or 'features'")
        if head_input == "features" and not self.encoder.has_spatial_neck:
            raise ValueError(
                f"task {name!r}: head_input='features' needs feature maps, but {self.encoder.name} has no "
                f"spatial neck; use head_input='embed' or a backbone with feature maps"
            )
        if not isinstance(head, nn.Module):
            raise ValueError(f"task {name!r}: head must be an nn.Module, got {type(head).__name__}")
        if any(head is other for other in self.heads.values()):
            raise ValueError(
                f"task {name!r}: this head module already belongs to another task; build a new one"
            )
        self.heads[name] = head
        try:
            apply_lora(self.encoder, lora_cfg, adapter_name=name)  # checks name and targets first
        except Exception:
            del self.heads[name]
            raise
        self._lora[name] = lora_cfg
        self._head_input[name] = head_input
        self._head_trainable[name] = {n: p.requires_grad for n, p in head.named_parameters()}
        self.activate(name)

    def activate(self, name: str) -> None:
        """Route the forward pass through task ``name``'s adapter and head; only those train."""
        self._require(name)
        set_active_adapter(self.encoder, name)
        for task, head in self.heads.items():
            flags = self._head_trainable[task]
            for pname, parameter in head.named_parameters():
                parameter.requires_grad_(task == name and flags.get(pname, True))
        self._active = name

    def head(self, name: str | None = None) -> nn.Module:
        """Task ``name``'s head (the active task's by default)."""
        name = self._active_or(name)
        return self.heads[name]

    def lora_config(self, name: str) -> LoraConfig:
        """The :class:`LoraConfig` task ``name`` was added with."""
        self._require(name)
        return self._lora[name]

    def _active_or(self, name: str | None) -> str:
        if name is None:
            if self._active is None:
                raise ValueError("the bank has no task yet; call add_task first")
            return self._active
        self._require(name)
        return name

    def trainable_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        """Parameters task ``name`` trains: its adapter's, then its head's trainable ones.

        Activate the task first (the forward pass uses the active task only).
        """
        name = self._active_or(name)
        flags = self._head_trainable[name]
        adapter = list(lora_parameters(self.encoder, name).values())
        head = [p for n, p in self.heads[name].named_parameters() if flags.get(n, True)]
        return adapter + head

    # --- forward -------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Any:
        """Active head on the encoder's embedding (B, embed_dim) or feature maps of ``x``."""
        name = self._active_or(None)
        head = self.heads[name]
        if self._head_input[name] == "features":
            return head(self.encoder.forward_features(x))
        return head(self.encoder.forward_embed(x))

    # --- state ---------------------------------------------------------------------------------

    def task_state_dict(self, name: str) -> dict[str, Tensor]:
        """Task ``name``'s tensors and nothing else: ``adapter.<lora key>`` and ``head.<key>``
        (CPU copies). This is what federation sends for the task."""
        self._require(name)
        state = {_ADAPTER + k: v for k, v in lora_state_dict(self.encoder, name).items()}
        state.update(
            {_HEAD + k: v.detach().to("cpu", copy=True) for k, v in self.heads[name].state_dict().items()}
        )
        return state

    def load_task_state_dict(self, name: str, state: Mapping[str, Tensor]) -> None:
        """Load :meth:`task_state_dict` output into task ``name``, strictly: any missing,
        unexpected, misshapen or non-finite tensor raises :class:`AdapterStateError` listing all
        of them, and nothing is loaded."""
        self._require(name)
        problems = self._task_state_problems(name, state)
        if problems:
            raise AdapterStateError(
                f"state for task {name!r} does not fit:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        load_lora_state_dict(self.encoder, _strip(state, _ADAPTER), name)
        self.heads[name].load_state_dict(_strip(state, _HEAD), strict=True)

    def _task_state_problems(self, name: str, state: Mapping[str, Tensor]) -> list[str]:
        stray = sorted(k for k in state if not k.startswith((_ADAPTER, _HEAD)))
        problems = [f"keys outside 'adapter.' / 'head.': {', '.join(stray[:20])}"] if stray else []
        adapter_expected = lora_parameters(self.encoder, name)
        problems += [f"adapter {p}" for p in compare_state_dicts(adapter_expected, _strip(state, _ADAPTER))]
        problems += [
            f"head {p}" for p in compare_state_dicts(self.heads[name].state_dict(), _strip(state, _HEAD))
        ]
        return problems

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``<directory>/<task>.safetensors`` for every task; returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in self.tasks:
            state = {k: v.contiguous() for k, v in self.task_state_dict(name).items()}
            metadata = {
                "format": _FORMAT,
                "task": name,
                "lora": json.dumps(asdict(self._lora[name]), sort_keys=True),
                "head_input": self._head_input[name],
                "encoder": self.encoder.name,
            }
            path = directory / f"{name}.safetensors"
            save_file(state, str(path), metadata=metadata)
            paths.append(path)
        return paths

    def load(self, directory: str | Path, tasks: Iterable[str] | None = None) -> None:
        """Load ``<directory>/<task>.safetensors`` into each of ``tasks`` (default: all tasks).

        Every file must exist and match the task's LoRA config, head input and encoder; all
        problems are reported together before anything is loaded.
        """
        directory = Path(directory)
        names = list(tasks) if tasks is not None else self.tasks
        for name in names:
            self._require(name)
        problems, states = [], {}
        for name in names:
            path = directory / f"{name}.safetensors"
            if not path.is_file():
                problems.append(f"{path}: file not found (saved tasks: {_saved(directory)})")
                continue
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    metadata = handle.metadata() or {}
                    state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
            except Exception as err:  # noqa: BLE001 - any reader failure is one clear problem
                problems.append(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})")
                continue
            mismatch = self._metadata_problems(name, metadata)
            if mismatch:
                problems.append(f"{path}: {mismatch}")
                continue
            state_problems = self._task_state_problems(name, state)
            if state_problems:
                problems.append(f"{path}: {'; '.join(state_problems)}")
                continue
            states[name] = state
        if problems:
            raise AdapterStateError(
                "cannot load the adapter bank:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        for name, state in states.items():
            self.load_task_state_dict(name, state)

    def _metadata_problems(self, name: str, metadata: Mapping[str, str]) -> str:
        if metadata.get("format") != _FORMAT:
            return (
                f"not a FedEcho task adapter file (format {metadata.get('format')!r}, expected {_FORMAT!r})"
            )
        saved_lora = json.loads(metadata.get("lora", "{}"))
        wanted_lora = json.loads(json.dumps(asdict(self._lora[name])))
        differences = [
            f"{k}: file {saved_lora.get(k)!r}, bank {v!r}"
            for k, v in wanted_lora.items()
            if saved_lora.get(k) != v
        ]
        if differences:
            return (
                f"LoRA config differs from task {name!r} ({'; '.join(differences)}); "
                f"add the task with the saved config"
            )
        if metadata.get("head_input") != self._head_input[name]:
            saved = metadata.get("head_input")
            return f"head_input {saved!r} differs from the bank's {self._head_input[name]!r}"
        if metadata.get("encoder") != self.encoder.name:
            return f"saved for encoder {metadata.get('encoder')!r}, the bank's is {self.encoder.name!r}"
        return ""


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _saved(directory: Path) -> str:
    found = sorted(p.stem for p in directory.glob("*.safetensors")) if directory.is_dir() else []
    return ", ".join(found) or "none"
