"""The coordinator's public port: a TLS gateway that serves the Fleet API and nothing else.

Flower 1.41's SuperLink serves its Fleet API (SuperNodes), its Control API (start / stop / list
runs, register nodes) and its Runtime API (ServerApp, SuperExec) as one FastAPI app on one HTTP
port, and the Control API has no account authentication outside Flower's enterprise plugin.
Anyone holding the federation's CA certificate could therefore submit a run or register a node.

FedEcho binds the SuperLink to 127.0.0.1 (its own TLS, an internal port) and puts this gateway on
the public port. The gateway terminates TLS with the SuperLink's certificate, forwards the Fleet
calls a registered SuperNode makes (``POST /v1/fleet/<call>``, the paths of Flower's
``FleetHttpClient``) and ``/health``, and answers everything else with HTTP 403 and Flower's error
JSON (code ``FORBIDDEN_ACTION``), writing one line per refusal to its log. Node self-registration
through the Fleet API (``register-node``, ``unregister-node``) is refused too: sites are
registered by the coordinator (``fedecho-server add-site`` / ``start``) over the loopback Control
API. SuperNode authentication (signed headers) passes through untouched and is checked by the
SuperLink itself.

The gateway is a Starlette app under uvicorn (both come with Flower) that forwards with an
``httpx`` client over a kept-alive TLS connection; ``python -m fedecho.deploy.gateway`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import ssl
import sys
from pathlib import Path

__all__ = ["FLEET_PATHS", "REFUSAL_CODE", "build_app", "gateway_command", "is_allowed", "main"]

#: The Fleet calls a SuperNode with an authentication key makes (flwr/supernode/fleet_http_client.py).
FLEET_PATHS = frozenset(f"/v1/fleet/{call}" for call in (
    "activate-node", "deactivate-node", "send-node-heartbeat", "pull-messages", "push-messages",
    "get-run", "get-fab", "push-object", "pull-object", "confirm-message-received"))
HEALTH_PATH = "/health"
#: Flower's ApiErrorCode.FORBIDDEN_ACTION: the Flower CLI prints ``detail`` for it.
REFUSAL_CODE = 10
REFUSAL = ("refused by the FedEcho gateway: this port serves only the Fleet API of registered "
           "SuperNodes; runs are started and nodes registered by the coordinator on its own machine")
#: Headers that belong to one hop (RFC 9110 §7.6.1) or that httpx / Starlette set themselves.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                  "upgrade", "host", "content-length"})


def is_allowed(method: str, path: str) -> bool:
    """Whether the gateway forwards ``method path`` (exact paths only: no prefixes, no ``..``)."""
    if path == HEALTH_PATH:
        return method in ("GET", "HEAD")
    return method == "POST" and path in FLEET_PATHS


def _refusal_logger(log_file: Path | None) -> logging.Logger:
    logger = logging.getLogger("fedecho.gateway")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if log_file is not None and not logger.handlers:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def build_app(upstream: str, ca_cert: str | Path, log_file: str | Path | None = None):
    """The gateway as an ASGI app forwarding allowed calls to ``https://<upstream>`` (HOST:PORT),
    checking the upstream's certificate against ``ca_cert``."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    logger = _refusal_logger(Path(log_file) if log_file is not None else None)
    verify = ssl.create_default_context(cafile=str(ca_cert))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=verify, timeout=120.0, limits=limits)

    async def forward(request: Request) -> Response:
        path, method = request.url.path, request.method
        if not is_allowed(method, path):
            peer = request.client.host if request.client else "?"
            logger.info(json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "peer": peer,
                                    "method": method, "path": path[:200], "decision": "refused"}))
            return JSONResponse({"code": REFUSAL_CODE, "detail": REFUSAL}, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        body = await request.body()
        try:
            reply = await client.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return JSONResponse({"detail": f"SuperLink unreachable behind the gateway ({type(exc).__name__})"},
                                status_code=502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP and k.lower() != "content-encoding"}
        return Response(content=reply.content, status_code=reply.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [Route("/{path:path}", forward, methods=methods)]
    return Starlette(routes=routes, lifespan=lifespan)


def gateway_command(*, listen_host: str, listen_port: int, upstream: str, cert: Path, key: Path, ca_cert: Path,
                    log_file: Path) -> list[str]:
    """The command line that runs the gateway in its own process (this Python)."""
    return [sys.executable, "-m", "fedecho.deploy.gateway", "--host", listen_host, "--port", str(listen_port),
            "--upstream", upstream, "--certfile", str(cert), "--keyfile", str(key), "--ca-certfile", str(ca_cert),
            "--log-file", str(log_file)]


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m fedecho.deploy.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--ca-certfile", required=True)
    parser.add_argument("--log-file", default=None, help="one JSON line per refused call")
    args = parser.parse_args(argv)
    for flag in ("certfile", "keyfile", "ca_certfile"):
        if not Path(getattr(args, flag)).is_file():
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: file not found")
    app = build_app(args.upstream, args.ca_certfile, args.log_file)
    print(f"FedEcho gateway on {args.host}:{args.port} -> SuperLink {args.upstream} (Fleet API only)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile,
                log_level="warning", access_log=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
