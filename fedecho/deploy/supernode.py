"""A site's SuperNode: the ``flower-supernode`` command from the site's bundle (the federation's CA
to check the SuperLink, the site's private key to authenticate) and the node config the ClientApp
reads (``client/app.py``: data-format, data-root, state-dir, site-index, device)."""

from __future__ import annotations

import json
from pathlib import Path

from fedecho.deploy.federation import SiteBundle
from fedecho.deploy.process import executable

__all__ = ["DEFAULT_CLIENTAPPIO_PORT", "node_config", "supernode_command"]

#: Flower's default local port of a SuperNode (its ClientApp API); one per SuperNode on a host.
DEFAULT_CLIENTAPPIO_PORT = 9094


def _toml_string(key: str, value: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"{key} {value!r}: quotes, backslashes and newlines are not allowed in "
                         f"SuperNode settings (Flower's --node-config cannot carry them)")
    return json.dumps(value)


def node_config(bundle: SiteBundle, *, data_root: str | Path, data_format: str, state_dir: str | Path,
                device: str | None = None) -> str:
    """The ``--node-config`` string; paths are made absolute (the ClientApp runs elsewhere)."""
    values = {
        "site": _toml_string("site", bundle.site),
        "site-index": str(int(bundle.site_index)),
        "data-format": _toml_string("data format", data_format),
        "data-root": _toml_string("data path", str(Path(data_root).resolve())),
        "state-dir": _toml_string("state directory", str(Path(state_dir).resolve())),
    }
    if device:
        values["device"] = _toml_string("device", device)
    return " ".join(f"{k}={v}" for k, v in values.items())


def supernode_command(bundle: SiteBundle, *, superlink: str, data_root: str | Path, data_format: str,
                      state_dir: str | Path, port: int = DEFAULT_CLIENTAPPIO_PORT, device: str | None = None,
                      max_retries: int | None = None, max_wait_time: float | None = None) -> list[str]:
    """``flower-supernode`` joining ``superlink`` (HOST:PORT) over TLS as ``bundle``'s site."""
    if ":" not in superlink or not superlink.rsplit(":", 1)[1].isdigit():
        raise ValueError(f"--superlink {superlink!r} must be HOST:PORT (e.g. coordinator.example.org:9093)")
    command = [
        executable("flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(bundle.ca_cert.resolve()),
        "--auth-supernode-private-key", str(bundle.private_key.resolve()),
        "--port", str(port),
        "--node-config", node_config(bundle, data_root=data_root, data_format=data_format,
                                     state_dir=state_dir, device=device),
    ]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    return command
