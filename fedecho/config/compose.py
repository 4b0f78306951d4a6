"""Hydra front end: compose ``conf/<name>.yaml`` with command-line overrides into a validated
:class:`~fedecho.config.run.RunConfig`. Hydra stays at the entry points (no output folders, no
working-directory change: the compose API)."""

from __future__ import annotations

import os
from pathlib import Path

from fedecho.config.run import RunConfig, from_dict

__all__ = ["compose_run_config", "conf_dir"]


def conf_dir() -> Path:
    """The project's ``conf/`` (``$FEDECHO_CONF`` overrides it)."""
    path = Path(os.environ.get("FEDECHO_CONF", Path(__file__).resolve().parents[2] / "conf"))
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(f"FedEcho config folder not found at {path}; set FEDECHO_CONF to the repo's conf/")
    return path


def compose_run_config(overrides: list[str], config_name: str = "train") -> RunConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            composed = compose(config_name=config_name, overrides=list(overrides))
        values = OmegaConf.to_container(composed, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"configuration: {err}") from None
    return from_dict(RunConfig, values)
