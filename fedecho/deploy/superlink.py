"""The coordinator's SuperLink: its command line (TLS, SuperNode authentication, persistent state,
no run-time dependency installation, bound to 127.0.0.1 only: the public port is the gateway's,
see fedecho.deploy.gateway), the Flower CLI connection to it (loopback), and registering the
sites' public keys (``flwr supernode register`` over the loopback Control API).

The SuperLink runs as ``python -m fedecho.deploy.superlink --log-stream-interval S -- <flower-superlink
arguments>``: Flower's own ``flower-superlink`` main, with one wait lengthened. ``fedecho-server run``
follows its run with ``flwr run --stream``, for which Flower's SuperLink reads the run's log and
status from its database every 0.5 s for the whole run; on the coordinator's CPU that cost as much
as a site's training in a small deployed round (``fedecho bench deploy-round``). Here it looks every
``S`` seconds (default :data:`LOG_STREAM_INTERVAL_S`): the coordinator's log reaches the terminal up
to ``S`` s later and ``fedecho-server run`` returns up to ``S`` s after the run ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedecho.deploy.federation import Federation
from fedecho.deploy.process import executable, flower_env

__all__ = ["CONNECTION", "LOG_STREAM_INTERVAL_S", "LOOPBACK", "register_sites", "run_superlink", "superlink_command",
           "superlink_env", "write_connection"]

#: The name of the SuperLink connection in ``<federation>/flwr_home/config.toml``.
CONNECTION = "fedecho"
#: The SuperLink's only address: its Control and Runtime APIs are never reachable from the network.
LOOPBACK = "127.0.0.1"
#: Environment switches that would start Flower's legacy gRPC Control / Fleet servers on other ports.
_LEGACY_GRPC = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
#: Seconds between two looks of the SuperLink at a streamed run's log and status (Flower's own: 0.5).
LOG_STREAM_INTERVAL_S = 2.0


def superlink_command(federation: Federation, *, port: int, log_file: str | Path | None = None) -> list[str]:
    """``flower-superlink`` for ``federation`` on ``127.0.0.1:port``: HTTPS with the federation's
    certificate, only registered SuperNodes admitted, state kept in ``state/superlink.db`` across
    restarts, and no ``uv sync`` of app dependencies (the coordinator is offline; it could replace
    torch)."""
    tls = federation.tls
    missing = [str(p) for p in (tls.ca_cert, tls.cert, tls.key) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"SuperLink TLS files missing: {', '.join(missing)}; run `fedecho-server init`")
    federation.database.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "fedecho.deploy.superlink", "--log-stream-interval", str(LOG_STREAM_INTERVAL_S), "--",
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--ssl-certfile", str(tls.cert),
        "--ssl-keyfile", str(tls.key),
        "--enable-supernode-auth",
        "--database", str(federation.database),
        "--disable-runtime-dependency-installation",
        "--host", LOOPBACK,
        "--port", str(port),
    ]
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    return command


def superlink_env(federation: Federation, *, bells: str | Path | None = None) -> dict[str, str]:
    """The SuperLink's environment: :func:`flower_env` without the legacy gRPC server switches;
    with ``bells``, the folder of the coordinator bells for the ServerApps it starts (which
    inherit it: :data:`fedecho.deploy.grid.BELLS_ENV`)."""
    from fedecho.deploy.grid import BELLS_ENV

    env = flower_env(federation.flwr_home)
    for name in _LEGACY_GRPC:
        env.pop(name, None)
    env.pop(BELLS_ENV, None)
    if bells is not None:
        env[BELLS_ENV] = str(Path(bells).resolve())
    return env


def write_connection(federation: Federation, address: str, name: str = CONNECTION) -> Path:
    """Point the Flower CLI (``FLWR_HOME=<federation>/flwr_home``) at the SuperLink: its address
    and the CA that signed its certificate. Returns the config file."""
    ca = federation.tls.ca_cert.resolve()
    text = (f"[superlink]\ndefault = {json.dumps(name)}\n\n[superlink.{name}]\n"
            f"address = {json.dumps(address)}\nroot-certificates = {json.dumps(str(ca))}\n")
    path = federation.flwr_home / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def register_sites(federation: Federation, sites: list[str] | None = None, name: str = CONNECTION,
                   timeout: float = 60.0) -> dict[str, str]:
    """Register the public keys of ``sites`` (default: all) with the running SuperLink over its
    loopback Control API (idempotent: a key the SuperLink already knows is fine). Returns
    ``{site: "registered" | "already registered"}``."""
    status: dict[str, str] = {}
    env = flower_env(federation.flwr_home)
    for site in federation.sites if sites is None else sites:
        key = federation.public_key(site)
        if not key.is_file():
            raise FileNotFoundError(f"public key of site {site} not found at {key}")
        result = subprocess.run([executable("flwr"), "supernode", "register", str(key), name, "--format", "json"],
                                env=env, capture_output=True, text=True, timeout=timeout, check=False)
        try:
            reply = json.loads(result.stdout[result.stdout.find("{"):])
        except ValueError:
            reply = {"success": False, "error-message": (result.stdout + result.stderr).strip()}
        if reply.get("success"):
            status[site] = "registered"
        elif "already in use" in str(reply.get("error-message", "")):
            status[site] = "already registered"
        else:
            raise RuntimeError(f"registering site {site} ({key}) failed: {reply.get('error-message')}")
    return status


def run_superlink(log_stream_interval: float, flower_args: list[str]) -> None:
    """Flower's ``flower-superlink`` with its log stream's wait set to ``log_stream_interval`` seconds
    (see the module doc); a Flower without that wait runs unchanged, with a line saying so."""
    from flwr.superlink.cli import flower_superlink
    from flwr.superlink.servicer.control import control_handlers

    if isinstance(getattr(control_handlers, "LOG_STREAM_INTERVAL", None), (int, float)):
        control_handlers.LOG_STREAM_INTERVAL = log_stream_interval
    else:
        print("fedecho: this flwr's SuperLink has no LOG_STREAM_INTERVAL; its log stream keeps Flower's own wait",
              file=sys.stderr, flush=True)
    sys.argv = ["flower-superlink", *flower_args]
    sys.exit(flower_superlink())


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedecho.deploy.superlink",
                                     description="flower-superlink with a slower log stream (see fedecho.deploy.superlink)")
    parser.add_argument("--log-stream-interval", type=float, default=LOG_STREAM_INTERVAL_S,
                        help="seconds between two looks at a streamed run's log")
    parser.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-superlink's arguments")
    args = parser.parse_args(argv)
    if not 0 < args.log_stream_interval <= 30:
        parser.error(f"--log-stream-interval {args.log_stream_interval}: give seconds in (0, 30]")
    run_superlink(args.log_stream_interval, args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args)


if __name__ == "__main__":
    main()
