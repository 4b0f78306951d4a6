"""The phases of a federated run: pretrain (self-supervised encoder), one adapt phase per task
(frozen encoder, that task's adapter + head only), and a final evaluation per task."""

from __future__ import annotations

from dataclasses import dataclass

from fedecho.config.run import RunConfig
from fedecho.federation.contract import ConfigKey

__all__ = ["Phase", "plan_phases"]


@dataclass(frozen=True)
class Phase:
    name: str
    """Unique name: ``pretrain``, ``adapt:<task>`` or ``evaluate:<task>``."""
    kind: str
    """pretrain | adapt | evaluate"""
    task: str = ""
    rounds: int = 1
    local_epochs: int = 1
    local_steps: int = 0
    lr: float = 1e-3

    def config(self, seed: int, proximal_mu: float = 0.0) -> dict[str, int | float | str]:
        """The instructions every message of this phase carries (see ConfigKey)."""
        return {
            ConfigKey.PHASE: self.kind,
            ConfigKey.PHASE_NAME: self.name,
            ConfigKey.TASK: self.task,
            ConfigKey.NUM_ROUNDS: self.rounds,
            ConfigKey.LOCAL_EPOCHS: self.local_epochs,
            ConfigKey.LOCAL_STEPS: self.local_steps,
            ConfigKey.LR: self.lr,
            ConfigKey.SEED: seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> Phase:
        return cls(
            name=str(config[ConfigKey.PHASE_NAME]), kind=str(config[ConfigKey.PHASE]),
            task=str(config.get(ConfigKey.TASK, "")), rounds=int(config.get(ConfigKey.NUM_ROUNDS, 1)),
            local_epochs=int(config.get(ConfigKey.LOCAL_EPOCHS, 1)),
            local_steps=int(config.get(ConfigKey.LOCAL_STEPS, 0)), lr=float(config.get(ConfigKey.LR, 1e-3)),
        )


def plan_phases(cfg: RunConfig) -> list[Phase]:
    fed = cfg.federation
    phases = []
    if fed.pretrain.rounds > 0:
        phases.append(Phase("pretrain", "pretrain", "", fed.pretrain.rounds, fed.pretrain.local_epochs,
                            fed.pretrain.local_steps, fed.pretrain.lr or cfg.train.lr))
    if fed.adapt.rounds > 0:
        for task in fed.tasks:
            phases.append(Phase(f"adapt:{task}", "adapt", task, fed.adapt.rounds, fed.adapt.local_epochs,
                                fed.adapt.local_steps, fed.adapt.lr or cfg.train.lr))
        phases += [Phase(f"evaluate:{task}", "evaluate", task, 1) for task in fed.tasks]
    if not phases:
        raise ValueError("nothing to run: federation.pretrain.rounds and federation.adapt.rounds are both 0")
    return phases
