"""The learner: what one site trains in one phase, and which of its tensors federation may send.

A :class:`Learner` is an ``nn.Module`` with a loss over a batch. It alone decides what travels and
what stays: its ``shared`` tensors (:meth:`Learner.shared_state_dict`) are the phase's declared
tensors (encoder weights and their BatchNorm statistics in pretraining; one task's LoRA adapter and
head in adaptation); its ``local`` tensors (:meth:`Learner.local_state_dict`: DINO teacher and
centre, FedBN norms, ...) stay on the site and are saved in its per-round snapshot together with
the optimiser, schedule and DP state (:meth:`fedecho.engine.trainer.Trainer.site_state_dict`). A
frozen encoder is neither: the coordinator hands it out once per adapt phase.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["Learner", "SharedSpec"]

SharedSpec = Callable[[str], bool]


class Learner(nn.Module, ABC):
    """Subclasses implement :meth:`loss` and :meth:`is_shared`."""

    @abstractmethod
    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Scalar training loss for ``batch`` and detached values to log."""

    @abstractmethod
    def is_shared(self, name: str) -> bool:
        """Whether state-dict entry ``name`` is a declared (federated) tensor of this phase."""

    def after_optimizer_step(self) -> None:
        """Hook run after every optimiser step (EMA teacher update for DINO)."""

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """Optimiser parameter groups (e.g. DINOv2's layer-wise lr decay); None = one group."""
        return None

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook run before every optimiser step (DINOv2's weight-decay schedule)."""

    def _declared(self, name: str) -> bool:
        # BatchNorm's step counter is bookkeeping, not a weight: it never travels.
        return self.is_shared(name) and not name.endswith("num_batches_tracked")

    def shared_state_dict(self) -> dict[str, Tensor]:
        """The declared tensors: copies (never views of the live weights), on CPU, in a stable order."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if self._declared(k)}

    def load_shared_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load declared tensors; unexpected, missing or mis-shaped entries raise one error listing them."""
        own = {k: v for k, v in self.state_dict().items() if self._declared(k)}
        problems = [f"unexpected tensor {k!r}" for k in state if k not in own]
        problems += [f"missing tensor {k!r}" for k in own if k not in state]
        problems += [
            f"{k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        if problems:
            raise ValueError(f"cannot load shared state into {type(self).__name__}: " + "; ".join(problems[:20]))
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k].to(device=v.device, dtype=v.dtype))

    def _kept_local(self, name: str) -> bool:
        """Whether non-declared entry ``name`` is site state worth keeping (default: all of them)."""
        return True

    def local_state_dict(self) -> dict[str, Tensor]:
        """The site-private tensors: every non-declared entry the learner keeps, detached, on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                if not self._declared(k) and self._kept_local(k)}

    def load_local_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load a :meth:`local_state_dict`; wrong, missing or mis-shaped entries raise, naming them."""
        own = self.local_state_dict()
        problems = [f"unexpected tensor {k!r}" for k in state if k not in own]
        problems += [f"missing tensor {k!r}" for k in own if k not in state]
        problems += [f"{k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
                     for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if problems:
            raise ValueError(f"cannot load local state into {type(self).__name__}: " + "; ".join(problems[:20]))
        self.load_state_dict(dict(state), strict=False)

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters among the declared tensors (FedProx's proximal term uses these)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and self.is_shared(n)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
