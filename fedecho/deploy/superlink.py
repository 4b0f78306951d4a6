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

It also narrows Flower's HTTP middleware to the paths each one acts on
(:func:`scope_middleware`): Flower stacks nine ``BaseHTTPMiddleware`` layers on every call,
and seven of them act only on ``/v1/control/`` (account authentication, licence, no-cache
headers), on ``/v1/fleet/`` (SuperNode authentication), or nowhere unless switched on (tracing:
``FLWR_TRACING_ENABLED=1``; the two event logs: ``--enable-event-log``), passing every other
request straight on. Each layer costs every call its own task group and body stream, and a
deployed round makes ~80 Fleet and Runtime calls on the coordinator's CPU. Here a request outside
a layer's paths skips that layer: a Fleet call passes three of Flower's layers (error translation,
protobuf translation, SuperNode authentication) instead of nine, a Runtime call two. The layer
decides on ``request.url.path`` exactly as it does itself, so what it authenticates is unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedecho.deploy.federation import Federation
from fedecho.deploy.process import executable, flower_env

__all__ = ["CONNECTION", "LOG_STREAM_INTERVAL_S", "LOOPBACK", "SCOPED_MIDDLEWARE", "PathScoped", "middleware_scopes",
           "register_sites", "run_superlink", "scope_middleware", "superlink_command", "superlink_env",
           "write_connection"]

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


#: Flower's SuperLink middleware that acts only on some paths, by class name: the path prefixes of
#: the requests it acts on (each passes any other request straight on: see the module doc).
#: ``RuntimeTracingMiddleware`` does something only when ``FLWR_TRACING_ENABLED=1``, and the two
#: event-log layers only with ``--enable-event-log`` (Flower's enterprise plugin): otherwise they
#: pass every request on, and run on none (:func:`middleware_scopes`).
SCOPED_MIDDLEWARE: dict[str, tuple[str, ...]] = {
    "ControlSensitiveResponseMiddleware": ("/v1/control/",),
    "ControlAuthenticationMiddleware": ("/v1/control/",),
    "ControlLicenseMiddleware": ("/v1/control/",),
    "ControlEventLogMiddleware": ("/v1/control/",),
    "NodeAuthMiddleware": ("/v1/fleet/",),
    "FleetEventLogMiddleware": ("/v1/fleet/",),
    "RuntimeTracingMiddleware": (),
}


#: The layers that write Flower's event log: they act only where ``--enable-event-log`` is given.
_EVENT_LOG = ("ControlEventLogMiddleware", "FleetEventLogMiddleware")


def middleware_scopes(environ: dict[str, str] | None = None,
                      flower_args: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """:data:`SCOPED_MIDDLEWARE` for a SuperLink with environment ``environ`` (default: this
    process's) and ``flower-superlink`` arguments ``flower_args``: with tracing on, the tracing
    layer acts on every path and is left whole; without ``--enable-event-log`` the event-log
    layers (which then pass every request on) run on no path."""
    environ = os.environ if environ is None else environ
    scopes = dict(SCOPED_MIDDLEWARE)
    if environ.get("FLWR_TRACING_ENABLED") == "1":
        del scopes["RuntimeTracingMiddleware"]
    if "--enable-event-log" not in (flower_args or []):
        scopes.update({name: () for name in _EVENT_LOG})
    return scopes


class PathScoped:
    """An ASGI middleware that runs ``middleware_cls`` (built around the same inner app) for HTTP
    requests whose ``request.url.path`` starts with one of ``prefixes`` and passes every other
    request straight to the inner app. Non-HTTP scopes (lifespan) go through the wrapped one."""

    def __init__(self, app: Any, *, middleware_cls: Any, prefixes: tuple[str, ...], args: tuple = (),
                 kwargs: dict | None = None) -> None:
        from starlette.datastructures import URL

        self.app = app
        self.middleware = middleware_cls(app, *args, **(kwargs or {}))
        self.prefixes = prefixes
        self._url = URL  # imported once, not per request

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        URL = self._url  # noqa: N806 - starlette's class

        if scope["type"] == "http" and not URL(scope=scope).path.startswith(self.prefixes):
            await self.app(scope, receive, send)
        else:
            await self.middleware(scope, receive, send)


def scope_middleware(middleware: list, scopes: dict[str, tuple[str, ...]] | None = None) -> list:
    """Flower's SuperLink middleware list with each layer named in ``scopes`` (default
    :func:`middleware_scopes`) wrapped in :class:`PathScoped`; the others, and the order, as they
    are."""
    from starlette.middleware import Middleware

    scopes = middleware_scopes() if scopes is None else scopes
    out = []
    for entry in middleware:
        cls, args, kwargs = entry
        name = getattr(cls, "__name__", "")
        if name in scopes:
            out.append(Middleware(PathScoped, middleware_cls=cls, prefixes=scopes[name], args=tuple(args),
                                  kwargs=dict(kwargs)))
        else:
            out.append(entry)
    return out


def _narrow_middleware(flower_args: list[str]) -> None:
    """Make Flower's SuperLink app (started with ``flower_args``) build its middleware through
    :func:`scope_middleware` (see the module doc); a Flower without the hook runs unchanged, with
    a line saying so."""
    from flwr.superlink import main as superlink_main

    flower_middleware = getattr(superlink_main, "_get_middleware", None)
    if not callable(flower_middleware):
        print("fedecho: this flwr's SuperLink has no _get_middleware; its middleware runs on every path",
              file=sys.stderr, flush=True)
        return
    scopes = middleware_scopes(flower_args=flower_args)
    superlink_main._get_middleware = lambda: scope_middleware(flower_middleware(), scopes)


def run_superlink(log_stream_interval: float, flower_args: list[str], *, narrow_middleware: bool = True) -> None:
    """Flower's ``flower-superlink`` with its log stream's wait set to ``log_stream_interval`` seconds
    and (``narrow_middleware``) its middleware narrowed to the paths each layer acts on (see the
    module doc); a Flower without either hook runs without that change, with a line saying so."""
    from flwr.superlink.cli import flower_superlink
    from flwr.superlink.servicer.control import control_handlers

    if isinstance(getattr(control_handlers, "LOG_STREAM_INTERVAL", None), (int, float)):
        control_handlers.LOG_STREAM_INTERVAL = log_stream_interval
    else:
        print("fedecho: this flwr's SuperLink has no LOG_STREAM_INTERVAL; its log stream keeps Flower's own wait",
              file=sys.stderr, flush=True)
    if narrow_middleware:
        _narrow_middleware(flower_args)
    sys.argv = ["flower-superlink", *flower_args]
    sys.exit(flower_superlink())


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedecho.deploy.superlink",
                                     description="flower-superlink with a slower log stream (see fedecho.deploy.superlink)")
    parser.add_argument("--log-stream-interval", type=float, default=LOG_STREAM_INTERVAL_S,
                        help="seconds between two looks at a streamed run's log")
    parser.add_argument("--flower-middleware", action="store_true",
                        help="run Flower's middleware on every path, as flower-superlink does (for comparison: "
                             "fedecho bench superlink-call)")
    parser.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-superlink's arguments")
    args = parser.parse_args(argv)
    if not 0 < args.log_stream_interval <= 30:
        parser.error(f"--log-stream-interval {args.log_stream_interval}: give seconds in (0, 30]")
    run_superlink(args.log_stream_interval, args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args,
                  narrow_middleware=not args.flower_middleware)


if __name__ == "__main__":
    main()
