"""Hydra front end: compose ``conf/<name>.yaml`` with command-line overrides into a validated
:class:`~fedecho.config.run.RunConfig`. Hydra stays at the entry points (no output folders, no
working-directory change: the compose API)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fedecho.config.run import RunConfig, from_dict

__all__ = ["SIGNED_RUN_KEYS", "compose_run_config", "conf_dir", "run_config_from_flower"]

#: The run grant and its signature (fedecho.deploy.signing GRANT_KEY / SIGNATURE_KEY): checked by the
#: site, never configuration.
SIGNED_RUN_KEYS = ("fedecho-grant", "fedecho-signature")


def conf_dir() -> Path:
    """The project's ``conf/`` (``$FEDECHO_CONF`` overrides it)."""
    path = Path(os.environ.get("FEDECHO_CONF", Path(__file__).resolve().parents[2] / "conf"))
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(f"FedEcho config folder not found at {path}; set FEDECHO_CONF to the repo's conf/")
    return path


#: Hydra's composed values by (conf folder, its YAML files' names/sizes/mtimes, config name,
#: overrides): a compose costs ~0.1-2 s of CPU, and a simulation composes the same run config for
#: every message each site receives, the coordinator and the experiment runner (several times).
_COMPOSED: dict[tuple, dict] = {}
_COMPOSED_SIZE = 64
_COMPOSED_LOCK = threading.Lock()  # a simulation's ServerApp composes in its own thread


def _conf_state(folder: Path) -> tuple:
    """What a compose reads from ``folder``: every YAML file's name, size and modification time."""
    files = sorted(folder.rglob("*.yaml"))
    return tuple((str(f.relative_to(folder)), s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()])


def compose_run_config(overrides: list[str], config_name: str = "train") -> RunConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and validate it. Composed values are
    remembered per process (keyed by the conf files' sizes and times, so an edited file is read
    again); every call returns a new RunConfig."""
    import copy

    # Dotted keys may name settings the YAML leaves at their dataclass default: add-or-override
    # them (++); the typed schema then rejects unknown names, listing the valid ones.
    overrides = [o if o.startswith(("+", "~")) or "." not in o.split("=", 1)[0] else f"++{o}" for o in overrides]
    folder = conf_dir()
    key = (str(folder), _conf_state(folder), config_name, tuple(overrides))
    with _COMPOSED_LOCK:
        values = _COMPOSED.get(key)
    if values is None:
        values = _compose(folder, config_name, overrides)
        with _COMPOSED_LOCK:
            _COMPOSED[key] = values
            while len(_COMPOSED) > _COMPOSED_SIZE:
                _COMPOSED.pop(next(iter(_COMPOSED)))
    return from_dict(RunConfig, copy.deepcopy(values))


def _compose(folder: Path, config_name: str, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            composed = compose(config_name=config_name, overrides=overrides)
        return OmegaConf.to_container(composed, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"configuration: {err}") from None


def run_config_from_flower(values: dict) -> tuple[RunConfig, bool]:
    """Flower's flat run config -> (RunConfig, resume).

    Keys: ``experiment`` (a config name in ``conf/``, default ``federated``), ``overrides`` (Hydra
    overrides, space separated), ``resume`` (bool), and any dotted key of the schema
    (``"train.lr" = 0.01``), applied after ``overrides``. The run grant and its signature are
    dropped (the site verifies them before it gets here).
    """
    import shlex

    values = {k: v for k, v in values.items() if k not in SIGNED_RUN_KEYS}
    experiment = str(values.pop("experiment", "federated") or "federated")
    overrides = shlex.split(str(values.pop("overrides", "") or ""))
    resume = bool(values.pop("resume", False))
    for key, value in values.items():
        if isinstance(value, str) and value == "":
            continue  # declared in pyproject but not set
        text = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)
        overrides.append(f"{key}={text}")
    return compose_run_config(overrides, config_name=experiment), resume
